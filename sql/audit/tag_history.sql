-- The full history of one tag: every ledger row that names it, oldest first.
--
-- Every attempt and outcome for the tag across all retained partitions, with the run and
-- request it belonged to, so a question like "why is this player's profile stale?" can be
-- answered row by row. The tag is normalised the CoC way (upper case, O -> 0, leading #),
-- so `-v tag=2pp` finds #2PP. With `limit`, only the newest N rows (still oldest first).
--
-- Parameters (psql -v NAME=VALUE):
--   tag    the player or clan tag (required; a war is kept under its clan's tag)
--   kind   only this kind: player, clan or war            default: every kind
--   limit  at most this many of the newest rows           default: all of them
--
-- Example:
--   psql -X -v tag='#2PP' -f sql/audit/tag_history.sql "$DATABASE_URL"
\set ON_ERROR_STOP on
\if :{?tag}
\else
DO $$ BEGIN RAISE EXCEPTION 'tag_history.sql needs a tag: psql -v tag=''#2PP'' -f sql/audit/tag_history.sql'; END $$;
\endif
\if :{?kind} \else \set kind '' \endif
\if :{?limit} \else \set limit '' \endif

SELECT h.occurred_at, h.kind, h.outcome, h.reason, h.http_status, h.latency_ms,
       h.run_id, h.request_id, h.detail
FROM (
    SELECT l.*
    FROM refresh_ledger l
    WHERE l.tag = '#' || translate(upper(ltrim(btrim(:'tag'), '#')), 'O', '0')
      AND (:'kind' = '' OR l.kind = :'kind')
    ORDER BY l.occurred_at DESC, l.id DESC
    LIMIT nullif(:'limit', '')::integer
) h
ORDER BY h.occurred_at, h.id;
