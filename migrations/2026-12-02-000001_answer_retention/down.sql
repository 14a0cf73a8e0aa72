DROP TRIGGER idempotency_keys_only_forward ON idempotency_keys;
DROP FUNCTION idempotency_keys_only_forward();
DROP INDEX idempotency_keys_completed_at;
-- Expired keys cannot be represented without this migration: refuse to go back while any exist.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM idempotency_keys WHERE state = 'expired') THEN
        RAISE EXCEPTION 'expired idempotency keys exist; they cannot be kept without this migration';
    END IF;
END
$$;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_state_shape;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_state_check;
ALTER TABLE idempotency_keys DROP COLUMN expired_at;
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_state_check
    CHECK (state IN ('in_progress', 'completed'));
ALTER TABLE idempotency_keys ADD CONSTRAINT idempotency_keys_state_shape CHECK (
    (state = 'in_progress' AND lease_token IS NOT NULL AND lease_expires_at IS NOT NULL
        AND response_status IS NULL AND response_body IS NULL AND completed_at IS NULL)
    OR (state = 'completed' AND lease_token IS NULL AND lease_expires_at IS NULL
        AND response_status IS NOT NULL AND response_body IS NOT NULL
        AND completed_at IS NOT NULL));
