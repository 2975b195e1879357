-- Named queries, loaded once by coclib.sqlfiles.load_queries(): each starts with
-- `-- name: <name>` and a line saying what it does. Parameters are %(name)s, or %(name)b
-- for one psycopg must send in binary.

-- name: upsert_snapshots
-- Store one kind's snapshots in its table ({table}, keyed by {key}: filled in per kind by
-- coclib.snapshots.upsert_query), given as parallel arrays (one round trip for a whole batch),
-- unless a newer fetch is already stored; return each stored tag and whether its body changed.
-- DISTINCT ON: a statement may touch a row once. The arrays go in binary (%(data)b and the
-- rest): as a text array literal every quote in every body would be escaped, which costs ten
-- times the CPU of the rest of the write, and even tags and numbers cost three times as much.
-- `fetched_at` is on Postgres's clock, the one clock every worker shares: the worker sends each
-- body's age (seconds since its fetch, on its own clock) and the fetch time is now less that age.
-- A worker whose clock is off cannot date a snapshot in the future, where it would block every
-- correct fetch until that time; and one so dated earlier (a stored time ahead of Postgres's
-- clock cannot be true) is overwritten by the next fetch.
-- `fresh_until` is on the same clock: now() (the transaction's start, before this statement:
-- never later than the API's own expiry) plus the seconds the worker says are left
-- (`fresh_for`, measured on its monotonic clock; NULL: not fresh).
-- An unchanged body (same hash; a row without one counts as changed) keeps its stored `data`:
-- the new row version points at the same TOAST value, so the update writes a few hundred bytes
-- of WAL, not the body again (bench/freshness.md).
WITH s AS (
    SELECT DISTINCT ON (tag) tag, data, clock_timestamp() - make_interval(secs => age) AS fetched_at,
           fresh_for, data_hash
    FROM unnest(%(tag)b::text[], %(data)b::jsonb[], %(age)b::float8[], %(fresh_for)b::float8[],
                %(data_hash)b::bytea[]) AS s (tag, data, age, fresh_for, data_hash)
    ORDER BY tag, age
), stored AS (
    INSERT INTO {table} AS t ({key}, data, fetched_at, fresh_until, data_hash)
    SELECT tag, data, fetched_at, now() + make_interval(secs => fresh_for), data_hash FROM s
    ON CONFLICT ({key}) DO UPDATE
        SET data = CASE WHEN t.data_hash IS DISTINCT FROM EXCLUDED.data_hash THEN EXCLUDED.data ELSE t.data END,
            data_hash = EXCLUDED.data_hash,
            fetched_at = EXCLUDED.fetched_at,
            fresh_until = EXCLUDED.fresh_until
        WHERE t.fetched_at <= EXCLUDED.fetched_at OR t.fetched_at > clock_timestamp()
    RETURNING t.{key} AS tag
)
-- `before` reads the table as it was when the statement started (a data-modifying CTE's
-- changes are invisible to the rest of its statement): the hash each body is compared with.
SELECT stored.tag, before.data_hash IS DISTINCT FROM s.data_hash AS changed
FROM stored
JOIN s ON s.tag = stored.tag
LEFT JOIN {table} before ON before.{key} = stored.tag;

-- name: insert_ledger_rows
-- Append ledger rows given as one JSON array of objects (one round trip for a whole batch, in
-- the array's order), all of one run, and send the completion signal for the requests they
-- settle (coclib.completions): one NOTIFY refresh_done per payload, in order, from this
-- transaction, so delivered only if it commits. The same statement: a data-modifying WITH
-- always runs to completion, and the signal costs no round trip of its own.
WITH inserted AS (
    INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, reason, detail, http_status,
                                latency_ms, changed)
    SELECT r.request_id, %(run_id)s, r.kind, r.tag, r.outcome, r.reason, r.detail, r.http_status,
           r.latency_ms, r.changed
    FROM json_to_recordset(%(rows)s::json) AS r (
        request_id text, outcome text, kind text, tag text, reason text, detail text,
        http_status smallint, latency_ms integer, changed boolean
    )
)
SELECT pg_notify(%(channel)s, payload) FROM unnest(%(payloads)b::text[]) AS p (payload);

-- name: settled_by_id
-- The settling row of each of these requests that has one (the newest, were there two), for a
-- waiter that starts after its request may already have settled.
SELECT DISTINCT ON (request_id) request_id, kind, tag, outcome
FROM refresh_ledger
WHERE request_id = ANY(%(ids)s) AND outcome = ANY(%(settling)s)
ORDER BY request_id, id DESC;

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

-- name: fresh_snapshots
-- Which of these tags (per kind, parallel arrays) have a snapshot the API still serves from its
-- cache, and until when. One query for a group of requests; compared with Postgres's clock,
-- the same that wrote fresh_until, so no other clock can make a stale snapshot look fresh.
SELECT 'player' AS kind, tag, fresh_until
FROM players WHERE tag = ANY(%(players)b::text[]) AND fresh_until > now()
UNION ALL
SELECT 'clan', tag, fresh_until
FROM clans WHERE tag = ANY(%(clans)b::text[]) AND fresh_until > now()
UNION ALL
SELECT 'war', clan_tag, fresh_until
FROM wars WHERE clan_tag = ANY(%(wars)b::text[]) AND fresh_until > now();

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
WHERE request_id = ANY(%(ids)b::text[]) AND outcome = 'deferred' AND reason = 'unexpected_error'
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

-- name: redrivable_failures
-- Failed requests a redrive may re-queue: the newest failure of each kind and tag in
-- [since, until) with a reason in `reasons` and a kind in `kinds` (null: any), unless that
-- failure was redriven already or the tag settled otherwise since (`settling` minus failed:
-- its data is fresher than the failure). Malformed requests (no kind or tag) cannot be queued.
SELECT f.request_id, f.kind, f.tag, f.reason, f.occurred_at AS failed_at
FROM (
    SELECT DISTINCT ON (l.kind, l.tag) l.id, l.request_id, l.kind, l.tag, l.reason, l.occurred_at
    FROM refresh_ledger l
    WHERE l.outcome = 'failed' AND l.kind IS NOT NULL AND l.tag IS NOT NULL
      AND l.occurred_at >= %(since)s::timestamptz AND l.occurred_at < %(until)s::timestamptz
      AND (%(reasons)s::text[] IS NULL OR l.reason = ANY(%(reasons)s::text[]))
      AND (%(kinds)s::text[] IS NULL OR l.kind = ANY(%(kinds)s::text[]))
    ORDER BY l.kind, l.tag, l.occurred_at DESC, l.id DESC
) f
WHERE NOT EXISTS (SELECT 1 FROM refresh_redrives r WHERE r.request_id = f.request_id)
  AND NOT EXISTS (
      SELECT 1 FROM refresh_ledger s
      WHERE s.tag = f.tag AND s.kind = f.kind AND s.occurred_at >= f.occurred_at AND s.id <> f.id
        AND s.outcome = ANY(%(settling)s::text[]) AND s.outcome <> 'failed'
  )
ORDER BY f.occurred_at, f.request_id;

-- name: insert_redrives
-- Record what a redrive did, one row per request, given as parallel arrays.
INSERT INTO refresh_redrives (redrive_id, source, request_id, kind, tag, reason, failed_at, result,
                              new_request_id, payload, selection)
SELECT %(redrive_id)s, s.source, s.request_id, s.kind, s.tag, s.reason, s.failed_at, s.result,
       s.new_request_id, s.payload, %(selection)s
FROM unnest(%(source)s::text[], %(request_id)s::text[], %(kind)s::text[], %(tag)s::text[],
            %(reason)s::text[], %(failed_at)s::timestamptz[], %(result)s::text[],
            %(new_request_id)s::text[], %(payload)s::text[])
     AS s (source, request_id, kind, tag, reason, failed_at, result, new_request_id, payload);
