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
--   min_unchanged  the least number of unchanged fetches to list default: 2
--
-- Example:
--   psql -X -v min_unchanged=10 -f sql/audit/refreshed_for_nothing.sql "$DATABASE_URL"
\set ON_ERROR_STOP on
\if :{?since} \else \set since '' \endif
\if :{?until} \else \set until '' \endif
\if :{?min_unchanged} \else \set min_unchanged 2 \endif

-- The window reaches the ledger through its (tag, occurred_at) index per tag listed, and
-- through the occurred_at index for the grouping.
WITH tags AS (
    SELECT l.kind, l.tag,
           count(*) FILTER (WHERE l.outcome = 'fetched')                     AS fetches,
           count(*) FILTER (WHERE l.outcome = 'fetched' AND NOT l.changed)   AS unchanged,
           count(*) FILTER (WHERE l.outcome = 'skipped-fresh')               AS skipped_fresh,
           max(l.occurred_at) FILTER (WHERE l.outcome = 'fetched' AND l.changed) AS last_changed_at
    FROM refresh_ledger l
    WHERE l.outcome IN ('fetched', 'skipped-fresh')
      AND l.tag IS NOT NULL
      AND l.occurred_at >= coalesce(nullif(:'since', '')::timestamptz, now() - interval '24 hours')
      AND l.occurred_at < coalesce(nullif(:'until', '')::timestamptz, now())
    GROUP BY l.kind, l.tag
)
SELECT t.kind, t.tag, t.fetches, t.unchanged,
       round(t.unchanged::numeric / nullif(t.fetches, 0), 4) AS unchanged_share,
       t.skipped_fresh, t.last_changed_at
FROM tags t
WHERE t.unchanged >= :'min_unchanged'::integer
ORDER BY t.unchanged DESC, t.fetches DESC, t.tag;
