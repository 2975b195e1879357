-- 0013: the unchanged fetches, indexed on their own for the refreshed_for_nothing audit.
--
-- The audit grouped every `fetched` and `skipped-fresh` row of its window by tag to keep the
-- few tags with unchanged fetches: 2 s for a day of 674,000 fetches (bench/ledger.md), sorted
-- to disk, and proportionally more at the full rate. It now starts from the unchanged fetches
-- alone (a small share once the freshness gate is on) through this partial index, and counts
-- the rest of each listed tag through the (tag, occurred_at) index. Only rows with `changed`
-- false enter it, so it costs the ledger's inserts little.
CREATE INDEX refresh_ledger_unchanged ON refresh_ledger (occurred_at) INCLUDE (kind, tag)
    WHERE outcome = 'fetched' AND NOT changed;
