-- Snapshot freshness: how old the stored players, clans and wars are, in age buckets.
--
-- One row per kind and age bucket (under 5 minutes, 1 hour, 6 hours, 1 day, 7 days, and
-- older) that holds any snapshot: how many, their share of the kind, and the oldest of
-- them. Old buckets that grow mean producers ask for refreshes the worker does not get to,
-- or tags that now fail.
--
-- Parameters: none.
--
-- Example:
--   psql -X -f sql/audit/snapshot_freshness.sql "$DATABASE_URL"
\set ON_ERROR_STOP on

-- Each bucket is a range of fetched_at: counted from the fetched_at indexes, row by row
-- only inside the index.
WITH buckets (bucket, age, newer_than, at_most) AS (
    VALUES (1, '< 5 minutes', now() - interval '5 minutes', 'infinity'::timestamptz),
           (2, '< 1 hour',    now() - interval '1 hour',    now() - interval '5 minutes'),
           (3, '< 6 hours',   now() - interval '6 hours',   now() - interval '1 hour'),
           (4, '< 1 day',     now() - interval '1 day',     now() - interval '6 hours'),
           (5, '< 7 days',    now() - interval '7 days',    now() - interval '1 day'),
           (6, '>= 7 days',   '-infinity'::timestamptz,     now() - interval '7 days')
), counted AS (
    SELECT s.kind, b.bucket, b.age, s.snapshots, s.oldest_fetched_at
    FROM buckets b
    CROSS JOIN LATERAL (
        SELECT 'player' AS kind, count(*) AS snapshots, min(fetched_at) AS oldest_fetched_at
        FROM players WHERE fetched_at > b.newer_than AND fetched_at <= b.at_most
        UNION ALL
        SELECT 'clan', count(*), min(fetched_at)
        FROM clans WHERE fetched_at > b.newer_than AND fetched_at <= b.at_most
        UNION ALL
        SELECT 'war', count(*), min(fetched_at)
        FROM wars WHERE fetched_at > b.newer_than AND fetched_at <= b.at_most
    ) s
)
SELECT kind, age, snapshots,
       round(100.0 * snapshots / sum(snapshots) OVER (PARTITION BY kind), 1) AS percent_of_kind,
       oldest_fetched_at
FROM counted
WHERE snapshots > 0
ORDER BY kind, bucket;
