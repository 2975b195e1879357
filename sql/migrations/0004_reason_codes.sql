-- 0004: reasons are codes, and Postgres holds the line.
--
-- A ledger row's `reason` and a run's `cause` are short codes (lower-case letters and
-- underscores: `not_found`, `maintenance`, `unstorable`, …); the human story goes in
-- `detail` (and, for a run, in its summary's `detail`). Free text in these columns would
-- break every audit query that groups by them, so Postgres refuses it from now on.
--
-- NOT VALID: rows written before this migration (when a lost lease wrote a sentence, and a
-- run's cause read "maintenance: the API is in maintenance (503)") stay as they are and are
-- not scanned; every new row, in every partition present or future, is checked.

ALTER TABLE refresh_ledger
    ADD CONSTRAINT refresh_ledger_reason_is_a_code CHECK (reason ~ '^[a-z_]+$') NOT VALID;

ALTER TABLE refresh_run_summaries
    ADD CONSTRAINT refresh_run_summaries_cause_is_a_code CHECK (cause ~ '^[a-z_]+$') NOT VALID;
