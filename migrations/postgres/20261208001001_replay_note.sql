-- What ops should know about how a replay was made: set when it was sent
-- past the suppression list (`--ignore-suppression`), naming who asked, the
-- suppression's reason and since when. Other deliveries have none.
ALTER TABLE deliveries ADD COLUMN replay_note TEXT;
