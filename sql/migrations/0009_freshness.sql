-- 0009: freshness and change detection.
--
-- The API says in `Cache-Control: max-age` (minus `Age`) how long an answer stays in its own
-- cache; until then asking again returns the same body. Each snapshot now keeps until when it
-- is fresh (`fresh_until`, on Postgres's clock: the worker compares it with now() and never
-- with its own clock), and a request for a fresh snapshot is settled `skipped-fresh` (reason
-- `fresh`) without a call. A `fetched` row says whether the body `changed`; an unchanged one
-- does not rewrite the snapshot's `data`, only its fetch time and freshness, which is a small
-- in-place row instead of a 25 KB rewrite (WAL, replication, backups).
--
-- Existing snapshots get NULL for both new columns: not fresh (the first request after the
-- migration calls, as before), and no hash (the first refresh after it counts as a change and
-- rewrites the body once, with its hash).
-- Existing ledger rows get `changed` NULL: unknown. The constraints are added NOT VALID, as
-- in 0004: the old rows satisfy them (their outcome set is a subset of the new one, and none
-- has `changed`), and a big ledger is not scanned under the migration's lock.

ALTER TABLE players ADD COLUMN fresh_until timestamptz, ADD COLUMN data_hash bytea;
ALTER TABLE clans ADD COLUMN fresh_until timestamptz, ADD COLUMN data_hash bytea;
ALTER TABLE wars ADD COLUMN fresh_until timestamptz, ADD COLUMN data_hash bytea;

COMMENT ON COLUMN players.fresh_until IS
    'Until when the API serves this body from its cache (max-age minus Age after the call was '
    'made, Postgres clock); NULL: not fresh. Requests before then are settled skipped-fresh.';
COMMENT ON COLUMN players.data_hash IS
    'BLAKE2b-128 of the API body as received (without coc.py''s keys): an equal hash means an '
    'unchanged body, which is not rewritten. NULL: not known (rows older than 0009).';

ALTER TABLE refresh_ledger ADD COLUMN changed boolean;
COMMENT ON COLUMN refresh_ledger.changed IS
    'fetched rows: true when the body differed from the stored snapshot (or there was none), '
    'false when it was identical and the snapshot''s data was not rewritten. NULL otherwise.';

ALTER TABLE refresh_ledger DROP CONSTRAINT refresh_ledger_outcome_check;
ALTER TABLE refresh_ledger ADD CONSTRAINT refresh_ledger_outcome_check
    CHECK (outcome IN ('attempted', 'fetched', 'failed', 'skipped-deadline', 'deferred', 'skipped-fresh'))
    NOT VALID;
ALTER TABLE refresh_ledger ADD CONSTRAINT refresh_ledger_changed_only_when_fetched
    CHECK (changed IS NULL OR outcome = 'fetched') NOT VALID;

-- Fetches and changed fetches per minute and kind, beside refresh_ledger_minutes and kept the
-- same way (a statement trigger, in the transaction of the rows it counts), so health reads the
-- hour's share of useful refreshes without scanning 100,000 ledger rows.
CREATE TABLE refresh_fetch_minutes (
    minute   timestamptz NOT NULL,
    kind     text        NOT NULL,
    fetched  bigint      NOT NULL,
    changed  bigint      NOT NULL,
    PRIMARY KEY (minute, kind)
);
COMMENT ON TABLE refresh_fetch_minutes IS
    'fetched ledger rows per minute and kind, and how many of them changed the snapshot; kept '
    'by a trigger on refresh_ledger. Derived: the ledger is the record.';

CREATE FUNCTION refresh_ledger_count_fetches() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO refresh_fetch_minutes AS m (minute, kind, fetched, changed)
    SELECT date_bin('1 minute', occurred_at, timestamptz '2000-01-01 00:00:00+00'),
           kind, count(*), count(*) FILTER (WHERE changed)
    FROM new_rows
    WHERE outcome = 'fetched' AND kind IS NOT NULL
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (minute, kind) DO UPDATE
        SET fetched = m.fetched + EXCLUDED.fetched,
            changed = m.changed + EXCLUDED.changed;
    RETURN NULL;
END
$$;

CREATE TRIGGER refresh_ledger_count_fetches
    AFTER INSERT ON refresh_ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION refresh_ledger_count_fetches();

-- The runs view gains `skipped_fresh` (a settling outcome: no call was needed). Same function
-- and view as 0005 otherwise, with the new column last.
DROP VIEW refresh_runs;
DROP FUNCTION refresh_runs_between(timestamptz, timestamptz);

CREATE FUNCTION refresh_runs_between(since timestamptz, until timestamptz)
RETURNS TABLE (run_id uuid, started_at timestamptz, finished_at timestamptz,
               stopped text, cause text, attempted bigint, fetched bigint, failed bigint,
               skipped_deadline bigint, deferred bigint, ledger_rows bigint,
               first_row_at timestamptz, last_row_at timestamptz, api_requests integer,
               took_over_from uuid, skipped_fresh bigint)
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
               sum(m.rows) FILTER (WHERE m.outcome = 'skipped-fresh')    AS skipped_fresh,
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
           (s.summary ->> 'took_over_from')::uuid,
           coalesce(c.skipped_fresh, 0)::bigint
    FROM runs r
    LEFT JOIN counts c ON c.run_id = r.run_id
    LEFT JOIN refresh_run_summaries s ON s.run_id = r.run_id
$$;

CREATE VIEW refresh_runs AS
SELECT * FROM refresh_runs_between('-infinity', 'infinity');

-- refresh_health as in 0008 (a view over refresh_health_stats()), plus `skipped_fresh` and, per
-- kind, the hour's fetches, how many found a change and their share (`fetch_changes`: the useful
-- refreshes per call), read from refresh_fetch_minutes. New columns last. `failure_rate` is over
-- every settled request (fetched + failed + skipped-fresh): a request the gate settled is one
-- that did not fail.
DROP VIEW refresh_health;
DROP FUNCTION refresh_health_stats(integer);

CREATE FUNCTION refresh_health_stats(orphans_counted integer DEFAULT 100)
RETURNS TABLE (window_seconds integer, attempted bigint, fetched bigint, failed bigint,
               skipped_deadline bigint, deferred bigint, failure_rate numeric,
               p95_latency_ms integer, last_fetched_at timestamptz, orphaned_attempts bigint,
               last_run_id uuid, last_run_finished_at timestamptz, last_run_stopped text,
               last_run_cause text, skipped_fresh bigint, fetch_changes jsonb)
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
           coalesce(sum(r.rows) FILTER (WHERE r.outcome = 'deferred'), 0)::bigint,
           coalesce(sum(r.rows) FILTER (WHERE r.outcome = 'skipped-fresh'), 0)::bigint
    INTO attempted, fetched, failed, skipped_deadline, deferred, skipped_fresh
    FROM (
        SELECT m.outcome, m.rows FROM refresh_ledger_minutes m WHERE m.minute >= whole
        UNION ALL
        SELECT l.outcome, 1 FROM refresh_ledger l WHERE l.occurred_at > since AND l.occurred_at < whole
    ) r;
    -- Over every settled request: one the gate settled is one that did not fail.
    failure_rate := round(failed::numeric / nullif(fetched + failed + skipped_fresh, 0), 4);

    -- Per kind, the hour's fetches, how many found a changed body, and their share (the useful
    -- refreshes per call): whole minutes only, a rate needs no partial first minute.
    SELECT coalesce(jsonb_object_agg(k.kind, jsonb_build_object(
               'fetched', k.fetched, 'changed', k.changed,
               'share', round(k.changed::numeric / nullif(k.fetched, 0), 4))), '{}'::jsonb)
    INTO fetch_changes
    FROM (
        SELECT f.kind, sum(f.fetched)::bigint AS fetched, sum(f.changed)::bigint AS changed
        FROM refresh_fetch_minutes f
        WHERE f.minute >= whole
        GROUP BY f.kind
    ) k;

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

CREATE VIEW refresh_health AS
SELECT * FROM refresh_health_stats();

-- Retention trims the fetch counts with the ledger's minute counts. The function stays 0003's,
-- one DELETE more.
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
        DELETE FROM refresh_fetch_minutes WHERE minute + interval '1 minute' <= kept_from;
    END IF;
END
$$;
