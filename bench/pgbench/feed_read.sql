-- The change feed's read (src/store/changes.rs, READ_LOG) every 50 ms, as
-- one replica's feed does while anyone watches it. Run with -M simple and
-- -D since=<a snapshot>: each read passes on its snapshot to the next.
SELECT now.snapshot::text AS since, count(log.xid) AS read
FROM (SELECT pg_current_snapshot() AS snapshot) now
LEFT JOIN LATERAL (
    SELECT xid, position, notice FROM batch_change_log
    WHERE xid >= pg_snapshot_xmax(':since'::pg_snapshot)
    UNION ALL
    SELECT logged.xid, logged.position, logged.notice
    FROM pg_snapshot_xip(':since'::pg_snapshot) AS running (xid)
    JOIN batch_change_log logged ON logged.xid = running.xid
) log ON true
GROUP BY now.snapshot
\gset
\sleep 50 ms
