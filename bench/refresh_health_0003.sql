-- refresh_health as migration 0003 defined it (the view before 0008), for bench/ledger_bench.py's
-- side-by-side comparison. Not applied anywhere.
WITH recent AS (
    SELECT m.outcome, m.rows
    FROM refresh_ledger_minutes m
    WHERE m.minute >= date_bin('1 minute', now() - interval '1 hour',
                               timestamptz '2000-01-01 00:00:00+00') + interval '1 minute'
    UNION ALL
    SELECT l.outcome, 1
    FROM refresh_ledger l
    WHERE l.occurred_at > now() - interval '1 hour'
      AND l.occurred_at < date_bin('1 minute', now() - interval '1 hour',
                                   timestamptz '2000-01-01 00:00:00+00') + interval '1 minute'
), counts AS (
    SELECT coalesce(sum(rows) FILTER (WHERE outcome = 'attempted'), 0)::bigint        AS attempted,
           coalesce(sum(rows) FILTER (WHERE outcome = 'fetched'), 0)::bigint          AS fetched,
           coalesce(sum(rows) FILTER (WHERE outcome = 'failed'), 0)::bigint           AS failed,
           coalesce(sum(rows) FILTER (WHERE outcome = 'skipped-deadline'), 0)::bigint AS skipped_deadline,
           coalesce(sum(rows) FILTER (WHERE outcome = 'deferred'), 0)::bigint         AS deferred
    FROM recent
), latency AS (
    SELECT percentile_disc(0.95) WITHIN GROUP (ORDER BY f.latency_ms) AS p95_latency_ms
    FROM (
        SELECT l.latency_ms
        FROM refresh_ledger l
        WHERE l.outcome = 'fetched' AND l.occurred_at > now() - interval '1 hour'
        ORDER BY l.occurred_at DESC
        LIMIT 2000
    ) f
), last_run AS (
    SELECT run_id, finished_at, stopped, cause
    FROM refresh_run_summaries
    ORDER BY finished_at DESC
    LIMIT 1
)
SELECT 3600                                                   AS window_seconds,
       c.attempted, c.fetched, c.failed, c.skipped_deadline, c.deferred,
       round(c.failed::numeric / nullif(c.fetched + c.failed, 0), 4) AS failure_rate,
       p.p95_latency_ms,
       (SELECT max(occurred_at) FROM refresh_ledger WHERE outcome = 'fetched') AS last_fetched_at,
       (SELECT count(*) FROM refresh_orphaned_attempts_between(now() - interval '1 hour', 'infinity'))
                                                              AS orphaned_attempts,
       r.run_id      AS last_run_id,
       r.finished_at AS last_run_finished_at,
       r.stopped     AS last_run_stopped,
       r.cause       AS last_run_cause
FROM counts c
CROSS JOIN latency p
LEFT JOIN last_run r ON true;
