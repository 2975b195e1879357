-- Named queries, loaded once by coclib.sqlfiles.load_queries(): each starts with
-- `-- name: <name>` and a line saying what it does. Parameters are %(name)s, or %(name)b
-- for one psycopg must send in binary.

-- name: upsert_players
-- Store players' snapshots, given as parallel arrays (one round trip for a whole batch),
-- unless a newer fetch is already stored. DISTINCT ON: a statement may touch a row once.
-- The bodies go in binary (%(data)b): as a text array literal every quote in every body
-- would be escaped, which costs ten times the CPU of the rest of the write.
-- `fetched_at` is on Postgres's clock, the one clock every worker shares: the worker sends each
-- body's age (seconds since its fetch, on its own clock) and the fetch time is now less that age.
-- A worker whose clock is off cannot date a snapshot in the future, where it would block every
-- correct fetch until that time; and one so dated earlier (a stored time ahead of Postgres's
-- clock cannot be true) is overwritten by the next fetch.
INSERT INTO players AS p (tag, data, fetched_at)
SELECT DISTINCT ON (tag) tag, data, clock_timestamp() - make_interval(secs => age)
FROM unnest(%(tag)s::text[], %(data)b::jsonb[], %(age)s::float8[]) AS s (tag, data, age)
ORDER BY tag, age
ON CONFLICT (tag) DO UPDATE
    SET data = EXCLUDED.data, fetched_at = EXCLUDED.fetched_at
    WHERE p.fetched_at <= EXCLUDED.fetched_at OR p.fetched_at > clock_timestamp();

-- name: upsert_clans
-- Store clans' snapshots, as upsert_players does players'.
INSERT INTO clans AS c (tag, data, fetched_at)
SELECT DISTINCT ON (tag) tag, data, clock_timestamp() - make_interval(secs => age)
FROM unnest(%(tag)s::text[], %(data)b::jsonb[], %(age)s::float8[]) AS s (tag, data, age)
ORDER BY tag, age
ON CONFLICT (tag) DO UPDATE
    SET data = EXCLUDED.data, fetched_at = EXCLUDED.fetched_at
    WHERE c.fetched_at <= EXCLUDED.fetched_at OR c.fetched_at > clock_timestamp();

-- name: upsert_wars
-- Store clans' current wars, as upsert_players does players'.
INSERT INTO wars AS w (clan_tag, data, fetched_at)
SELECT DISTINCT ON (tag) tag, data, clock_timestamp() - make_interval(secs => age)
FROM unnest(%(tag)s::text[], %(data)b::jsonb[], %(age)s::float8[]) AS s (tag, data, age)
ORDER BY tag, age
ON CONFLICT (clan_tag) DO UPDATE
    SET data = EXCLUDED.data, fetched_at = EXCLUDED.fetched_at
    WHERE w.fetched_at <= EXCLUDED.fetched_at OR w.fetched_at > clock_timestamp();

-- name: insert_ledger_rows
-- Append ledger rows given as one JSON array of objects (one round trip for a whole batch, in
-- the array's order), all of one run.
INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, reason, detail, http_status, latency_ms)
SELECT r.request_id, %(run_id)s, r.kind, r.tag, r.outcome, r.reason, r.detail, r.http_status, r.latency_ms
FROM json_to_recordset(%(rows)s::json) AS r (
    request_id text, outcome text, kind text, tag text, reason text, detail text,
    http_status smallint, latency_ms integer
);

-- name: insert_run_summary
-- Record how a run ended, dated by Postgres's clock (now, and its duration before that), the
-- one clock every worker shares: a worker whose clock is off cannot make its run "the last
-- run" for health, nor misplace it among the ledger's rows. The summary keeps the worker's times.
-- A summary stashed in Redis by a run that lost Postgres is recorded late, by the next run: it
-- comes with its worker's times (%(started_at)s, %(finished_at)s; null otherwise), and may be
-- written twice (its commit in doubt): the first stands.
INSERT INTO refresh_run_summaries (run_id, started_at, finished_at, stopped, cause, summary)
VALUES (%(run_id)s,
        coalesce(%(started_at)s, clock_timestamp() - make_interval(secs => %(duration_s)s)),
        coalesce(%(finished_at)s, clock_timestamp()),
        %(stopped)s, %(cause)s, %(summary)s)
ON CONFLICT (run_id) DO NOTHING;

-- name: settled_requests
-- Which of these requests already have a settling row (`settling`: ledger.outcomes.SETTLING).
SELECT DISTINCT request_id
FROM refresh_ledger
WHERE request_id = ANY(%(ids)s) AND outcome = ANY(%(settling)s::text[]);

-- name: interruptions
-- How many runs attempted each request and died while it was in flight: they wrote no terminal
-- row for it and no summary of their own. A run that lived to record its summary (perhaps late,
-- through the Redis stash, when it had lost Postgres) left the request behind for a fault that
-- was not the request's: that does not count against it.
SELECT a.request_id, count(DISTINCT a.run_id) AS interrupted
FROM refresh_ledger a
WHERE a.request_id = ANY(%(ids)s)
  AND a.outcome = 'attempted'
  AND NOT EXISTS (
      SELECT 1 FROM refresh_ledger t
      WHERE t.request_id = a.request_id AND t.run_id = a.run_id AND t.outcome <> 'attempted'
  )
  AND NOT EXISTS (SELECT 1 FROM refresh_run_summaries s WHERE s.run_id = a.run_id)
GROUP BY a.request_id;

-- name: unexpected_errors
-- How many runs each request stopped with an unexpected error of its own (its `deferred` row
-- says `unexpected_error`; the rest of such a run's requests say `internal_error`).
SELECT request_id, count(DISTINCT run_id) AS runs
FROM refresh_ledger
WHERE request_id = ANY(%(ids)s) AND outcome = 'deferred' AND reason = 'unexpected_error'
GROUP BY request_id;

-- name: ping
-- Cheapest proof that Postgres answers.
SELECT 1 AS ok;

-- name: health
-- Ledger statistics for GET /health.
SELECT * FROM refresh_health;

-- name: ensure_partitions
-- Make today's and the next days' ledger partitions; returns how many were new.
SELECT refresh_ledger_ensure_partitions(%(days_ahead)s) AS created;

-- name: expired_partitions
-- The ledger partitions retention with this many days would drop.
SELECT * FROM refresh_ledger_expired_partitions(%(days)s);

-- name: drop_expired_partitions
-- Retention: drop every partition whose rows are all older than this many days.
SELECT * FROM refresh_ledger_drop_partitions_older_than(%(days)s);

-- name: list_partitions
-- Every ledger partition with its range, estimated rows and size; the default last.
SELECT partition::text AS partition, range_start, range_end, is_default, estimated_rows,
       pg_size_pretty(total_bytes) AS size
FROM refresh_ledger_partitions
ORDER BY is_default, range_start;

-- name: ledger_size
-- The ledger's size on disk (every partition with its indexes and TOAST) and estimated rows:
-- catalog statistics and file sizes, no scan, so cheap enough for every run.
SELECT coalesce(sum(total_bytes), 0)::bigint    AS total_bytes,
       coalesce(sum(estimated_rows), 0)::bigint AS estimated_rows,
       count(*)::int                            AS partitions
FROM refresh_ledger_partitions;
