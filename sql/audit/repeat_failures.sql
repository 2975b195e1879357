-- Tags failing repeatedly: the same tag failed at least `min_failures` times in a window.
--
-- A tag that keeps failing (deleted player, private war log, a typo a producer keeps
-- sending) costs an API call every time it is queued. One row per kind and tag with at
-- least `min_failures` failed rows in [since, until): how many, in how many runs, with
-- which reasons, when, the newest detail, and when its snapshot was last stored (if ever).
--
-- Parameters (psql -v NAME=VALUE, all optional):
--   since         start of the window, any timestamptz input   default: now() - 24 hours
--   until         end of the window (exclusive)                default: now()
--   min_failures  the least number of failures to list          default: 3
--
-- Example:
--   psql -X -v min_failures=5 -f sql/audit/repeat_failures.sql "$DATABASE_URL"
\set ON_ERROR_STOP on
\if :{?since} \else \set since '' \endif
\if :{?until} \else \set until '' \endif
\if :{?min_failures} \else \set min_failures 3 \endif

-- Grouped from the failed-rows index alone; the detail is read for the tags listed only.
WITH failures AS (
    SELECT f.kind, f.tag,
           count(*)                                           AS failures,
           count(DISTINCT f.run_id)                           AS runs,
           array_to_string(array_agg(DISTINCT f.reason), ',') AS reasons,
           min(f.occurred_at)                                 AS first_failed_at,
           max(f.occurred_at)                                 AS last_failed_at
    FROM refresh_ledger f
    WHERE f.outcome = 'failed'
      AND f.tag IS NOT NULL
      AND f.occurred_at >= coalesce(nullif(:'since', '')::timestamptz, now() - interval '24 hours')
      AND f.occurred_at < coalesce(nullif(:'until', '')::timestamptz, now())
    GROUP BY f.kind, f.tag
    HAVING count(*) >= :'min_failures'::integer
)
SELECT f.kind, f.tag, f.failures, f.runs, f.reasons, f.first_failed_at, f.last_failed_at,
       CASE f.kind
           WHEN 'player' THEN (SELECT p.fetched_at FROM players p WHERE p.tag = f.tag)
           WHEN 'clan' THEN (SELECT c.fetched_at FROM clans c WHERE c.tag = f.tag)
           WHEN 'war' THEN (SELECT w.fetched_at FROM wars w WHERE w.clan_tag = f.tag)
       END AS snapshot_fetched_at,
       d.detail AS last_detail
FROM failures f
LEFT JOIN LATERAL (
    SELECT l.detail
    FROM refresh_ledger l
    WHERE l.outcome = 'failed' AND l.occurred_at = f.last_failed_at AND l.tag = f.tag
    ORDER BY l.id DESC
    LIMIT 1
) d ON true
ORDER BY f.failures DESC, f.last_failed_at DESC, f.tag;
