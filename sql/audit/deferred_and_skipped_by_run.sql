-- Deferred and skipped-deadline volume per run: how much work each run handed back.
--
-- `deferred` (the circuit opened: maintenance, bad credentials, throttling, an outage)
-- and `skipped-deadline` (the run ran out of time) put requests back at the head of the
-- queue. One row per run in [since, until) that handed any back: its counts, the share of
-- what it took, and why it stopped. Many runs here with `deadline` mean the queue grows
-- faster than the rate limit drains it; `circuit_open` runs name their cause.
--
-- Parameters (psql -v NAME=VALUE, all optional):
--   since  start of the window, any timestamptz input     default: now() - 24 hours
--   until  end of the window (exclusive)                  default: now()
--
-- Example:
--   psql -X -v since='2026-11-28 06:00+00' -f sql/audit/deferred_and_skipped_by_run.sql "$DATABASE_URL"
\set ON_ERROR_STOP on
\if :{?since} \else \set since '' \endif
\if :{?until} \else \set until '' \endif

SELECT r.started_at, r.run_id, r.deferred, r.skipped_deadline,
       round((r.deferred + r.skipped_deadline)::numeric
             / nullif(r.fetched + r.failed + r.deferred + r.skipped_deadline, 0), 4) AS handed_back_share,
       r.fetched, r.failed, r.stopped, r.cause, r.finished_at
FROM refresh_runs_between(
         coalesce(nullif(:'since', '')::timestamptz, now() - interval '24 hours'),
         coalesce(nullif(:'until', '')::timestamptz, now())) r
WHERE r.deferred + r.skipped_deadline > 0
ORDER BY r.started_at, r.run_id;
