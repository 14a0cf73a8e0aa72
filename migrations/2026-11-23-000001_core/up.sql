-- walletd core schema (API.md Part 1).
--
-- Every invariant the service promises is stated here as well as in the code, so that a bug in
-- the code fails loudly in the database instead of silently in a balance:
--   * amounts are positive and each entry's arithmetic holds (CHECKs on ledger_entries);
--   * per-wallet seq is gapless and each entry chains onto the previous one (trigger);
--   * a wallet's balance is its newest entry's balance_after (triggers, both directions);
--   * available = balance - held + overdraft_limit never drops below 0 (CHECK on wallets);
--   * one idempotency key per tenant, and at most one ledger entry per key (keys + FK);
--   * ledger rows are append-only (trigger refusing UPDATE, DELETE and TRUNCATE).
--
-- Distribution-ready (Citus, by wallet_id): every key on a wallet-scoped table includes
-- wallet_id; the tenant-wide "one use per key" rule lives in idempotency_keys.
-- Money columns are NUMERIC(28,4): 4 fraction digits cover every ISO 4217 minor unit.

CREATE TABLE tenants (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY,
    tenant_id    uuid        NOT NULL REFERENCES tenants (id),
    -- SHA-256 of the secret half of the key; the secret itself is never stored.
    secret_hash  bytea       NOT NULL CHECK (octet_length(secret_hash) = 32),
    scopes       text[]      NOT NULL CHECK (
                     cardinality(scopes) BETWEEN 1 AND 3
                     AND scopes <@ ARRAY['wallets:write', 'wallets:read', 'ledger:read']::text[]),
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    revoked_at   timestamptz
);
CREATE INDEX api_keys_tenant_id ON api_keys (tenant_id);

CREATE TABLE wallets (
    id               uuid          PRIMARY KEY,
    tenant_id        uuid          NOT NULL REFERENCES tenants (id),
    currency         char(3)       NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    owner_ref        text          CHECK (char_length(owner_ref) BETWEEN 1 AND 255),
    balance          numeric(28,4) NOT NULL DEFAULT 0
                                   CHECK (balance BETWEEN -1000000000000000000 AND 1000000000000000000),
    held             numeric(28,4) NOT NULL DEFAULT 0 CHECK (held >= 0),
    overdraft_limit  numeric(28,4) NOT NULL DEFAULT 0
                                   CHECK (overdraft_limit BETWEEN 0 AND 1000000000000000),
    -- Raised by every change; readers and caches compare versions, never timestamps.
    version          bigint        NOT NULL DEFAULT 1 CHECK (version >= 1),
    -- seq of the newest ledger entry (0: none yet).
    last_seq         bigint        NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    status           text          NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'closed')),
    created_at       timestamptz   NOT NULL DEFAULT clock_timestamp(),
    updated_at       timestamptz   NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT wallets_available_not_negative CHECK (balance - held + overdraft_limit >= 0)
);
CREATE INDEX wallets_tenant_id ON wallets (tenant_id);

-- One row per (tenant, key): the in-flight marker while a request executes (with a lease, so a
-- crashed request's key is recovered), then the stored response that every retry replays.
CREATE TABLE idempotency_keys (
    tenant_id         uuid        NOT NULL REFERENCES tenants (id),
    idempotency_key   text        NOT NULL CHECK (octet_length(idempotency_key) BETWEEN 1 AND 255),
    -- SHA-256 of method, path and canonical JSON body.
    fingerprint       bytea       NOT NULL CHECK (octet_length(fingerprint) = 32),
    -- The wallet the request targets (NULL for wallet creation).
    wallet_id         uuid,
    state             text        NOT NULL CHECK (state IN ('in_progress', 'completed')),
    lease_token       uuid,
    lease_expires_at  timestamptz,
    response_status   smallint    CHECK (response_status BETWEEN 200 AND 599),
    response_body     bytea,
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at      timestamptz,
    PRIMARY KEY (tenant_id, idempotency_key),
    -- Target of the ledger's foreign key: an entry's key must name this wallet.
    CONSTRAINT idempotency_keys_wallet UNIQUE (tenant_id, idempotency_key, wallet_id),
    CONSTRAINT idempotency_keys_state_shape CHECK (
        (state = 'in_progress' AND lease_token IS NOT NULL AND lease_expires_at IS NOT NULL
            AND response_status IS NULL AND response_body IS NULL AND completed_at IS NULL)
        OR (state = 'completed' AND lease_token IS NULL AND lease_expires_at IS NULL
            AND response_status IS NOT NULL AND response_body IS NOT NULL
            AND completed_at IS NOT NULL))
);

CREATE TABLE ledger_entries (
    wallet_id        uuid          NOT NULL REFERENCES wallets (id),
    seq              bigint        NOT NULL CHECK (seq >= 1),
    id               uuid          NOT NULL,
    tenant_id        uuid          NOT NULL,
    entry_type       text          NOT NULL CHECK (entry_type IN ('debit', 'credit')),
    amount           numeric(28,4) NOT NULL CHECK (amount > 0 AND amount <= 1000000000000000),
    currency         char(3)       NOT NULL,
    balance_before   numeric(28,4) NOT NULL,
    balance_after    numeric(28,4) NOT NULL,
    reference        text,
    description      text,
    metadata         jsonb         NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    idempotency_key  text          NOT NULL,
    created_at       timestamptz   NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (wallet_id, seq),
    CONSTRAINT ledger_entries_id UNIQUE (wallet_id, id),
    CONSTRAINT ledger_entries_one_per_key UNIQUE (wallet_id, idempotency_key),
    CONSTRAINT ledger_entries_arithmetic CHECK (
        balance_after = balance_before
            + CASE entry_type WHEN 'credit' THEN amount ELSE -amount END),
    -- With idempotency_keys' primary key (one row per tenant and key, naming one wallet) and the
    -- unique key above, this makes a second ledger entry for a (tenant, key) impossible.
    CONSTRAINT ledger_entries_key FOREIGN KEY (tenant_id, idempotency_key, wallet_id)
        REFERENCES idempotency_keys (tenant_id, idempotency_key, wallet_id)
);
CREATE INDEX ledger_entries_by_id ON ledger_entries (id);

-- Ledger rows are facts: never updated, never deleted, whatever code issues the statement.
CREATE FUNCTION ledger_entries_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_refuse_change();

-- A new entry must continue its wallet's chain (seq gapless, balance_before = previous
-- balance_after, 0 for the first) and must match the wallet row, which the same transaction
-- has already updated (balance = balance_after, last_seq = seq).
CREATE FUNCTION ledger_entries_check_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    previous_after numeric;
    wallet_balance numeric;
    wallet_last_seq bigint;
BEGIN
    IF NEW.seq = 1 THEN
        previous_after := 0;
    ELSE
        SELECT balance_after INTO previous_after
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
    SELECT balance, last_seq INTO wallet_balance, wallet_last_seq
      FROM wallets WHERE id = NEW.wallet_id;
    IF wallet_last_seq <> NEW.seq OR wallet_balance <> NEW.balance_after THEN
        RAISE EXCEPTION 'ledger entry % / % does not match wallet % (last_seq %, balance %)',
            NEW.seq, NEW.balance_after, NEW.wallet_id, wallet_last_seq, wallet_balance
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER ledger_entries_chain
    BEFORE INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_check_chain();

-- The other direction: a wallet whose balance or last_seq changed must, by commit time, have
-- its newest ledger entry at last_seq, with balance_after equal to its balance. Deferred,
-- because the entry is inserted after the wallet row is updated.
CREATE FUNCTION wallets_check_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    current_balance numeric;
    current_last_seq bigint;
    newest_seq bigint;
    newest_after numeric;
BEGIN
    -- Deferred: judge the wallet as it is at commit, not as this (possibly earlier) update
    -- left it, so a transaction may move a wallet several times.
    SELECT balance, last_seq INTO current_balance, current_last_seq FROM wallets WHERE id = NEW.id;
    SELECT seq, balance_after INTO newest_seq, newest_after
      FROM ledger_entries WHERE wallet_id = NEW.id ORDER BY seq DESC LIMIT 1;
    IF NOT FOUND THEN
        newest_seq := 0;
        newest_after := 0;
    END IF;
    -- last_seq must be the newest entry (a wallet is never ahead of or behind its ledger),
    -- and the balance must be that entry's balance_after (0 before the first entry).
    IF current_last_seq <> newest_seq OR current_balance <> newest_after THEN
        RAISE EXCEPTION 'wallet % (last_seq %, balance %) is not backed by its newest ledger entry (seq %, balance_after %)',
            NEW.id, current_last_seq, current_balance, newest_seq, newest_after
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER wallets_balance_backed_by_ledger
    AFTER INSERT OR UPDATE OF balance, last_seq ON wallets
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION wallets_check_ledger();
