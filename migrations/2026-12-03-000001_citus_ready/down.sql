-- Back to in-flight marker rows keyed by (tenant_id, idempotency_key) and the ledger's foreign
-- key to them. Ids already derived from keys stay as they are (they are valid UUIDs).
ALTER TABLE tenants ALTER COLUMN created_at SET DEFAULT clock_timestamp();
ALTER TABLE api_keys ALTER COLUMN created_at SET DEFAULT clock_timestamp();
ALTER TABLE ledger_entries ALTER COLUMN created_at SET DEFAULT clock_timestamp();
ALTER TABLE wallets ALTER COLUMN updated_at SET DEFAULT clock_timestamp();
ALTER TABLE wallets ALTER COLUMN created_at SET DEFAULT clock_timestamp();

CREATE INDEX holds_by_id ON holds (id);
CREATE INDEX ledger_entries_by_id ON ledger_entries (id);
DROP TABLE routes_before_result_ids;

DROP TRIGGER ledger_entries_key_recorded ON ledger_entries;
DROP FUNCTION ledger_entries_check_key();
DROP TRIGGER idempotency_keys_only_forward ON idempotency_keys;
DROP FUNCTION idempotency_keys_only_forward();

ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_state_shape;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_state_check;
ALTER TABLE idempotency_keys ALTER COLUMN completed_at DROP NOT NULL;
ALTER TABLE idempotency_keys ALTER COLUMN response_status DROP NOT NULL;
ALTER TABLE idempotency_keys ALTER COLUMN created_at SET DEFAULT clock_timestamp();
ALTER TABLE idempotency_keys ADD COLUMN lease_token uuid;
ALTER TABLE idempotency_keys ADD COLUMN lease_expires_at timestamptz;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_result_id_derived;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (tenant_id, idempotency_key);
ALTER TABLE idempotency_keys DROP COLUMN result_id;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_state_check
    CHECK (state IN ('in_progress', 'completed', 'expired'));
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_state_shape CHECK (
    (state = 'in_progress' AND lease_token IS NOT NULL AND lease_expires_at IS NOT NULL
        AND response_status IS NULL AND response_body IS NULL AND completed_at IS NULL
        AND expired_at IS NULL)
    OR (state = 'completed' AND lease_token IS NULL AND lease_expires_at IS NULL
        AND response_status IS NOT NULL AND response_body IS NOT NULL
        AND completed_at IS NOT NULL AND expired_at IS NULL)
    OR (state = 'expired' AND lease_token IS NULL AND lease_expires_at IS NULL
        AND response_status IS NOT NULL AND response_body IS NULL
        AND completed_at IS NOT NULL AND expired_at IS NOT NULL));
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_wallet
    UNIQUE (tenant_id, idempotency_key, wallet_id);
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_key
    FOREIGN KEY (tenant_id, idempotency_key, wallet_id)
    REFERENCES idempotency_keys (tenant_id, idempotency_key, wallet_id);

CREATE FUNCTION idempotency_keys_only_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.state <> 'in_progress' THEN
            RAISE EXCEPTION 'idempotency key % is %: only an in-flight marker may be deleted',
                OLD.idempotency_key, OLD.state USING ERRCODE = 'restrict_violation';
        END IF;
        RETURN OLD;
    END IF;
    IF NEW.tenant_id <> OLD.tenant_id OR NEW.idempotency_key <> OLD.idempotency_key
       OR NEW.fingerprint <> OLD.fingerprint
       OR NEW.wallet_id IS DISTINCT FROM OLD.wallet_id THEN
        RAISE EXCEPTION 'idempotency key %: tenant, key, fingerprint and wallet never change',
            OLD.idempotency_key USING ERRCODE = 'restrict_violation';
    END IF;
    IF NOT ((OLD.state = 'in_progress' AND NEW.state IN ('in_progress', 'completed'))
            OR (OLD.state = 'completed' AND NEW.state = 'expired')) THEN
        RAISE EXCEPTION 'idempotency key %: % -> % is not allowed',
            OLD.idempotency_key, OLD.state, NEW.state USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER idempotency_keys_only_forward
    BEFORE UPDATE OR DELETE ON idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION idempotency_keys_only_forward();
DROP FUNCTION walletd_result_id(uuid, text);
