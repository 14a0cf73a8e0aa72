DROP TABLE ledger_entries;
DROP FUNCTION ledger_entries_check_chain();
DROP FUNCTION ledger_entries_refuse_change();
DROP TABLE idempotency_keys;
DROP TABLE wallets;
DROP FUNCTION wallets_check_ledger();
DROP TABLE api_keys;
DROP TABLE tenants;
