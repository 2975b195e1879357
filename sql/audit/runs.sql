-- Runs in a window: one row per run with its counts per outcome and why it stopped.
--
-- Every run with a ledger row or a summary in [since, until), from the refresh_runs view's
-- function. `stopped` is empty for a run that wrote no summary: it died (look for orphaned
-- attempts) or is still running.
--
-- Parameters (psql -v NAME=VALUE, all optional):
--   since  start of the window, any timestamptz input     default: now() - 24 hours
--   until  end of the window (exclusive)                  default: now()
--
-- Example:
--   psql -X -v since='2026-11-28 12:00+00' -f sql/audit/runs.sql "$DATABASE_URL"
\set ON_ERROR_STOP on
\if :{?since} \else \set since '' \endif
\if :{?until} \else \set until '' \endif

SELECT r.started_at, r.finished_at, r.run_id, r.stopped, r.attempted, r.fetched, r.failed,
       r.skipped_deadline, r.deferred, r.skipped_fresh, r.api_requests, r.cause, r.took_over_from
FROM refresh_runs_between(
         coalesce(nullif(:'since', '')::timestamptz, now() - interval '24 hours'),
         coalesce(nullif(:'until', '')::timestamptz, now())) r
ORDER BY r.started_at NULLS LAST, r.run_id;
