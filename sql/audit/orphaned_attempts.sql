-- Orphaned attempts: requests whose API call was made and then nothing was ever recorded.
--
-- An `attempted` row in [since, until), older than the grace period, with no terminal row
-- (fetched, failed, skipped-deadline, deferred) for the same request at or after it: the
-- process died between the call and the commit (Lambda timeout, OOM, kill). The next run
-- requeues such requests, so a row here that stays here means one was lost. Same rows as
-- the view refresh_orphaned_attempts over the window, read from refresh_open_attempts (the
-- attempts nothing has settled yet, kept by a trigger: sql/migrations/0012).
--
-- Parameters (psql -v NAME=VALUE, all optional):
--   since  start of the window, any timestamptz input     default: now() - 24 hours
--   until  end of the window (exclusive)                  default: now()
--   grace  attempts younger than this are still running   default: 10 minutes
--
-- Example:
--   psql -X -v since='2026-11-27' -v grace='30 minutes' -f sql/audit/orphaned_attempts.sql "$DATABASE_URL"
\set ON_ERROR_STOP on
\if :{?since} \else \set since '' \endif
\if :{?until} \else \set until '' \endif
\if :{?grace} \else \set grace '10 minutes' \endif

SELECT o.occurred_at, o.kind, o.tag, o.request_id, o.run_id,
       date_trunc('second', now() - o.occurred_at) AS age,
       (SELECT count(*) FROM refresh_ledger l
        WHERE l.request_id = o.request_id AND l.outcome = 'attempted') AS attempts_of_request
FROM refresh_orphaned_attempts_between(
         coalesce(nullif(:'since', '')::timestamptz, now() - interval '24 hours'),
         coalesce(nullif(:'until', '')::timestamptz, now()),
         :'grace'::interval) o
ORDER BY o.occurred_at, o.request_id;
