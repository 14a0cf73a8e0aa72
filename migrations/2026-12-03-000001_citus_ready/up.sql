-- Ready for Citus by construction (docs/scale-out.md), and one commit per request.
--
-- 1. Idempotency keys are keyed by a result id derived from (tenant, key) alone, so that the
--    key table can be distributed by its own key, apart from the wallets: a debit then touches
--    its wallet's shard and one key shard, and no foreign key crosses the two. The id is also
--    the id of what the request produces (its ledger entry, its hold), so a lookup by
--    transaction or hold id finds its wallet in one probe of the key table instead of visiting
--    every wallet. The database checks that the id is the one derived from the key, so
--    "one row per (tenant, key)" is still the primary key's rule.
-- 2. A key row is written once, with its answer, in the transaction of the effect it answers
--    for: no in-flight marker row, no second commit. (The marker that makes a twin answer 409
--    while the first request runs lives in Redis now; the database stays the guard: a second
--    row for a key is a primary-key violation, and the loser's whole transaction rolls back.)
-- 3. The ledger's foreign key to the key table goes (Citus allows keys only between colocated
--    tables or to reference tables). "At most one entry per key" is kept by the ledger's own
--    unique key (wallet_id, idempotency_key), by the key row committing in the same
--    transaction as the entry, and by the deferred check below (on one Postgres; dropped when
--    distributing, see docs/scale-out.md).
-- 4. No volatile function in what a write to a wallet-scoped table computes: times are bound by
--    the service, defaults that remain are stable (now(), the transaction's start).
--
-- In-flight markers of the old schema are deleted: run this with the service stopped (a
-- request in flight on an old replica would fail to store its answer, roll back and answer
-- 5xx, so its client retries; nothing is charged twice).

-- The result id: SHA-256 over a label, the tenant id's 16 bytes and the key's bytes, first 16
-- bytes, stamped as a version 8 (custom) RFC 9562 UUID. src/domain/idempotency_key.rs computes the same.
CREATE FUNCTION walletd_result_id(tenant uuid, key text) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT encode(
        set_byte(set_byte(d, 6, (get_byte(d, 6) & 15) | 128), 8, (get_byte(d, 8) & 63) | 128),
        'hex')::uuid
    FROM (SELECT substring(sha256(convert_to('walletd-result-id', 'UTF8') || uuid_send(tenant)
                                  || convert_to(key, 'UTF8')) FROM 1 FOR 16) AS d) AS digest
$$;

DROP TRIGGER idempotency_keys_only_forward ON idempotency_keys;
DROP FUNCTION idempotency_keys_only_forward();
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_key;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_wallet;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_state_shape;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_state_check;
DELETE FROM idempotency_keys WHERE state = 'in_progress';

ALTER TABLE idempotency_keys ADD COLUMN result_id uuid;
UPDATE idempotency_keys SET result_id = walletd_result_id(tenant_id, idempotency_key);
ALTER TABLE idempotency_keys ALTER COLUMN result_id SET NOT NULL;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (result_id);
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_result_id_derived
    CHECK (result_id = walletd_result_id(tenant_id, idempotency_key));
ALTER TABLE idempotency_keys DROP COLUMN lease_token;
ALTER TABLE idempotency_keys DROP COLUMN lease_expires_at;
ALTER TABLE idempotency_keys ALTER COLUMN created_at DROP DEFAULT;
ALTER TABLE idempotency_keys ALTER COLUMN response_status SET NOT NULL;
ALTER TABLE idempotency_keys ALTER COLUMN completed_at SET NOT NULL;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_state_check
    CHECK (state IN ('completed', 'expired'));
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_state_shape CHECK (
    (state = 'completed' AND response_body IS NOT NULL AND expired_at IS NULL)
    OR (state = 'expired' AND response_body IS NULL AND expired_at IS NOT NULL));

-- A key's life only moves forward (completed -> expired, its answer dropped), nothing else in
-- it changes, and a key row is never deleted: a very late retry must find it.
CREATE FUNCTION idempotency_keys_only_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'idempotency key % is kept forever: DELETE refused', OLD.idempotency_key
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.result_id <> OLD.result_id OR NEW.tenant_id <> OLD.tenant_id
       OR NEW.idempotency_key <> OLD.idempotency_key OR NEW.fingerprint <> OLD.fingerprint
       OR NEW.wallet_id IS DISTINCT FROM OLD.wallet_id
       OR NEW.response_status <> OLD.response_status OR NEW.created_at <> OLD.created_at
       OR NEW.completed_at <> OLD.completed_at THEN
        RAISE EXCEPTION 'idempotency key %: only its state, body and expiry change',
            OLD.idempotency_key USING ERRCODE = 'restrict_violation';
    END IF;
    IF NOT (OLD.state = 'completed' AND NEW.state = 'expired') THEN
        RAISE EXCEPTION 'idempotency key %: % -> % is not allowed',
            OLD.idempotency_key, OLD.state, NEW.state USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER idempotency_keys_only_forward
    BEFORE UPDATE OR DELETE ON idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION idempotency_keys_only_forward();

-- The safety net under the claim (one Postgres only): by commit, an entry's key row exists and
-- names the entry's wallet. Deferred, because the key row is written after the entry.
CREATE FUNCTION ledger_entries_check_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM idempotency_keys
     WHERE result_id = walletd_result_id(NEW.tenant_id, NEW.idempotency_key)
       AND tenant_id = NEW.tenant_id AND wallet_id = NEW.wallet_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ledger entry % of wallet % has no idempotency key % naming its wallet',
            NEW.id, NEW.wallet_id, NEW.idempotency_key USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER ledger_entries_key_recorded
    AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_check_key();

-- Entries and holds written before this migration have ids that are not their key's result
-- id: their wallets are found here (read-only; nothing is added after this migration).
CREATE TABLE routes_before_result_ids (
    id         uuid NOT NULL PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    wallet_id  uuid NOT NULL
);
INSERT INTO routes_before_result_ids (id, tenant_id, wallet_id)
SELECT id, tenant_id, wallet_id FROM ledger_entries
 WHERE id <> walletd_result_id(tenant_id, idempotency_key)
UNION ALL
SELECT id, tenant_id, wallet_id FROM holds
 WHERE id <> walletd_result_id(tenant_id, idempotency_key);

-- Lookups by id go through the key table (or the routes above) to the wallet, then by
-- (wallet_id, id): these indexes by id alone are no longer read.
DROP INDEX ledger_entries_by_id;
DROP INDEX holds_by_id;

-- Times are bound by the service; what stays a default is stable, never clock_timestamp().
ALTER TABLE wallets ALTER COLUMN created_at DROP DEFAULT;
ALTER TABLE wallets ALTER COLUMN updated_at DROP DEFAULT;
ALTER TABLE ledger_entries ALTER COLUMN created_at DROP DEFAULT;
ALTER TABLE tenants ALTER COLUMN created_at SET DEFAULT now();
ALTER TABLE api_keys ALTER COLUMN created_at SET DEFAULT now();
