-- API calls per minute against the rate limit.
--
-- Every `attempted` row is one call to the Clash of Clans API, so attempted rows per UTC
-- minute are the calls the API saw. One row per minute with any call in [since, until):
-- the calls, their share of the limit (reqs_per_sec * 60), and the runs that made them.
-- A share above 1 is a breach of COC_REQS_PER_SEC; the API answers those with 429s.
--
-- Parameters (psql -v NAME=VALUE, all optional):
--   since         start of the window, any timestamptz input   default: now() - 24 hours
--   until         end of the window (exclusive)                default: now()
--   reqs_per_sec  the limit to compare with (COC_REQS_PER_SEC) default: 30, the maximum
--
-- Example:
--   psql -X -v reqs_per_sec=10 -f sql/audit/api_calls_per_minute.sql "$DATABASE_URL"
\set ON_ERROR_STOP on
\if :{?since} \else \set since '' \endif
\if :{?until} \else \set until '' \endif
\if :{?reqs_per_sec} \else \set reqs_per_sec 30 \endif

-- Counted from refresh_ledger_minutes, which a trigger keeps equal to the ledger's rows.
SELECT m.minute,
       sum(m.rows)                                                  AS calls,
       round(sum(m.rows) / 60.0, 2)                                 AS calls_per_sec,
       round(:'reqs_per_sec'::numeric * 60)                         AS limit_per_minute,
       round(sum(m.rows) / (:'reqs_per_sec'::numeric * 60), 4)      AS share_of_limit,
       count(DISTINCT m.run_id)                                     AS runs
FROM refresh_ledger_minutes m
WHERE m.outcome = 'attempted'
  AND m.minute >= date_bin('1 minute',
                           coalesce(nullif(:'since', '')::timestamptz, now() - interval '24 hours'),
                           timestamptz '2000-01-01 00:00:00+00')
  AND m.minute < coalesce(nullif(:'until', '')::timestamptz, now())
GROUP BY m.minute
ORDER BY m.minute;
