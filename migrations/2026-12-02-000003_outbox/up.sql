-- API.md Part 3: the transactional outbox. Every change of a wallet (creation, ledger entry,
-- hold placed / captured / voided / expired) raises its version by one and writes one event
-- row, in the same transaction. The relay publishes committed rows to the Redis stream, in
-- per-wallet version order, and marks them; published rows are pruned after a retention period.
--
-- Why the wallet version orders events, and not a sequence: a version is taken under the
-- wallet's row lock, so version n+1 cannot commit before version n, while sequence values of
-- concurrent transactions commit in any order. The relay never reads "after the last id seen":
-- it reads the rows not yet published, so no late commit can be skipped.
--
-- Rules stated here as well as in the code:
--   * one event per (wallet, version), one row per event id;
--   * every raise of a wallet's version comes with its events (a deferred check at commit);
--   * a row only ever moves from unpublished to published, and nothing else in it changes.
-- Keys include wallet_id (Citus, by wallet_id); times are bound by the service, never
-- clock_timestamp() in a write.

CREATE TABLE outbox_events (
    wallet_id       uuid        NOT NULL,
    wallet_version  bigint      NOT NULL CHECK (wallet_version >= 1),
    event_id        uuid        NOT NULL,
    tenant_id       uuid        NOT NULL,
    event_type      text        NOT NULL CHECK (event_type IN (
                        'wallet.created', 'wallet.debited', 'wallet.credited', 'wallet.reversed',
                        'hold.created', 'hold.captured', 'hold.voided', 'hold.expired')),
    -- The event exactly as published (its JSON text): what was committed is what is sent.
    payload         text        NOT NULL CHECK (octet_length(payload) <= 131072),
    occurred_at     timestamptz NOT NULL,
    published_at    timestamptz,
    PRIMARY KEY (wallet_id, wallet_version),
    CONSTRAINT outbox_events_one_row_per_event UNIQUE (wallet_id, event_id)
);
-- The relay's read: unpublished rows in (wallet, version) order; small, since rows leave it
-- once published.
CREATE INDEX outbox_events_unpublished ON outbox_events (wallet_id, wallet_version)
    WHERE published_at IS NULL;
-- The pruning scan.
CREATE INDEX outbox_events_published ON outbox_events (published_at)
    WHERE published_at IS NOT NULL;

CREATE FUNCTION outbox_events_only_marked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.wallet_id <> OLD.wallet_id OR NEW.wallet_version <> OLD.wallet_version
       OR NEW.event_id <> OLD.event_id OR NEW.tenant_id <> OLD.tenant_id
       OR NEW.event_type <> OLD.event_type OR NEW.payload <> OLD.payload
       OR NEW.occurred_at <> OLD.occurred_at THEN
        RAISE EXCEPTION 'outbox event %: only published_at changes', OLD.event_id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.published_at IS NOT NULL AND NEW.published_at IS DISTINCT FROM OLD.published_at THEN
        RAISE EXCEPTION 'outbox event % is already marked published', OLD.event_id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER outbox_events_only_marked
    BEFORE UPDATE ON outbox_events
    FOR EACH ROW EXECUTE FUNCTION outbox_events_only_marked();

-- At commit: the versions a wallet went through in this change each have their event.
CREATE FUNCTION wallet_versions_have_events(wallet uuid, version_from bigint, version_to bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    written bigint;
BEGIN
    SELECT count(*) INTO written FROM outbox_events
     WHERE wallet_id = wallet AND wallet_version > version_from AND wallet_version <= version_to;
    IF written <> version_to - version_from THEN
        RAISE EXCEPTION 'wallet % went from version % to % with % events', wallet, version_from,
            version_to, written USING ERRCODE = 'check_violation';
    END IF;
END
$$;
CREATE FUNCTION wallets_check_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM wallet_versions_have_events(NEW.id, NEW.version - 1, NEW.version);
    ELSE
        PERFORM wallet_versions_have_events(NEW.id, OLD.version, NEW.version);
    END IF;
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER wallets_versions_have_events
    AFTER INSERT ON wallets
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION wallets_check_events();
CREATE CONSTRAINT TRIGGER wallets_version_changes_have_events
    AFTER UPDATE OF version ON wallets
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION wallets_check_events();
