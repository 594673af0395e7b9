-- Named policies (docs/policies.md): a check that named a policy records its name, and
-- `limit`/`window` are those of the policy's window that decided.  `shadow` marks a policy
-- in shadow mode: the caller was answered allowed, and `allowed`/`reason` keep what the
-- policy decided, so an analyst sees what enforcing it would deny before switching it on:
--   SELECT policy, countIf(NOT allowed) FROM ratewatch.decisions WHERE shadow GROUP BY policy
-- Checks that named no policy, and rows written before this migration, have policy = ''.

ALTER TABLE ratewatch.decisions
    ADD COLUMN IF NOT EXISTS policy LowCardinality(String) DEFAULT '' AFTER segment;

ALTER TABLE ratewatch.decisions
    ADD COLUMN IF NOT EXISTS shadow Bool DEFAULT false AFTER policy;
