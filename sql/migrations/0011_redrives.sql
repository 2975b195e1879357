-- 0011: the record of redrives (`python -m ledger redrive`).
--
-- A redrive re-queues failed requests (selected from the ledger by reason, kind and time) and
-- items of the dead-letter list. The ledger's outcomes stay as they are (a failed request
-- stays failed; the re-queued one is a new request with an id of its own and rows of its own);
-- this table links the two, one row per request the redrive acted on, written in the
-- transaction that ends the redrive. Append-only, like the ledger.

CREATE TABLE refresh_redrives (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    redrive_id      uuid        NOT NULL,  -- one per command
    redriven_at     timestamptz NOT NULL DEFAULT now(),
    source          text        NOT NULL CHECK (source IN ('failed', 'dead_letter')),
    request_id      text        NOT NULL,  -- the failed request, or the dead-lettered item's id
    kind            text,
    tag             text,
    reason          text,                  -- why it failed (source failed)
    failed_at       timestamptz,           -- when it failed (source failed)
    result          text        NOT NULL CHECK (result IN ('queued', 'already_queued')),
    new_request_id  text,                  -- the id it was queued under; null if already queued
    payload         text,                  -- a dead-lettered item's start, as the ledger's detail shows it
    selection       jsonb       NOT NULL   -- the command's filters, for the audit
);
CREATE INDEX refresh_redrives_request ON refresh_redrives (request_id);
CREATE INDEX refresh_redrives_redriven_at ON refresh_redrives (redriven_at);

CREATE TRIGGER refresh_redrives_append_only
    BEFORE UPDATE OR DELETE ON refresh_redrives
    FOR EACH ROW EXECUTE FUNCTION refresh_reject_change();
CREATE TRIGGER refresh_redrives_no_truncate
    BEFORE TRUNCATE ON refresh_redrives
    FOR EACH STATEMENT EXECUTE FUNCTION refresh_reject_change();
