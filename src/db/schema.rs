// Diesel table definitions for `migrations/`. Written by hand (diesel_cli needs libpq, which this
// project does not link); `tests/api/schema_drift.rs` checks them against the migrated database.

diesel::table! {
    tenants (id) {
        id -> Uuid,
        name -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        secret_hash -> Bytea,
        scopes -> Array<Text>,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    wallets (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        currency -> Bpchar,
        owner_ref -> Nullable<Text>,
        balance -> Numeric,
        held -> Numeric,
        overdraft_limit -> Numeric,
        version -> Int8,
        last_seq -> Int8,
        status -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        last_hash -> Text,
    }
}

diesel::table! {
    holds (wallet_id, id) {
        wallet_id -> Uuid,
        id -> Uuid,
        tenant_id -> Uuid,
        amount -> Numeric,
        currency -> Bpchar,
        status -> Text,
        captured_amount -> Numeric,
        reference -> Nullable<Text>,
        idempotency_key -> Text,
        expires_at -> Timestamptz,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    idempotency_keys (result_id) {
        tenant_id -> Uuid,
        idempotency_key -> Text,
        fingerprint -> Bytea,
        wallet_id -> Nullable<Uuid>,
        state -> Text,
        response_status -> Int2,
        response_body -> Nullable<Bytea>,
        created_at -> Timestamptz,
        completed_at -> Timestamptz,
        expired_at -> Nullable<Timestamptz>,
        result_id -> Uuid,
    }
}

diesel::table! {
    ledger_entries (wallet_id, seq) {
        wallet_id -> Uuid,
        seq -> Int8,
        id -> Uuid,
        tenant_id -> Uuid,
        entry_type -> Text,
        amount -> Numeric,
        currency -> Bpchar,
        balance_before -> Numeric,
        balance_after -> Numeric,
        reference -> Nullable<Text>,
        description -> Nullable<Text>,
        metadata -> Jsonb,
        idempotency_key -> Text,
        created_at -> Timestamptz,
        direction -> Nullable<Text>,
        hold_id -> Nullable<Uuid>,
        reverses -> Nullable<Uuid>,
        prev_hash -> Nullable<Text>,
        hash -> Nullable<Text>,
    }
}

diesel::table! {
    outbox_events (wallet_id, wallet_version) {
        wallet_id -> Uuid,
        wallet_version -> Int8,
        event_id -> Uuid,
        tenant_id -> Uuid,
        event_type -> Text,
        payload -> Text,
        occurred_at -> Timestamptz,
        published_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    routes_before_result_ids (id) {
        id -> Uuid,
        tenant_id -> Uuid,
        wallet_id -> Uuid,
    }
}

diesel::joinable!(api_keys -> tenants (tenant_id));
diesel::joinable!(holds -> wallets (wallet_id));
diesel::joinable!(ledger_entries -> wallets (wallet_id));
diesel::joinable!(wallets -> tenants (tenant_id));

diesel::allow_tables_to_appear_in_same_query!(
    tenants,
    api_keys,
    wallets,
    holds,
    idempotency_keys,
    ledger_entries,
    outbox_events,
    routes_before_result_ids,
);
