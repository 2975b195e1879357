-- 0001: snapshots, the outcome ledger and the run summaries.
--
-- The ledger is the worker's memory: every request taken off the queue leaves rows here,
-- and Postgres itself refuses to change or remove them.

-- Snapshots: one row per tag (wars: the current war per clan). `data` is the API's JSON
-- as returned; the other columns are generated from it, so they can never disagree.
CREATE TABLE players (
    tag             text PRIMARY KEY,
    data            jsonb       NOT NULL,
    fetched_at      timestamptz NOT NULL,
    name            text    GENERATED ALWAYS AS (data ->> 'name') STORED,
    town_hall_level integer GENERATED ALWAYS AS ((data ->> 'townHallLevel')::integer) STORED,
    exp_level       integer GENERATED ALWAYS AS ((data ->> 'expLevel')::integer) STORED,
    trophies        integer GENERATED ALWAYS AS ((data ->> 'trophies')::integer) STORED,
    clan_tag        text    GENERATED ALWAYS AS (data -> 'clan' ->> 'tag') STORED
);
CREATE INDEX players_clan_tag ON players (clan_tag);
CREATE INDEX players_fetched_at ON players (fetched_at);

CREATE TABLE clans (
    tag         text PRIMARY KEY,
    data        jsonb       NOT NULL,
    fetched_at  timestamptz NOT NULL,
    name        text    GENERATED ALWAYS AS (data ->> 'name') STORED,
    clan_level  integer GENERATED ALWAYS AS ((data ->> 'clanLevel')::integer) STORED,
    members     integer GENERATED ALWAYS AS ((data ->> 'members')::integer) STORED,
    clan_points integer GENERATED ALWAYS AS ((data ->> 'clanPoints')::integer) STORED,
    war_league  text    GENERATED ALWAYS AS (data -> 'warLeague' ->> 'name') STORED
);
CREATE INDEX clans_fetched_at ON clans (fetched_at);

CREATE TABLE wars (
    clan_tag     text PRIMARY KEY,
    data         jsonb       NOT NULL,
    fetched_at   timestamptz NOT NULL,
    state        text    GENERATED ALWAYS AS (data ->> 'state') STORED,
    team_size    integer GENERATED ALWAYS AS ((data ->> 'teamSize')::integer) STORED,
    opponent_tag text    GENERATED ALWAYS AS (data -> 'opponent' ->> 'tag') STORED
);
CREATE INDEX wars_fetched_at ON wars (fetched_at);

-- The outcome ledger. `kind` and `tag` are null for an item too malformed to name them.
CREATE TABLE refresh_ledger (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    request_id  text        NOT NULL,
    run_id      uuid        NOT NULL,
    kind        text CHECK (kind IN ('player', 'clan', 'war')),
    tag         text,
    outcome     text        NOT NULL
        CHECK (outcome IN ('attempted', 'fetched', 'failed', 'skipped-deadline', 'deferred')),
    reason      text,
    detail      text,
    http_status smallint,
    latency_ms  integer,
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (id),
    -- Every row that is not a success or an attempt says why.
    CHECK (outcome IN ('attempted', 'fetched') OR reason IS NOT NULL)
);
CREATE INDEX refresh_ledger_occurred_at ON refresh_ledger (occurred_at);
CREATE INDEX refresh_ledger_request ON refresh_ledger (request_id, run_id);
CREATE INDEX refresh_ledger_tag ON refresh_ledger (tag, occurred_at);
CREATE INDEX refresh_ledger_failed ON refresh_ledger (reason, occurred_at) WHERE outcome = 'failed';
CREATE INDEX refresh_ledger_fetched ON refresh_ledger (occurred_at) WHERE outcome = 'fetched';

CREATE FUNCTION refresh_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'feature_not_supported',
              HINT = 'History leaves only by dropping whole partitions (retention).';
END
$$;

CREATE TRIGGER refresh_ledger_append_only
    BEFORE UPDATE OR DELETE ON refresh_ledger
    FOR EACH ROW EXECUTE FUNCTION refresh_reject_change();
CREATE TRIGGER refresh_ledger_no_truncate
    BEFORE TRUNCATE ON refresh_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION refresh_reject_change();

-- One row per finished run: why it stopped, written in the run's last transaction.
CREATE TABLE refresh_run_summaries (
    run_id       uuid PRIMARY KEY,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    stopped      text        NOT NULL,
    cause        text,
    summary      jsonb       NOT NULL
);
CREATE INDEX refresh_run_summaries_finished_at ON refresh_run_summaries (finished_at);

CREATE TRIGGER refresh_run_summaries_append_only
    BEFORE UPDATE OR DELETE ON refresh_run_summaries
    FOR EACH ROW EXECUTE FUNCTION refresh_reject_change();

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
