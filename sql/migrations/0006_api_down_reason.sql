-- 0006: the reason `upstream` is now `api_down`.
--
-- `upstream` (the circuit opened because several different requests in a row met timeouts,
-- 5xx or cut connections: the API is down) sat beside `upstream_error` (one request's 5xx),
-- and the two were easy to mistake for each other, in SQL (`reason LIKE 'upstream%'`) as in
-- code. New rows say `api_down`; both still pass the CHECKs of 0004 (lower-case letters and
-- underscores), so nothing here touches a constraint.
--
-- Rows already written keep `upstream`: refresh_ledger and refresh_run_summaries are
-- append-only (Postgres refuses UPDATE on them), and a record is not rewritten to suit a new
-- name. A worker still running the old code during a deploy may also write a few more. A
-- query over both sides of the rename asks for `reason IN ('api_down', 'upstream')`; the
-- columns say so to whoever reads the schema.

COMMENT ON COLUMN refresh_ledger.reason IS
    'Why a row other than attempted or fetched ended as it did: a code of coclib.reasons.Reason. '
    'api_down was written upstream before migration 0006; such rows are kept as written.';

COMMENT ON COLUMN refresh_run_summaries.cause IS
    'Why a run stopped early: a code of coclib.reasons.Reason. '
    'api_down was written upstream before migration 0006; such rows are kept as written.';
