-- Failures in a window, by reason: what failed, how often, and an example of each.
--
-- One row per reason and kind of `failed` ledger rows in [since, until): how many rows,
-- requests and tags, the HTTP statuses seen, when it first and last happened, and the
-- newest tag and detail as an example. Failures are never retried, so this is the list of
-- refreshes that did not happen. Malformed queue items have no kind.
--
-- Parameters (psql -v NAME=VALUE, all optional):
--   since  start of the window, any timestamptz input     default: now() - 24 hours
--   until  end of the window (exclusive)                  default: now()
--   kind   only this kind: player, clan or war            default: every kind
--
-- Example:
--   psql -X -v since='2026-11-28 00:00+00' -v kind=war -f sql/audit/failures_by_reason.sql "$DATABASE_URL"
\set ON_ERROR_STOP on
\if :{?since} \else \set since '' \endif
\if :{?until} \else \set until '' \endif
\if :{?kind} \else \set kind '' \endif

-- The counts come from the failed-rows index alone; only each group's example is read
-- from the table (its newest failure).
WITH groups AS (
    SELECT f.reason,
           f.kind,
           count(*)                                                AS failures,
           count(DISTINCT f.request_id)                            AS requests,
           count(DISTINCT f.tag)                                   AS tags,
           array_to_string(array_agg(DISTINCT f.http_status), ',') AS http_statuses,
           min(f.occurred_at)                                      AS first_at,
           max(f.occurred_at)                                      AS last_at
    FROM refresh_ledger f
    WHERE f.outcome = 'failed'
      AND f.occurred_at >= coalesce(nullif(:'since', '')::timestamptz, now() - interval '24 hours')
      AND f.occurred_at < coalesce(nullif(:'until', '')::timestamptz, now())
      AND (:'kind' = '' OR f.kind = :'kind')
    GROUP BY f.reason, f.kind
)
SELECT g.reason, g.kind, g.failures, g.requests, g.tags, g.http_statuses, g.first_at, g.last_at,
       e.tag AS example_tag, e.detail AS example_detail
FROM groups g
LEFT JOIN LATERAL (
    SELECT l.tag, l.detail
    FROM refresh_ledger l
    WHERE l.outcome = 'failed' AND l.occurred_at = g.last_at
      AND l.reason = g.reason AND l.kind IS NOT DISTINCT FROM g.kind
    ORDER BY l.id DESC
    LIMIT 1
) e ON true
ORDER BY g.failures DESC, g.reason, g.kind;
