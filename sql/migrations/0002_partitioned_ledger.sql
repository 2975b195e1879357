-- 0002: the ledger partitioned by day, with retention by whole partitions.
--
-- At the seed's limit the ledger grows by up to 5 million rows a day. Daily range partitions
-- on `occurred_at` keep every time-bounded query (health, audit) on one or two partitions,
-- and let old history leave the one way the ledger allows: DROP TABLE of a whole partition,
-- done only by refresh_ledger_drop_partitions_older_than(). UPDATE, DELETE and TRUNCATE stay
-- refused on the parent and on every partition.
--
-- The existing unpartitioned table is renamed, its rows copied with their ids into the new
-- partitioned table, and then dropped; the identity sequence continues where the old one
-- stopped. The copy runs inside this migration's transaction: a big ledger holds its lock
-- for as long as the copy takes.

-- The views read the table: they go first and come back at the end.
DROP VIEW refresh_health;
DROP VIEW refresh_orphaned_attempts;
DROP VIEW refresh_failures;

-- Out of the way: the old table, its sequence and its index names (index names are
-- per schema, and the new parent wants them).
ALTER TABLE refresh_ledger RENAME TO refresh_ledger_0001;
ALTER SEQUENCE refresh_ledger_id_seq RENAME TO refresh_ledger_0001_id_seq;
ALTER TABLE refresh_ledger_0001 RENAME CONSTRAINT refresh_ledger_pkey TO refresh_ledger_0001_pkey;
DROP INDEX refresh_ledger_occurred_at, refresh_ledger_request, refresh_ledger_tag,
           refresh_ledger_failed, refresh_ledger_fetched;

-- Same columns, checks and defaults. A unique key on a partitioned table must contain the
-- partition key, so the primary key becomes (id, occurred_at); ids still come from one
-- sequence and stay unique. Rows inserted through the parent get their id from it.
CREATE TABLE refresh_ledger (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    request_id  text        NOT NULL,
    run_id      uuid        NOT NULL,
    kind        text CONSTRAINT refresh_ledger_kind_check CHECK (kind IN ('player', 'clan', 'war')),
    tag         text,
    outcome     text        NOT NULL CONSTRAINT refresh_ledger_outcome_check
        CHECK (outcome IN ('attempted', 'fetched', 'failed', 'skipped-deadline', 'deferred')),
    reason      text,
    detail      text,
    http_status smallint,
    latency_ms  integer,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (id, occurred_at),
    -- Every row that is not a success or an attempt says why. (The names are 0001's.)
    CONSTRAINT refresh_ledger_check CHECK (outcome IN ('attempted', 'fetched') OR reason IS NOT NULL)
) PARTITION BY RANGE (occurred_at);

COMMENT ON TABLE refresh_ledger IS
    'Append-only outcome ledger, one partition per UTC day. Rows leave only when '
    'refresh_ledger_drop_partitions_older_than() drops a whole partition.';

-- Row triggers on a partitioned table are cloned onto every partition, present and future.
CREATE TRIGGER refresh_ledger_append_only
    BEFORE UPDATE OR DELETE ON refresh_ledger
    FOR EACH ROW EXECUTE FUNCTION refresh_reject_change();
-- Statement triggers are not cloned: this one guards `TRUNCATE refresh_ledger` only, and
-- refresh_ledger_protect_partition() puts one on each partition.
CREATE TRIGGER refresh_ledger_no_truncate
    BEFORE TRUNCATE ON refresh_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION refresh_reject_change();

-- The safety net: a row whose day has no partition yet lands here instead of failing the
-- worker's transaction. It stays empty while partitions are made ahead of time.
CREATE TABLE refresh_ledger_default PARTITION OF refresh_ledger DEFAULT;

-- Every partition with its bounds (NULL for the default) and size, for operators and retention.
CREATE VIEW refresh_ledger_partitions AS
SELECT c.oid::regclass                               AS partition,
       b.m[1]::timestamptz                           AS range_start,
       b.m[2]::timestamptz                           AS range_end,
       b.m IS NULL                                   AS is_default,
       greatest(c.reltuples, 0)::bigint              AS estimated_rows,
       pg_total_relation_size(c.oid)                 AS total_bytes
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
-- The bound is printed in the session's time zone with its offset, so the cast is exact.
CROSS JOIN LATERAL (
    SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid),
                        'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') AS m
) b
WHERE i.inhparent = 'refresh_ledger'::regclass;

-- `refresh_ledger_p20261128` holds 2026-11-28 00:00 UTC up to (not including) the next midnight.
CREATE FUNCTION refresh_ledger_partition_name(day date) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'refresh_ledger_p' || to_char(day, 'YYYYMMDD') $$;

-- Guards a partition on its own, not only through the parent: TRUNCATE of a partition is
-- not stopped by the parent's statement trigger, and a row trigger of its own keeps a
-- partition immutable even if it were detached. Idempotent; only locks a table it changes.
CREATE FUNCTION refresh_ledger_protect_partition(part regclass) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    changed boolean := false;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = part AND tgname = 'refresh_ledger_partition_append_only') THEN
        EXECUTE format('CREATE TRIGGER refresh_ledger_partition_append_only '
                       'BEFORE UPDATE OR DELETE ON %s '
                       'FOR EACH ROW EXECUTE FUNCTION refresh_reject_change()', part);
        changed := true;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = part AND tgname = 'refresh_ledger_partition_no_truncate') THEN
        EXECUTE format('CREATE TRIGGER refresh_ledger_partition_no_truncate '
                       'BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION refresh_reject_change()', part);
        changed := true;
    END IF;
    RETURN changed;
END
$$;

-- Creates the partition for one UTC day unless it exists; returns whether it made one.
-- If the default partition already holds rows of that day the partition cannot be created
-- (Postgres would refuse, and rows never move): the day stays in the default, with a warning.
-- CREATE … PARTITION OF locks the parent briefly; the lock timeout keeps a long audit
-- query from stalling the worker behind it (the next call tries again, days ahead).
CREATE FUNCTION refresh_ledger_create_partition(day date) RETURNS boolean
LANGUAGE plpgsql SET lock_timeout = '5s' AS $$
DECLARE
    name    text        := refresh_ledger_partition_name(day);
    lo      timestamptz := day::timestamp AT TIME ZONE 'UTC';
    hi      timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
    schema  name        := (SELECT relnamespace::regnamespace::name FROM pg_class
                            WHERE oid = 'refresh_ledger'::regclass);
BEGIN
    IF to_regclass(format('%I.%I', schema, name)) IS NOT NULL THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM refresh_ledger_default WHERE occurred_at >= lo AND occurred_at < hi) THEN
        RAISE WARNING 'refresh_ledger_default holds rows of %, so % is not created', day, name;
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF refresh_ledger FOR VALUES FROM (%L) TO (%L)',
                   schema, name, lo, hi);
    PERFORM refresh_ledger_protect_partition(format('%I.%I', schema, name)::regclass);
    RETURN true;
END
$$;

-- Makes sure today's partition (UTC) and the next `days_ahead` days' exist, and that every
-- partition carries its own guards. Cheap when there is nothing to do (catalog reads only):
-- the worker calls it at the start of each run, and this migration calls it once.
CREATE FUNCTION refresh_ledger_ensure_partitions(days_ahead integer DEFAULT 3) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    today   date    := (now() AT TIME ZONE 'UTC')::date;
    created integer := 0;
    part    regclass;
BEGIN
    IF days_ahead IS NULL OR days_ahead < 0 THEN
        RAISE EXCEPTION 'days_ahead must be zero or more, got %', days_ahead;
    END IF;
    FOR d IN 0 .. days_ahead LOOP
        IF refresh_ledger_create_partition(today + d) THEN
            created := created + 1;
        END IF;
    END LOOP;
    -- A partition made by hand (or attached) lacks the guards that are not cloned.
    FOR part IN
        SELECT p.partition FROM refresh_ledger_partitions p
        WHERE (SELECT count(*) FROM pg_trigger t
               WHERE t.tgrelid = p.partition
                 AND t.tgname IN ('refresh_ledger_partition_append_only',
                                  'refresh_ledger_partition_no_truncate')) < 2
    LOOP
        PERFORM refresh_ledger_protect_partition(part);
    END LOOP;
    RETURN created;
END
$$;

-- What retention would drop: every dated partition whose whole range is older than `days`
-- days (its end is at or before now() - days), and the default partition when it holds rows
-- and all of them are that old. No row younger than `days` days is ever in this list.
CREATE FUNCTION refresh_ledger_expired_partitions(days integer)
RETURNS TABLE (partition regclass, range_start timestamptz, range_end timestamptz,
               is_default boolean, estimated_rows bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    cutoff timestamptz;
BEGIN
    IF days IS NULL OR days < 1 THEN
        RAISE EXCEPTION 'retention must keep at least 1 day, got %', days;
    END IF;
    cutoff := now() - make_interval(days => days);
    RETURN QUERY
        SELECT p.partition, p.range_start, p.range_end, p.is_default, p.estimated_rows
        FROM refresh_ledger_partitions p
        WHERE NOT p.is_default AND p.range_end <= cutoff
        ORDER BY p.range_start;
    IF EXISTS (SELECT 1 FROM refresh_ledger_default)
       AND NOT EXISTS (SELECT 1 FROM refresh_ledger_default WHERE occurred_at > cutoff) THEN
        RETURN QUERY
            SELECT p.partition, (SELECT min(occurred_at) FROM refresh_ledger_default),
                   (SELECT max(occurred_at) FROM refresh_ledger_default), true, p.estimated_rows
            FROM refresh_ledger_partitions p WHERE p.is_default;
    END IF;
END
$$;

-- Retention: DROP TABLE of each expired partition, the only way rows ever leave the ledger.
-- UPDATE, DELETE and TRUNCATE stay refused everywhere. A dropped default partition is
-- recreated empty at once, guards included. Returns what it dropped.
CREATE FUNCTION refresh_ledger_drop_partitions_older_than(days integer)
RETURNS TABLE (partition text, range_start timestamptz, range_end timestamptz,
               is_default boolean, estimated_rows bigint)
LANGUAGE plpgsql SET lock_timeout = '5s' AS $$
DECLARE
    expired record;
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
        RETURN NEXT;
    END LOOP;
END
$$;

-- One partition per day that holds old rows, then the copy, ids and all.
SELECT refresh_ledger_create_partition(day)
FROM (SELECT DISTINCT (occurred_at AT TIME ZONE 'UTC')::date AS day FROM refresh_ledger_0001) d;
SELECT refresh_ledger_protect_partition('refresh_ledger_default');

INSERT INTO refresh_ledger (id, request_id, run_id, kind, tag, outcome, reason, detail,
                            http_status, latency_ms, occurred_at)
OVERRIDING SYSTEM VALUE
SELECT id, request_id, run_id, kind, tag, outcome, reason, detail, http_status, latency_ms, occurred_at
FROM refresh_ledger_0001
ORDER BY id;

-- New ids continue after every id the old sequence ever handed out (rolled-back ones too).
SELECT setval(pg_get_serial_sequence('refresh_ledger', 'id'),
              greatest(s.last_value, (SELECT max(id) FROM refresh_ledger)), true)
FROM refresh_ledger_0001_id_seq s
WHERE s.is_called OR EXISTS (SELECT 1 FROM refresh_ledger);

DROP TABLE refresh_ledger_0001;

-- Indexes on the parent are created on every partition, present and future. 0001's five,
-- two of them reshaped for time windows: a window always bounds the audit queries, so
-- `occurred_at` leads, and the columns the audits group failures by ride along, so the
-- scan of a day's failures does not visit the table (2% of rows, scattered over all of it).
CREATE INDEX refresh_ledger_occurred_at ON refresh_ledger (occurred_at);
CREATE INDEX refresh_ledger_request ON refresh_ledger (request_id, run_id);
CREATE INDEX refresh_ledger_tag ON refresh_ledger (tag, occurred_at);
CREATE INDEX refresh_ledger_failed ON refresh_ledger (occurred_at)
    INCLUDE (reason, kind, tag, request_id, run_id, http_status) WHERE outcome = 'failed';
-- The newest fetches' latencies for refresh_health's p95, read from the index alone.
CREATE INDEX refresh_ledger_fetched ON refresh_ledger (occurred_at) INCLUDE (latency_ms)
    WHERE outcome = 'fetched';

SELECT refresh_ledger_ensure_partitions(3);

-- The views, as in 0001 (0003 makes refresh_health fast on a big ledger).

-- Failures, newest first when ordered by occurred_at: the start of every audit.
CREATE VIEW refresh_failures AS
SELECT occurred_at, request_id, run_id, kind, tag, reason, detail, http_status
FROM refresh_ledger
WHERE outcome = 'failed';

-- An attempt that nothing settled or ended for its run after a 10-minute grace period:
-- the process died between the API call and the commit.
CREATE VIEW refresh_orphaned_attempts AS
SELECT a.occurred_at, a.request_id, a.run_id, a.kind, a.tag
FROM refresh_ledger a
WHERE a.outcome = 'attempted'
  AND a.occurred_at < now() - interval '10 minutes'
  AND NOT EXISTS (
      SELECT 1 FROM refresh_ledger t
      WHERE t.request_id = a.request_id
        AND t.outcome <> 'attempted'
        AND t.occurred_at >= a.occurred_at
  );

-- One row of ledger statistics over the last hour, plus the last run.
CREATE VIEW refresh_health AS
WITH recent AS (
    SELECT outcome, reason, latency_ms
    FROM refresh_ledger
    WHERE occurred_at > now() - interval '1 hour'
), counts AS (
    SELECT count(*) FILTER (WHERE outcome = 'attempted')        AS attempted,
           count(*) FILTER (WHERE outcome = 'fetched')          AS fetched,
           count(*) FILTER (WHERE outcome = 'failed')           AS failed,
           count(*) FILTER (WHERE outcome = 'skipped-deadline') AS skipped_deadline,
           count(*) FILTER (WHERE outcome = 'deferred')         AS deferred,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms)
               FILTER (WHERE outcome = 'fetched')               AS p95_latency_ms
    FROM recent
), last_run AS (
    SELECT run_id, finished_at, stopped, cause
    FROM refresh_run_summaries
    ORDER BY finished_at DESC
    LIMIT 1
)
SELECT 3600                                                   AS window_seconds,
       c.attempted, c.fetched, c.failed, c.skipped_deadline, c.deferred,
       round(c.failed::numeric / nullif(c.fetched + c.failed, 0), 4) AS failure_rate,
       c.p95_latency_ms,
       (SELECT max(occurred_at) FROM refresh_ledger WHERE outcome = 'fetched') AS last_fetched_at,
       (SELECT count(*) FROM refresh_orphaned_attempts
        WHERE occurred_at > now() - interval '1 day')          AS orphaned_attempts,
       r.run_id      AS last_run_id,
       r.finished_at AS last_run_finished_at,
       r.stopped     AS last_run_stopped,
       r.cause       AS last_run_cause
FROM counts c
LEFT JOIN last_run r ON true;
