-- Every write appends to batch_total_changes and the upkeep empties it every
-- second (V9), so after each fold its pages all lie empty, and the VACUUM
-- that follows tried to give them back to the file system. That takes an
-- ACCESS EXCLUSIVE lock, which writers hold off while they keep appending:
-- the VACUUM waited up to its own 5 s limit, past the upkeep's timeout, and
-- was cancelled ("folding the daily totals failed", 3 times in 40 s under
-- 32 writers, bench/run.sh). Kept, the pages are reused by the next writes.
ALTER TABLE batch_total_changes SET (vacuum_truncate = false);
