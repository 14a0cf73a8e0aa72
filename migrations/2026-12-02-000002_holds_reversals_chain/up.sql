-- API.md Part 2: holds, reversals and the per-wallet hash chain. As in the core schema, every
-- rule the service promises is stated here as well as in the code:
--   * a hold's life only moves forward (active -> captured | voided | expired), its amount,
--     wallet and key never change, and a wallet's `held` is the sum of its active holds;
--   * at most one capture per hold (a debit entry naming it) and one hold per key;
--   * a reversal names an entry of the same wallet that is not itself a reversal, moves money
--     the other way, and the reversals of one entry never add up to more than it;
--   * each entry carries prev_hash (the previous entry's hash, 64 zeros for seq 1) and hash.
--     The database checks the links (and that the wallet row names the newest hash); the hash
--     itself (SHA-256 over the rendered entry) is computed by the service and recomputed by
--     the audit.
-- Every key on a wallet-scoped table includes wallet_id (Citus, by wallet_id).

CREATE TABLE holds (
    wallet_id        uuid          NOT NULL REFERENCES wallets (id),
    id               uuid          NOT NULL,
    tenant_id        uuid          NOT NULL,
    amount           numeric(28,4) NOT NULL CHECK (amount > 0 AND amount <= 1000000000000000),
    currency         char(3)       NOT NULL,
    status           text          NOT NULL CHECK (status IN ('active', 'captured', 'voided', 'expired')),
    captured_amount  numeric(28,4) NOT NULL DEFAULT 0,
    reference        text          CHECK (char_length(reference) BETWEEN 1 AND 255),
    idempotency_key  text          NOT NULL,
    expires_at       timestamptz   NOT NULL,
    created_at       timestamptz   NOT NULL,
    updated_at       timestamptz   NOT NULL,
    PRIMARY KEY (wallet_id, id),
    CONSTRAINT holds_one_per_key UNIQUE (wallet_id, idempotency_key),
    CONSTRAINT holds_captured_amount CHECK (
        captured_amount >= 0 AND captured_amount <= amount
        AND (status = 'captured') = (captured_amount > 0)),
    CONSTRAINT holds_expiry_after_creation CHECK (expires_at > created_at)
);
-- GET/capture/void name a hold by id alone.
CREATE INDEX holds_by_id ON holds (id);
-- The expiry sweeper's scan.
CREATE INDEX holds_expiring ON holds (expires_at) WHERE status = 'active';
-- A wallet's active holds: the held check at commit and the release of its due holds.
CREATE INDEX holds_active_by_wallet ON holds (wallet_id, expires_at) INCLUDE (amount)
    WHERE status = 'active';

CREATE FUNCTION holds_only_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'holds are kept: DELETE refused' USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.wallet_id <> OLD.wallet_id OR NEW.id <> OLD.id OR NEW.tenant_id <> OLD.tenant_id
       OR NEW.amount <> OLD.amount OR NEW.currency <> OLD.currency
       OR NEW.idempotency_key <> OLD.idempotency_key OR NEW.expires_at <> OLD.expires_at
       OR NEW.created_at <> OLD.created_at OR NEW.reference IS DISTINCT FROM OLD.reference THEN
        RAISE EXCEPTION 'hold %: only its status, captured amount and updated_at change', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status <> 'active' THEN
        RAISE EXCEPTION 'hold % is %: it never changes again', OLD.id, OLD.status
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER holds_only_forward
    BEFORE UPDATE OR DELETE ON holds
    FOR EACH ROW EXECUTE FUNCTION holds_only_forward();

-- wallets.held = the sum of the wallet's active holds, judged at commit (a transaction moves
-- both), whichever of the two changed.
CREATE FUNCTION wallet_held_matches_holds(wallet uuid) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    recorded numeric;
    active_sum numeric;
BEGIN
    SELECT held INTO recorded FROM wallets WHERE id = wallet;
    SELECT coalesce(sum(amount), 0) INTO active_sum
      FROM holds WHERE wallet_id = wallet AND status = 'active';
    IF recorded <> active_sum THEN
        RAISE EXCEPTION 'wallet % holds % but its active holds sum to %', wallet, recorded, active_sum
            USING ERRCODE = 'check_violation';
    END IF;
END
$$;
CREATE FUNCTION holds_check_wallet_held() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wallet_held_matches_holds(NEW.wallet_id);
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER holds_match_wallet_held
    AFTER INSERT OR UPDATE ON holds
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION holds_check_wallet_held();
CREATE FUNCTION wallets_check_held() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM wallet_held_matches_holds(NEW.id);
    RETURN NULL;
END
$$;
-- Only when `held` really changed: a debit's UPDATE names the column but keeps its value.
CREATE CONSTRAINT TRIGGER wallets_held_matches_holds
    AFTER UPDATE OF held ON wallets
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.held IS DISTINCT FROM NEW.held)
    EXECUTE FUNCTION wallets_check_held();

-- The hash of the wallet's newest entry (64 zeros before the first): read under the row lock
-- with the rest of the wallet, so appending an entry needs no extra read.
ALTER TABLE wallets ADD COLUMN last_hash text NOT NULL DEFAULT repeat('0', 64)
    CHECK (last_hash ~ '^[0-9a-f]{64}$');

-- Reversals, captures and the chain on ledger entries. `direction` is a reversal's effect on
-- the wallet ('credit' for a reversed debit, 'debit' for a reversed credit).
ALTER TABLE ledger_entries ADD COLUMN direction text;
ALTER TABLE ledger_entries ADD COLUMN hold_id uuid;
ALTER TABLE ledger_entries ADD COLUMN reverses uuid;
ALTER TABLE ledger_entries ADD COLUMN prev_hash text;
ALTER TABLE ledger_entries ADD COLUMN hash text;

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_entry_type_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_entry_type_check
    CHECK (entry_type IN ('debit', 'credit', 'reversal'));
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_shape CHECK (
    (entry_type = 'credit' AND direction IS NULL AND reverses IS NULL AND hold_id IS NULL)
    OR (entry_type = 'debit' AND direction IS NULL AND reverses IS NULL)
    OR (entry_type = 'reversal' AND direction IN ('credit', 'debit') AND reverses IS NOT NULL
        AND hold_id IS NULL));
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_arithmetic;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_arithmetic CHECK (
    balance_after = balance_before
        + CASE coalesce(direction, entry_type) WHEN 'credit' THEN amount ELSE -amount END);
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_one_capture_per_hold
    UNIQUE (wallet_id, hold_id);
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_hold
    FOREIGN KEY (wallet_id, hold_id) REFERENCES holds (wallet_id, id);
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_reverses
    FOREIGN KEY (wallet_id, reverses) REFERENCES ledger_entries (wallet_id, id);
CREATE INDEX ledger_entries_reversals ON ledger_entries (wallet_id, reverses)
    WHERE reverses IS NOT NULL;
-- The export's order.
CREATE INDEX ledger_entries_by_time ON ledger_entries (tenant_id, created_at, wallet_id, seq);
-- The balance as of a time: one probe (entry times never run backwards within a wallet).
CREATE INDEX ledger_entries_by_wallet_time ON ledger_entries (wallet_id, created_at, seq);
-- New entries must carry their chain; entries written before this migration get it from
-- `walletd migrate` (src/pipeline/chain.rs), which then validates this constraint.
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_hash_shape CHECK (
    prev_hash IS NOT NULL AND hash IS NOT NULL
    AND prev_hash ~ '^[0-9a-f]{64}$' AND hash ~ '^[0-9a-f]{64}$') NOT VALID;

-- Append-only, with one narrow exception for that backfill: under the transaction-local
-- setting walletd.chain_backfill = 'on', a row without a hash may get its prev_hash and hash,
-- and nothing else may change.
CREATE OR REPLACE FUNCTION ledger_entries_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND current_setting('walletd.chain_backfill', true) = 'on'
       AND OLD.hash IS NULL AND NEW.hash IS NOT NULL
       AND (to_jsonb(NEW) - 'prev_hash' - 'hash') = (to_jsonb(OLD) - 'prev_hash' - 'hash')
       AND NEW.prev_hash = coalesce(
           (SELECT hash FROM ledger_entries WHERE wallet_id = NEW.wallet_id AND seq = NEW.seq - 1),
           repeat('0', 64)) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ledger_entries is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

-- The chain check on insert now also links the hashes.
CREATE OR REPLACE FUNCTION ledger_entries_check_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    previous_after numeric;
    previous_hash text;
    wallet_balance numeric;
    wallet_last_seq bigint;
    wallet_last_hash text;
BEGIN
    IF NEW.seq = 1 THEN
        previous_after := 0;
        previous_hash := repeat('0', 64);
    ELSE
        SELECT balance_after, hash INTO previous_after, previous_hash
          FROM ledger_entries WHERE wallet_id = NEW.wallet_id AND seq = NEW.seq - 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'ledger gap: wallet % has no entry % before %',
                NEW.wallet_id, NEW.seq - 1, NEW.seq USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    IF NEW.balance_before <> previous_after THEN
        RAISE EXCEPTION 'ledger chain broken: wallet % seq % balance_before % <> previous %',
            NEW.wallet_id, NEW.seq, NEW.balance_before, previous_after
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.prev_hash IS DISTINCT FROM previous_hash THEN
        RAISE EXCEPTION 'hash chain broken: wallet % seq % prev_hash % <> previous hash %',
            NEW.wallet_id, NEW.seq, NEW.prev_hash, previous_hash
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT balance, last_seq, last_hash INTO wallet_balance, wallet_last_seq, wallet_last_hash
      FROM wallets WHERE id = NEW.wallet_id;
    IF wallet_last_seq <> NEW.seq OR wallet_balance <> NEW.balance_after
       OR wallet_last_hash IS DISTINCT FROM NEW.hash THEN
        RAISE EXCEPTION 'ledger entry % / % / % does not match wallet % (last_seq %, balance %, last_hash %)',
            NEW.seq, NEW.balance_after, NEW.hash, NEW.wallet_id, wallet_last_seq, wallet_balance,
            wallet_last_hash USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

-- A reversal: of an entry of the same wallet that is not a reversal, the other way, and never
-- past the original amount in total. (The wallet row lock serialises the reversals of one
-- entry, so this sum sees every earlier one.)
CREATE FUNCTION ledger_entries_check_reversal() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    original ledger_entries%ROWTYPE;
    reversed numeric;
BEGIN
    SELECT * INTO original FROM ledger_entries WHERE wallet_id = NEW.wallet_id AND id = NEW.reverses;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'reversal % names no entry of wallet %', NEW.id, NEW.wallet_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF original.entry_type = 'reversal' THEN
        RAISE EXCEPTION 'entry % is a reversal and cannot be reversed', original.id
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.direction = original.entry_type THEN
        RAISE EXCEPTION 'reversal % must move money the other way than %', NEW.id, original.id
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT coalesce(sum(amount), 0) INTO reversed FROM ledger_entries
     WHERE wallet_id = NEW.wallet_id AND reverses = NEW.reverses;
    IF reversed + NEW.amount > original.amount THEN
        RAISE EXCEPTION 'reversals of % would total % > %', original.id, reversed + NEW.amount,
            original.amount USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER ledger_entries_reversal
    BEFORE INSERT ON ledger_entries
    FOR EACH ROW WHEN (NEW.entry_type = 'reversal')
    EXECUTE FUNCTION ledger_entries_check_reversal();
