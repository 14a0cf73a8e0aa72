-- walletd's statements for one uniform debit, as the service runs them (scripts/bench.sh, workload sql):
-- the claim committed on its own, then the row-locked transaction with the entry, the event and the
-- stored answer, on walletd's schema with all its triggers. Ids come from bench_ids (made by bench.sh).
\set w random(1, :wallets)
\set k random(1, 9000000000000000)
SELECT id AS wid, tenant_id AS tid FROM bench_ids WHERE n = :w \gset
INSERT INTO idempotency_keys (tenant_id, idempotency_key, fingerprint, wallet_id, state, lease_token, lease_expires_at) VALUES (:tid, 'pgb-' || :client_id || '-' || :k, sha256(convert_to(:k::text, 'UTF8')), :wid, 'in_progress', gen_random_uuid(), now() + interval '30 s') ON CONFLICT DO NOTHING RETURNING lease_token \gset
BEGIN;
SELECT balance, held, version, last_seq, last_hash FROM wallets WHERE id = :wid AND tenant_id = :tid FOR UPDATE \gset
SELECT lease_token FROM idempotency_keys WHERE tenant_id = :tid AND idempotency_key = 'pgb-' || :client_id || '-' || :k AND state = 'in_progress' AND lease_token = :lease_token FOR UPDATE;
UPDATE wallets SET balance = balance - 0.01, version = version + 1, last_seq = last_seq + 1, last_hash = md5(:last_hash) || md5(:last_seq), updated_at = clock_timestamp() WHERE id = :wid RETURNING version AS v, last_hash AS h \gset
INSERT INTO ledger_entries (wallet_id, seq, id, tenant_id, entry_type, amount, currency, balance_before, balance_after, metadata, idempotency_key, created_at, prev_hash, hash) VALUES (:wid, :last_seq + 1, gen_random_uuid(), :tid, 'debit', 0.01, 'EUR', :balance, :balance - 0.01, '{}', 'pgb-' || :client_id || '-' || :k, clock_timestamp(), :last_hash, :h);
INSERT INTO outbox_events (wallet_id, wallet_version, event_id, tenant_id, event_type, payload, occurred_at) VALUES (:wid, :v, gen_random_uuid(), :tid, 'wallet.debited', repeat('x', 900), clock_timestamp());
UPDATE idempotency_keys SET state = 'completed', lease_token = NULL, lease_expires_at = NULL, response_status = 201, response_body = convert_to(repeat('y', 700), 'UTF8'), completed_at = now() WHERE tenant_id = :tid AND idempotency_key = 'pgb-' || :client_id || '-' || :k AND lease_token = :lease_token;
COMMIT;
