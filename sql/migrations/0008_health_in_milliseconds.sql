-- 0008: refresh_health in a few milliseconds on a ledger of tens of millions of rows.
--
-- 0003's view read the per-minute roll-up, but still named the partitioned ledger four times
-- (the partial first minute, the p95 latency, the last fetch, the orphaned attempts) with
-- bounds taken from now(). now() is not a constant, so the planner could prune no partition:
-- it planned every reference over every partition, 3-4 ms of a 10-11 ms query with 8 daily
-- partitions and the default, and more with each day retention keeps.
--
-- Now the view reads a PL/pgSQL function that computes the bounds first and passes them to
-- its queries as parameters. The planner prunes with the values (custom plans), so each
-- query is planned over the one or two partitions the hour lies in, and a session that asks
-- again reuses the plans PL/pgSQL keeps. The last fetch comes from the roll-up (exact: the
-- trigger keeps it in step with the ledger). The orphaned attempts are looked for only when
-- the roll-up shows a run with old attempts and no summary, and are counted up to
-- `orphans_counted` (100): a crash storm that leaves thousands costs what 100 cost, and more
-- than none already degrades health. refresh_orphaned_attempts lists every one of them.
--
-- Same columns, same types, same values as before (the counts stay exact: whole minutes from
-- the roll-up, the partial first minute from the ledger), except `orphaned_attempts`, which
-- stops at 100.

-- The newest minute with a row of an outcome (the last fetch), without a scan of the roll-up.
CREATE INDEX refresh_ledger_minutes_outcome ON refresh_ledger_minutes (outcome, minute);

CREATE FUNCTION refresh_health_stats(orphans_counted integer DEFAULT 100)
RETURNS TABLE (window_seconds integer, attempted bigint, fetched bigint, failed bigint,
               skipped_deadline bigint, deferred bigint, failure_rate numeric,
               p95_latency_ms integer, last_fetched_at timestamptz, orphaned_attempts bigint,
               last_run_id uuid, last_run_finished_at timestamptz, last_run_stopped text,
               last_run_cause text)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    since constant timestamptz := now() - interval '1 hour';
    -- The first whole minute of the hour: counted from the roll-up from there on.
    whole constant timestamptz := date_bin('1 minute', now() - interval '1 hour',
                                           timestamptz '2000-01-01 00:00:00+00') + interval '1 minute';
    grace constant interval := interval '10 minutes';
    last_minute timestamptz;
BEGIN
    window_seconds := 3600;
    SELECT coalesce(sum(r.rows) FILTER (WHERE r.outcome = 'attempted'), 0)::bigint,
           coalesce(sum(r.rows) FILTER (WHERE r.outcome = 'fetched'), 0)::bigint,
           coalesce(sum(r.rows) FILTER (WHERE r.outcome = 'failed'), 0)::bigint,
           coalesce(sum(r.rows) FILTER (WHERE r.outcome = 'skipped-deadline'), 0)::bigint,
           coalesce(sum(r.rows) FILTER (WHERE r.outcome = 'deferred'), 0)::bigint
    INTO attempted, fetched, failed, skipped_deadline, deferred
    FROM (
        SELECT m.outcome, m.rows FROM refresh_ledger_minutes m WHERE m.minute >= whole
        UNION ALL
        SELECT l.outcome, 1 FROM refresh_ledger l WHERE l.occurred_at > since AND l.occurred_at < whole
    ) r;
    failure_rate := round(failed::numeric / nullif(fetched + failed, 0), 4);

    -- Over the newest 2,000 fetches of the hour, as before.
    SELECT percentile_disc(0.95) WITHIN GROUP (ORDER BY f.latency_ms)
    INTO p95_latency_ms
    FROM (
        SELECT l.latency_ms
        FROM refresh_ledger l
        WHERE l.outcome = 'fetched' AND l.occurred_at > since
        ORDER BY l.occurred_at DESC
        LIMIT 2000
    ) f;

    SELECT max(m.minute) INTO last_minute FROM refresh_ledger_minutes m WHERE m.outcome = 'fetched';
    SELECT max(m.last_at) INTO last_fetched_at
    FROM refresh_ledger_minutes m
    WHERE m.outcome = 'fetched' AND m.minute = last_minute;

    -- refresh_orphaned_attempts_between's own first test: a run without a summary that made
    -- attempts in the hour before the grace period. Usually there is none.
    IF EXISTS (
        SELECT 1 FROM refresh_ledger_minutes a
        WHERE a.outcome = 'attempted'
          AND a.minute > since - interval '1 minute'
          AND a.last_at >= since AND a.first_at < now() - grace
          AND NOT EXISTS (SELECT 1 FROM refresh_run_summaries s WHERE s.run_id = a.run_id)
    ) THEN
        SELECT count(*) INTO orphaned_attempts
        FROM (
            SELECT 1 FROM refresh_orphaned_attempts_between(since, 'infinity', grace)
            LIMIT orphans_counted
        ) o;
    ELSE
        orphaned_attempts := 0;
    END IF;

    SELECT s.run_id, s.finished_at, s.stopped, s.cause
    INTO last_run_id, last_run_finished_at, last_run_stopped, last_run_cause
    FROM refresh_run_summaries s
    ORDER BY s.finished_at DESC
    LIMIT 1;
    RETURN NEXT;
END
$$;

COMMENT ON FUNCTION refresh_health_stats(integer) IS
    'The one row of refresh_health: ledger stats over the last hour and the last run. '
    'orphaned_attempts counts up to orphans_counted.';

DROP VIEW refresh_health;
CREATE VIEW refresh_health AS
SELECT * FROM refresh_health_stats();
