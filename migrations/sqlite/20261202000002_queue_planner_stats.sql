-- Planner statistics for apalis's `Jobs` table, so that its statements find
-- jobs by id instead of reading every pending one.
--
-- With no statistics SQLite guesses that any `status = ?` or `lock_by = ?`
-- matches a handful of rows. apalis-sqlite's lock statement (`id IN (…) AND
-- (status = 'Queued' OR status = 'Pending' OR …)`) then walks the status
-- index through every pending job, and its ack (`Jobs.id = j.task_id AND
-- lock_by = ?`) walks every job the worker has locked, finished ones too,
-- reading the whole batch's JSON for each: milliseconds to tens of
-- milliseconds a batch behind a 50k backlog, holding the write lock that
-- OTPs wait for. These figures describe a busy queue (modelled on what
-- `ANALYZE` measured on one holding a 50k backlog): status, job type and
-- worker are poor filters, the id a perfect one. They are written, not
-- measured (SQLite's documented way to steer its planner), so the plans do not
-- depend on when `ANALYZE` last ran; running `ANALYZE` replaces them with
-- measured ones, which lead to the same plans while the queue is large.
ANALYZE sqlite_schema; -- creates sqlite_stat1 if it is missing
DELETE FROM sqlite_stat1 WHERE tbl = 'Jobs';
INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES
    ('Jobs', 'sqlite_autoindex_Jobs_1', '100000 1'),
    ('Jobs', 'idx_jobs_status_run_at', '100000 25000 100'),
    ('Jobs', 'idx_jobs_job_type_status_run_at', '100000 50000 20000 100'),
    ('Jobs', 'LIdx', '100000 20000'),
    ('Jobs', 'idx_jobs_pending', '50000 25000 25000 100 1'),
    ('Jobs', 'idx_jobs_failed', '1000 500 500 10 1'),
    ('Jobs', 'idx_jobs_claimable', '50000 25000 25000'),
    ('Jobs', 'idx_jobs_completed_done_at', '5000 2000 100 10'),
    ('Jobs', 'idx_jobs_running', '100 10'),
    ('Jobs', 'idx_jobs_idempotency_key', '100000 50000 50000');
-- Load them here; every other connection loads them when it next finds the
-- schema changed.
ANALYZE sqlite_schema;
