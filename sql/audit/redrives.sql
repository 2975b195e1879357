-- Redrives: what `python -m ledger redrive` re-queued, and what has become of it since.
--
-- One row per request a redrive acted on in [since, until): where it came from (`failed`: a
-- failed request selected from the ledger; `dead_letter`: an item of the dead-letter list),
-- its original failure, whether it was queued or a request for the same kind and tag was
-- already waiting, and the newest ledger row of the re-queued request (`latest_outcome`;
-- empty while it waits in the queue).
--
-- Parameters (psql -v NAME=VALUE, all optional):
--   since  start of the window, any timestamptz input     default: now() - 24 hours
--   until  end of the window (exclusive)                  default: now()
--
-- Example:
--   psql -X -v since='2026-11-28 12:00+00' -f sql/audit/redrives.sql "$DATABASE_URL"
\set ON_ERROR_STOP on
\if :{?since} \else \set since '' \endif
\if :{?until} \else \set until '' \endif

SELECT r.redriven_at, r.redrive_id, r.source, r.kind, r.tag, r.request_id, r.reason, r.failed_at,
       r.result, r.new_request_id, l.outcome AS latest_outcome, l.reason AS latest_reason,
       l.occurred_at AS latest_at
FROM refresh_redrives r
LEFT JOIN LATERAL (
    SELECT x.outcome, x.reason, x.occurred_at
    FROM refresh_ledger x
    WHERE x.request_id = r.new_request_id
    ORDER BY x.id DESC
    LIMIT 1
) l ON true
WHERE r.redriven_at >= coalesce(nullif(:'since', '')::timestamptz, now() - interval '24 hours')
  AND r.redriven_at < coalesce(nullif(:'until', '')::timestamptz, now())
ORDER BY r.redriven_at, r.id;
