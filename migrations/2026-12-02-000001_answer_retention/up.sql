-- Retention of stored answers (API.md, Idempotency: "the key is never forgotten").
--
-- A completed key's stored answer may be dropped after idempotency.retention_hours; the key row,
-- its fingerprint and its wallet stay forever in state 'expired', so a very late retry gets 410
-- idempotency_key_expired and can never execute a second time. The database holds the rule:
--   * 'expired' rows have no body (and no lease);
--   * a key's life only moves forward: in_progress -> completed -> expired; only an in-flight
--     marker may be deleted (an abandoned request), never a decided or expired key;
--   * the fingerprint, tenant, key and wallet of a row never change.

ALTER TABLE idempotency_keys ADD COLUMN expired_at timestamptz;

ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_state_check;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_state_shape;
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

-- The purge job's scan: oldest completed answers first.
CREATE INDEX idempotency_keys_completed_at ON idempotency_keys (completed_at)
    WHERE state = 'completed';

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
