-- 0005: the runs view shows the hand-over chain.
--
-- A scheduled drain that takes over from a running one records the run it took over from
-- (`took_over_from` in its summary); the run before it stopped with `handed_over`. The same
-- function and view as 0003, with that column last.

DROP VIEW refresh_runs;
DROP FUNCTION refresh_runs_between(timestamptz, timestamptz);

CREATE FUNCTION refresh_runs_between(since timestamptz, until timestamptz)
RETURNS TABLE (run_id uuid, started_at timestamptz, finished_at timestamptz,
               stopped text, cause text, attempted bigint, fetched bigint, failed bigint,
               skipped_deadline bigint, deferred bigint, ledger_rows bigint,
               first_row_at timestamptz, last_row_at timestamptz, api_requests integer,
               took_over_from uuid)
LANGUAGE sql STABLE AS $$
    WITH runs AS (
        SELECT m.run_id FROM refresh_ledger_minutes m
        -- A counter covers one minute: the first condition finds it, the others are exact.
        WHERE m.minute > since - interval '1 minute' AND m.minute < until
          AND m.last_at >= since AND m.first_at < until
        UNION
        SELECT s.run_id FROM refresh_run_summaries s
        WHERE s.finished_at >= since AND s.started_at < until
    ), counts AS (
        SELECT m.run_id,
               sum(m.rows) FILTER (WHERE m.outcome = 'attempted')        AS attempted,
               sum(m.rows) FILTER (WHERE m.outcome = 'fetched')          AS fetched,
               sum(m.rows) FILTER (WHERE m.outcome = 'failed')           AS failed,
               sum(m.rows) FILTER (WHERE m.outcome = 'skipped-deadline') AS skipped_deadline,
               sum(m.rows) FILTER (WHERE m.outcome = 'deferred')         AS deferred,
               sum(m.rows)                                                AS ledger_rows,
               min(m.first_at)                                            AS first_row_at,
               max(m.last_at)                                             AS last_row_at
        FROM refresh_ledger_minutes m
        WHERE m.run_id IN (SELECT r.run_id FROM runs r)
        GROUP BY m.run_id
    )
    SELECT r.run_id,
           least(s.started_at, c.first_row_at),
           s.finished_at,
           s.stopped,
           s.cause,
           coalesce(c.attempted, 0)::bigint,
           coalesce(c.fetched, 0)::bigint,
           coalesce(c.failed, 0)::bigint,
           coalesce(c.skipped_deadline, 0)::bigint,
           coalesce(c.deferred, 0)::bigint,
           coalesce(c.ledger_rows, 0)::bigint,
           c.first_row_at,
           c.last_row_at,
           (s.summary ->> 'api_requests')::integer,
           (s.summary ->> 'took_over_from')::uuid
    FROM runs r
    LEFT JOIN counts c ON c.run_id = r.run_id
    LEFT JOIN refresh_run_summaries s ON s.run_id = r.run_id
$$;

-- One row per run: start, end, counts per outcome, why it stopped (NULL: no summary, the
-- run died or is running). Filter big ledgers through refresh_runs_between() instead.
CREATE VIEW refresh_runs AS
SELECT * FROM refresh_runs_between('-infinity', 'infinity');
