-- Tags refreshed most often for nothing: calls that brought back the body already stored.
--
-- A `fetched` row whose `changed` is false spent an API call (a 30-per-second budget) on a body
-- identical to the stored one; a `skipped-fresh` row is a request the freshness gate settled
-- without a call because the stored body was still inside the API's max-age. A tag high on this
-- list is requested far more often than it changes: its producer could ask less often. One row
-- per kind and tag with at least `min_unchanged` unchanged fetches in [since, until): how many
-- fetches, how many of them unchanged (and their share), how many requests were skipped as
-- fresh, and when its body last changed within the window.
--
-- Parameters (psql -v NAME=VALUE, all optional):
--   since          start of the window, any timestamptz input   default: now() - 24 hours
--   until          end of the window (exclusive)                default: now()
--   min_unchanged  the least number of unchanged fetches to list default: 2 (below 1: 1)
--
-- Example:
--   psql -X -v min_unchanged=10 -f sql/audit/refreshed_for_nothing.sql "$DATABASE_URL"
\set ON_ERROR_STOP on
\if :{?since} \else \set since '' \endif
\if :{?until} \else \set until '' \endif
\if :{?min_unchanged} \else \set min_unchanged 2 \endif

-- The tags with enough unchanged fetches come from the partial index of unchanged fetches
-- (migration 0013); each listed tag's other counts from the (tag, occurred_at) index. The
-- bounds are written out in each scan, not joined in, so that each is pruned to the window's
-- partitions.
WITH unchanged AS (
    SELECT l.kind, l.tag, count(*) AS unchanged
    FROM refresh_ledger l
    WHERE l.outcome = 'fetched' AND NOT l.changed
      AND l.tag IS NOT NULL
      AND l.occurred_at >= coalesce(nullif(:'since', '')::timestamptz, now() - interval '24 hours')
      AND l.occurred_at < coalesce(nullif(:'until', '')::timestamptz, now())
    GROUP BY l.kind, l.tag
    HAVING count(*) >= :'min_unchanged'::integer
)
SELECT u.kind, u.tag, c.fetches, u.unchanged,
       round(u.unchanged::numeric / nullif(c.fetches, 0), 4) AS unchanged_share,
       c.skipped_fresh, c.last_changed_at
FROM unchanged u
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE l.outcome = 'fetched')                     AS fetches,
           count(*) FILTER (WHERE l.outcome = 'skipped-fresh')               AS skipped_fresh,
           max(l.occurred_at) FILTER (WHERE l.outcome = 'fetched' AND l.changed) AS last_changed_at
    FROM refresh_ledger l
    WHERE l.tag = u.tag AND l.kind = u.kind
      AND l.outcome IN ('fetched', 'skipped-fresh')
      AND l.occurred_at >= coalesce(nullif(:'since', '')::timestamptz, now() - interval '24 hours')
      AND l.occurred_at < coalesce(nullif(:'until', '')::timestamptz, now())
) c
ORDER BY u.unchanged DESC, c.fetches DESC, u.tag;
