-- 0012: the attempts nothing has settled yet, kept beside the ledger, so that counting the
-- orphaned ones costs a few index reads instead of a run's worth of ledger rows.
--
-- refresh_orphaned_attempts_between (0003) found them through runs without a summary: each
-- such run was read over its whole span and its attempts sorted by request. A run that died
-- stayed such a run for the hour after, long after the next run's recovery had requeued its
-- requests and settled them, so refresh_health paid 3-6 ms for that hour on every call to find
-- nothing (bench/ledger.md). Now a statement trigger keeps `refresh_open_attempts`: an
-- `attempted` row enters it, and leaves when a terminal row of its request at or after it is
-- written, in the transaction of that row. What stays in it past the grace period is exactly
-- what the view refresh_orphaned_attempts lists, so the function reads it instead, and the
-- health and the audit query get it for the price of what they return. (refresh_health_stats
-- keeps its first test, from the roll-up, that a run without a summary made old attempts:
-- 0.1 ms, and when it fails there is nothing to count.)
--
-- Like refresh_ledger_minutes it is derived data: the ledger is the record, and the view
-- refresh_orphaned_attempts, which reads only the ledger, is the check (tests/test_audit.py).
-- The one case where the two could differ is an attempt and a terminal row of the same
-- request written at once by two transactions, neither seeing the other's; the worker never
-- does that (an attempt's row commits before its call is made).

-- No ledger row may slip in between the backfill and the trigger.
LOCK TABLE refresh_ledger IN SHARE MODE;

CREATE TABLE refresh_open_attempts (
    occurred_at  timestamptz NOT NULL,
    request_id   text        NOT NULL,
    run_id       uuid        NOT NULL,
    kind         text,
    tag          text
);
CREATE INDEX refresh_open_attempts_request ON refresh_open_attempts (request_id, occurred_at);
CREATE INDEX refresh_open_attempts_occurred_at ON refresh_open_attempts (occurred_at);
COMMENT ON TABLE refresh_open_attempts IS
    'attempted ledger rows with no terminal row of their request at or after them, kept by a '
    'trigger on refresh_ledger: the calls in flight, and past a grace period the orphaned '
    'attempts. Derived: the ledger is the record.';

-- One statement per ledger INSERT, like the roll-up's. A terminal row settles the attempts of
-- its request made at or before it; a new attempt is open unless a terminal row of its request
-- at or after it is already in the ledger (this statement's rows included).
CREATE FUNCTION refresh_ledger_track_attempts() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM refresh_open_attempts o
    USING (
        SELECT request_id, max(occurred_at) AS settled_at
        FROM new_rows
        WHERE outcome <> 'attempted'
        GROUP BY request_id
    ) t
    WHERE o.request_id = t.request_id AND o.occurred_at <= t.settled_at;

    INSERT INTO refresh_open_attempts (occurred_at, request_id, run_id, kind, tag)
    SELECT a.occurred_at, a.request_id, a.run_id, a.kind, a.tag
    FROM new_rows a
    WHERE a.outcome = 'attempted'
      AND NOT EXISTS (
          SELECT 1 FROM refresh_ledger t
          WHERE t.request_id = a.request_id
            AND t.outcome <> 'attempted'
            AND t.occurred_at >= a.occurred_at
      );
    RETURN NULL;
END
$$;

-- What is open today: 0003's search over every run without a summary, with no grace period
-- (the lock above holds back any attempt newer than this transaction).
INSERT INTO refresh_open_attempts (occurred_at, request_id, run_id, kind, tag)
SELECT occurred_at, request_id, run_id, kind, tag
FROM refresh_orphaned_attempts_between('-infinity', 'infinity', interval '0');

-- On the parent, so it sees rows routed to every partition (INSERT and COPY alike).
CREATE TRIGGER refresh_ledger_track_attempts
    AFTER INSERT ON refresh_ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION refresh_ledger_track_attempts();

-- Same signature and rows as 0003's, read from the table above.
CREATE OR REPLACE FUNCTION refresh_orphaned_attempts_between(since timestamptz, until timestamptz,
                                                             grace interval DEFAULT interval '10 minutes')
RETURNS TABLE (occurred_at timestamptz, request_id text, run_id uuid, kind text, tag text)
LANGUAGE sql STABLE AS $$
    SELECT o.occurred_at, o.request_id, o.run_id, o.kind, o.tag
    FROM refresh_open_attempts o
    WHERE o.occurred_at >= since
      AND o.occurred_at < least(until, now() - grace)
$$;

-- Retention trims every table derived from the ledger down to what the ledger still holds.
-- They are trimmed in a function of their own, so the next derived table changes only it.
CREATE FUNCTION refresh_ledger_trim_derived(kept_from timestamptz) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM refresh_ledger_minutes WHERE last_at < kept_from;
    DELETE FROM refresh_fetch_minutes WHERE minute + interval '1 minute' <= kept_from;
    DELETE FROM refresh_open_attempts WHERE occurred_at < kept_from;
$$;

-- 0009's function, trimming through the function above.
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
        PERFORM refresh_ledger_trim_derived(kept_from);
    END IF;
END
$$;
