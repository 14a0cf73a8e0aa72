//! Rows as stored. Converting them to API representations happens in `representation`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::schema::{api_keys, holds, idempotency_keys, ledger_entries, wallets};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = wallets, check_for_backend(diesel::pg::Pg))]
pub struct WalletRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub currency: String,
    pub owner_ref: Option<String>,
    pub balance: Decimal,
    pub held: Decimal,
    pub overdraft_limit: Decimal,
    pub version: i64,
    pub last_seq: i64,
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The newest entry's hash (64 zeros before the first).
    pub last_hash: String,
}

impl WalletRow {
    /// What the wallet can spend now: `balance - held + overdraft_limit`.
    pub fn available(&self) -> Decimal {
        self.balance - self.held + self.overdraft_limit
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = wallets)]
pub struct NewWallet<'a> {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub currency: &'a str,
    pub owner_ref: Option<&'a str>,
    pub overdraft_limit: Decimal,
    /// Bound by the service (no volatile default in a write to a wallet table).
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An idempotency key's one row, written with the answer it stores
/// (`pipeline::idempotency::store_answers`).
#[derive(Debug, Insertable)]
#[diesel(table_name = idempotency_keys)]
pub struct NewStoredAnswer<'a> {
    pub result_id: Uuid,
    pub tenant_id: Uuid,
    pub idempotency_key: &'a str,
    pub fingerprint: &'a [u8],
    pub wallet_id: Option<Uuid>,
    pub state: &'static str,
    pub response_status: i16,
    pub response_body: &'a [u8],
    pub created_at: DateTime<Utc>,
    pub completed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = ledger_entries, check_for_backend(diesel::pg::Pg))]
pub struct LedgerEntryRow {
    pub wallet_id: Uuid,
    pub seq: i64,
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub entry_type: String,
    pub amount: Decimal,
    pub currency: String,
    pub balance_before: Decimal,
    pub balance_after: Decimal,
    pub reference: Option<String>,
    pub description: Option<String>,
    pub metadata: serde_json::Value,
    pub idempotency_key: String,
    pub created_at: DateTime<Utc>,
    /// A reversal's effect on the wallet (`credit` or `debit`); `None` for other entries.
    pub direction: Option<String>,
    pub hold_id: Option<Uuid>,
    pub reverses: Option<Uuid>,
    /// `None` only for entries written before the chain existed, until `walletd migrate`.
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

impl LedgerEntryRow {
    /// Whether the entry adds to the balance (a credit, or a reversal of a debit).
    pub fn is_inflow(&self) -> bool {
        self.direction.as_deref().unwrap_or(&self.entry_type) == "credit"
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = ledger_entries)]
pub struct NewLedgerEntry<'a> {
    pub wallet_id: Uuid,
    pub seq: i64,
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub entry_type: &'a str,
    pub amount: Decimal,
    pub currency: &'a str,
    pub balance_before: Decimal,
    pub balance_after: Decimal,
    pub reference: Option<&'a str>,
    pub description: Option<&'a str>,
    pub metadata: &'a serde_json::Value,
    pub idempotency_key: &'a str,
    pub created_at: DateTime<Utc>,
    pub direction: Option<&'a str>,
    pub hold_id: Option<Uuid>,
    pub reverses: Option<Uuid>,
    pub prev_hash: &'a str,
    pub hash: &'a str,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = holds, check_for_backend(diesel::pg::Pg))]
pub struct HoldRow {
    pub wallet_id: Uuid,
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub amount: Decimal,
    pub currency: String,
    pub status: String,
    pub captured_amount: Decimal,
    pub reference: Option<String>,
    pub idempotency_key: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys, check_for_backend(diesel::pg::Pg))]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub revoked_at: Option<DateTime<Utc>>,
}
