-- Two more delivery statuses: `held` (the spend guard keeps a delivery back
-- until its budget allows it or ops release it) and `canceled` (taken back by
-- its caller before any provider had it). Widening a CHECK constraint is the
-- case SQLite documents for editing the stored schema text in place: no
-- table rebuild, views and foreign keys untouched.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
   SET sql = replace(sql, '''failed'', ''expired'')', '''failed'', ''expired'', ''held'', ''canceled'')')
 WHERE type = 'table' AND name = 'deliveries';
PRAGMA writable_schema = RESET;
