-- 0003: per-minute counts beside the ledger, the runs view, and a refresh_health that stays
-- fast on a ledger of tens of millions of rows.
--
-- At 30 requests/s the last hour alone holds ~200,000 ledger rows: counting them on every
-- GET /health costs ~50 ms. A statement trigger keeps `refresh_ledger_minutes` (rows per
-- minute, run and outcome) in step with the ledger, in the same transaction as the rows it
-- counts, so it can never disagree with them. It is derived data: the ledger stays the
-- record, and retention trims the counts of dropped partitions with them.

-- No ledger row may slip in between the backfill and the trigger.
LOCK TABLE refresh_ledger IN SHARE MODE;

-- Every query on this database is short, and JIT compilation is not: on a 10-million-row
-- ledger Postgres judged the audit queries costly enough to compile, which took 100-500 ms
-- of a 50-100 ms query. Off for new sessions of this database when we own it; otherwise a
-- notice, and `python -m ledger` still turns it off for its own session.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET jit = off', current_database());
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'not allowed to ALTER DATABASE %: set jit = off for it by hand', current_database();
END
$$;

CREATE TABLE refresh_ledger_minutes (
    minute    timestamptz NOT NULL,  -- the UTC minute the rows occurred in
    run_id    uuid        NOT NULL,
    outcome   text        NOT NULL,
    rows      bigint      NOT NULL,
    first_at  timestamptz NOT NULL,  -- the earliest and latest occurred_at counted here
    last_at   timestamptz NOT NULL,
    PRIMARY KEY (minute, run_id, outcome)
);
CREATE INDEX refresh_ledger_minutes_run ON refresh_ledger_minutes (run_id);
COMMENT ON TABLE refresh_ledger_minutes IS
    'Ledger rows per minute, run and outcome, kept by a trigger on refresh_ledger. Derived: '
    'the ledger is the record.';

-- One statement per ledger INSERT (the writer sends one per batch), whatever its size.
-- Sorted so that two writers touching the same counters take their locks in one order.
CREATE FUNCTION refresh_ledger_count_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO refresh_ledger_minutes AS m (minute, run_id, outcome, rows, first_at, last_at)
    SELECT date_bin('1 minute', occurred_at, timestamptz '2000-01-01 00:00:00+00'),
           run_id, outcome, count(*), min(occurred_at), max(occurred_at)
    FROM new_rows
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (minute, run_id, outcome) DO UPDATE
        SET rows = m.rows + EXCLUDED.rows,
            first_at = least(m.first_at, EXCLUDED.first_at),
            last_at = greatest(m.last_at, EXCLUDED.last_at);
    RETURN NULL;
END
$$;

INSERT INTO refresh_ledger_minutes (minute, run_id, outcome, rows, first_at, last_at)
SELECT date_bin('1 minute', occurred_at, timestamptz '2000-01-01 00:00:00+00'),
       run_id, outcome, count(*), min(occurred_at), max(occurred_at)
FROM refresh_ledger
GROUP BY 1, 2, 3;

-- On the parent, so it sees rows routed to every partition (INSERT and COPY alike).
CREATE TRIGGER refresh_ledger_count
    AFTER INSERT ON refresh_ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION refresh_ledger_count_rows();

-- Retention now trims the counts of what it dropped: every counter whose rows all lie
-- before the oldest ledger row that can remain.
CREATE OR REPLACE FUNCTION refresh_ledger_drop_partitions_older_than(days integer)
RETURNS TABLE (partition text, range_start timestamptz, range_end timestamptz,
               is_default boolean, estimated_rows bigint)
LANGUAGE plpgsql SET lock_timeout = '5s' AS $$
DECLARE
    expired record;
    dropped boolean := false;
    kept_from timestamptz;
BEGIN
    FOR expired IN SELECT * FROM refresh_ledger_expired_partitions(days) LOOP
        partition := expired.partition::text;
        range_start := expired.range_start;
        range_end := expired.range_end;
        is_default := expired.is_default;
        estimated_rows := expired.estimated_rows;
        EXECUTE format('DROP TABLE %s', expired.partition);
        IF expired.is_default THEN
            CREATE TABLE refresh_ledger_default PARTITION OF refresh_ledger DEFAULT;
            PERFORM refresh_ledger_protect_partition('refresh_ledger_default');
        END IF;
        dropped := true;
        RETURN NEXT;
    END LOOP;
    IF dropped THEN
        SELECT least((SELECT min(p.range_start) FROM refresh_ledger_partitions p WHERE NOT p.is_default),
                     (SELECT min(occurred_at) FROM refresh_ledger_default))
        INTO kept_from;
        DELETE FROM refresh_ledger_minutes WHERE last_at < kept_from;
    END IF;
END
$$;

-- Runs with a row or a summary in [since, until): one row each, with all its counts (not
-- only those inside the window) and, when it finished, why it stopped. A run without a
-- summary died or is still running. An inlinable SQL function, so the window reaches the
-- indexes; `refresh_runs` is the same over all time.
CREATE FUNCTION refresh_runs_between(since timestamptz, until timestamptz)
RETURNS TABLE (run_id uuid, started_at timestamptz, finished_at timestamptz,
               stopped text, cause text, attempted bigint, fetched bigint, failed bigint,
               skipped_deadline bigint, deferred bigint, ledger_rows bigint,
               first_row_at timestamptz, last_row_at timestamptz, api_requests integer)
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
           (s.summary ->> 'api_requests')::integer
    FROM runs r
    LEFT JOIN counts c ON c.run_id = r.run_id
    LEFT JOIN refresh_run_summaries s ON s.run_id = r.run_id
$$;

-- One row per run: start, end, counts per outcome, why it stopped (NULL: no summary, the
-- run died or is running). Filter big ledgers through refresh_runs_between() instead.
CREATE VIEW refresh_runs AS
SELECT * FROM refresh_runs_between('-infinity', 'infinity');

-- Attempts in [since, until) older than `grace` that nothing settled or ended: the rows
-- refresh_orphaned_attempts would list there, found without reading every attempt.
--
-- It looks only at runs without a summary. A run's summary is written in the transaction
-- of its last rows, and only once every attempt of the run has its terminal row (the drain
-- puts what it could not finish back as skipped-deadline or deferred), so the attempts of
-- a run with a summary are never orphaned. Each candidate run (one that died, or the one
-- running now) is read once over its own span: an attempt followed by a terminal row of
-- its request in the same run is settled; the few others get refresh_orphaned_attempts'
-- own test, a terminal row of the request at or after the attempt in any run.
CREATE FUNCTION refresh_orphaned_attempts_between(since timestamptz, until timestamptz,
                                                  grace interval DEFAULT interval '10 minutes')
RETURNS TABLE (occurred_at timestamptz, request_id text, run_id uuid, kind text, tag text)
LANGUAGE sql STABLE AS $$
    SELECT c.occurred_at, c.request_id, c.run_id, c.kind, c.tag
    FROM (
        SELECT m.run_id, min(m.first_at) AS first_at, max(m.last_at) AS last_at
        FROM refresh_ledger_minutes m
        WHERE m.run_id IN (
            SELECT a.run_id FROM refresh_ledger_minutes a
            WHERE a.outcome = 'attempted'
              AND a.minute > since - interval '1 minute' AND a.minute < until
              AND a.last_at >= since AND a.first_at < least(until, now() - grace)
              AND NOT EXISTS (SELECT 1 FROM refresh_run_summaries s WHERE s.run_id = a.run_id))
        GROUP BY m.run_id
    ) r
    CROSS JOIN LATERAL (
        SELECT l.occurred_at, l.request_id, l.run_id, l.kind, l.tag, l.outcome,
               max(l.occurred_at) FILTER (WHERE l.outcome <> 'attempted')
                   OVER (PARTITION BY l.request_id) AS settled_at
        FROM refresh_ledger l
        WHERE l.run_id = r.run_id AND l.occurred_at >= r.first_at AND l.occurred_at <= r.last_at
    ) c
    WHERE c.outcome = 'attempted'
      AND c.occurred_at >= since
      AND c.occurred_at < least(until, now() - grace)
      AND (c.settled_at IS NULL OR c.settled_at < c.occurred_at)
      AND NOT EXISTS (
          SELECT 1 FROM refresh_ledger t
          WHERE t.request_id = c.request_id
            AND t.outcome <> 'attempted'
            AND t.occurred_at >= c.occurred_at
      )
$$;

-- refresh_health, same columns as before. Counts over the last hour come from whole
-- minutes of refresh_ledger_minutes plus the ledger rows of the partial first minute, so
-- they are exact. p95 latency is over the newest 2,000 fetches of the hour (all of them
-- below ~0.5 requests/s). Orphaned attempts: the last hour's, through the function above.
DROP VIEW refresh_health;
CREATE VIEW refresh_health AS
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
