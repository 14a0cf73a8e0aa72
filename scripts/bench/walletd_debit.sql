-- walletd's statements for one uniform debit, as the service runs them (scripts/bench.sh, workload
-- sql): one row-locked transaction with the wallet update, the entry (its id the key's result id),
-- the event and the key's row holding the stored answer, on walletd's schema with all its triggers
-- and CHECKs, one commit. Ids come from bench_ids (made by bench.sh). Layer 1's Redis marker and the
-- Redis lock are not here: this is the Postgres share of a debit.
\set w random(1, :wallets)
\set k random(1, 9000000000000000)
SELECT id AS wid, tenant_id AS tid FROM bench_ids WHERE n = :w \gset
BEGIN;
SELECT balance, held, version, last_seq, last_hash FROM wallets WHERE id = :wid AND tenant_id = :tid FOR UPDATE \gset
UPDATE wallets SET balance = balance - 0.01, version = version + 1, last_seq = last_seq + 1, last_hash = md5(:last_hash) || md5(:last_seq), updated_at = now() WHERE id = :wid RETURNING version AS v, last_hash AS h \gset
INSERT INTO ledger_entries (wallet_id, seq, id, tenant_id, entry_type, amount, currency, balance_before, balance_after, metadata, idempotency_key, created_at, prev_hash, hash) VALUES (:wid, :last_seq + 1, walletd_result_id(:tid, 'pgb-' || :client_id || '-' || :k), :tid, 'debit', 0.01, 'EUR', :balance, :balance - 0.01, '{}', 'pgb-' || :client_id || '-' || :k, now(), :last_hash, :h);
INSERT INTO outbox_events (wallet_id, wallet_version, event_id, tenant_id, event_type, payload, occurred_at) VALUES (:wid, :v, gen_random_uuid(), :tid, 'wallet.debited', repeat('x', 900), now());
INSERT INTO idempotency_keys (result_id, tenant_id, idempotency_key, fingerprint, wallet_id, state, response_status, response_body, created_at, completed_at) VALUES (walletd_result_id(:tid, 'pgb-' || :client_id || '-' || :k), :tid, 'pgb-' || :client_id || '-' || :k, sha256(convert_to(:k::text, 'UTF8')), :wid, 'completed', 201, convert_to(repeat('y', 700), 'UTF8'), now(), now());
COMMIT;
