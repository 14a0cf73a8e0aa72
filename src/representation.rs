//! The JSON shapes of API.md: a wallet and a transaction (one ledger entry). The one place
//! entries are rendered: the bytes the API returns and stores for replay are made here, and so
//! will be what the hash chain hashes, the export writes and the events carry. Below the HTTP
//! layer: the pipeline renders its stored answers with it.
//!
//! Amounts are strings with exactly the currency's minor-unit digits; ids are lowercase UUIDs;
//! timestamps are RFC 3339 UTC with microseconds. Rendered from database rows (as returned by
//! the writing statement), so a 201, its replay and a later GET show the same values.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use utoipa::openapi::{KnownFormat, ObjectBuilder, SchemaFormat, Type};

use sha2::{Digest, Sha256};

use crate::db::models::{HoldRow, LedgerEntryRow, WalletRow};
use crate::domain::{Currency, jcs};

pub fn render_timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn currency_of(code: &str) -> anyhow::Result<Currency> {
    Currency::parse(code.trim()).map_err(|e| anyhow::anyhow!("stored currency is invalid: {e}"))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Wallet {
    #[schema(format = Uuid, example = "01936f3e-8d6a-7c4e-9a51-3f2b8c1d0e7a")]
    pub id: String,
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    #[schema(required = true)]
    pub owner_ref: Option<String>,
    /// Below 0 only within the overdraft limit.
    #[schema(schema_with = signed_money, example = "100.00")]
    pub balance: String,
    #[schema(schema_with = unsigned_money, example = "0.00")]
    pub held: String,
    /// `balance - held + overdraft_limit`; never below 0.
    #[schema(schema_with = unsigned_money, example = "100.00")]
    pub available: String,
    #[schema(schema_with = unsigned_money, example = "0.00")]
    pub overdraft_limit: String,
    /// Raised by every change to the wallet.
    #[schema(minimum = 1)]
    pub version: i64,
    #[schema(schema_with = wallet_status, example = "active")]
    pub status: String,
    #[schema(schema_with = timestamp)]
    pub created_at: String,
    #[schema(schema_with = timestamp)]
    pub updated_at: String,
}

impl Wallet {
    pub fn from_row(row: &WalletRow) -> anyhow::Result<Self> {
        let currency = currency_of(&row.currency)?;
        Ok(Self {
            id: row.id.hyphenated().to_string(),
            currency: currency.code().to_owned(),
            owner_ref: row.owner_ref.clone(),
            balance: currency.render(row.balance),
            held: currency.render(row.held),
            available: currency.render(row.available()),
            overdraft_limit: currency.render(row.overdraft_limit),
            version: row.version,
            status: row.status.clone(),
            created_at: render_timestamp(row.created_at),
            updated_at: render_timestamp(row.updated_at),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Transaction {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(format = Uuid)]
    pub wallet_id: String,
    /// `debit`, `credit` or `reversal`.
    #[serde(rename = "type")]
    #[schema(schema_with = entry_type, example = "debit")]
    pub kind: String,
    #[schema(schema_with = unsigned_money, example = "12.50")]
    pub amount: String,
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    #[schema(schema_with = signed_money, example = "100.00")]
    pub balance_before: String,
    #[schema(schema_with = signed_money, example = "87.50")]
    pub balance_after: String,
    /// Per-wallet, gapless, starting at 1.
    #[schema(minimum = 1)]
    pub seq: i64,
    #[schema(required = true)]
    pub reference: Option<String>,
    #[schema(required = true)]
    pub description: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    #[schema(min_length = 1, max_length = 255)]
    pub idempotency_key: String,
    #[schema(schema_with = timestamp)]
    pub created_at: String,
    /// The hold this entry captured (a debit), else `null`.
    #[schema(required = true, format = Uuid)]
    pub hold_id: Option<String>,
    /// The entry this reversal reverses, else `null`.
    #[schema(required = true, format = Uuid)]
    pub reverses: Option<String>,
    /// The previous entry's `hash` (64 zeros for `seq` 1).
    #[schema(schema_with = sha256_hex)]
    pub prev_hash: String,
    /// `SHA-256(prev_hash || JCS(this entry without hash))`, lowercase hex.
    #[schema(schema_with = sha256_hex)]
    pub hash: String,
}

/// `prev_hash` of a wallet's first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl Transaction {
    /// Renders a stored entry. An entry written before the chain existed and not yet given one
    /// by `walletd migrate` cannot be rendered (its hash is part of the representation).
    pub fn from_row(row: &LedgerEntryRow) -> anyhow::Result<Self> {
        let (Some(prev_hash), Some(hash)) = (&row.prev_hash, &row.hash) else {
            anyhow::bail!(
                "entry {} of wallet {} has no hash yet: run `walletd migrate`",
                row.seq,
                row.wallet_id
            );
        };
        let mut rendered = Self::unsealed(row, prev_hash)?;
        rendered.hash = hash.clone();
        Ok(rendered)
    }

    /// Renders an entry and seals it: its `hash` is computed from `prev_hash` and the rest.
    pub fn sealed(row: &LedgerEntryRow, prev_hash: &str) -> anyhow::Result<Self> {
        let mut rendered = Self::unsealed(row, prev_hash)?;
        rendered.hash = rendered.chain_hash()?;
        Ok(rendered)
    }

    fn unsealed(row: &LedgerEntryRow, prev_hash: &str) -> anyhow::Result<Self> {
        let currency = currency_of(&row.currency)?;
        Ok(Self {
            id: row.id.hyphenated().to_string(),
            wallet_id: row.wallet_id.hyphenated().to_string(),
            kind: row.entry_type.clone(),
            amount: currency.render(row.amount),
            currency: currency.code().to_owned(),
            balance_before: currency.render(row.balance_before),
            balance_after: currency.render(row.balance_after),
            seq: row.seq,
            reference: row.reference.clone(),
            description: row.description.clone(),
            metadata: row.metadata.clone(),
            idempotency_key: row.idempotency_key.clone(),
            created_at: render_timestamp(row.created_at),
            hold_id: row.hold_id.map(|id| id.hyphenated().to_string()),
            reverses: row.reverses.map(|id| id.hyphenated().to_string()),
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        })
    }

    /// What this entry's `hash` must be (API.md, Ledger integrity): SHA-256 over `prev_hash`
    /// as 64 ASCII hex characters followed by the RFC 8785 form of the entry without `hash`.
    /// See docs/hash-chain.md for the bytes, to recompute them with another tool.
    pub fn chain_hash(&self) -> anyhow::Result<String> {
        let mut value = serde_json::to_value(self)?;
        if let serde_json::Value::Object(members) = &mut value {
            members.remove("hash");
        }
        let canonical = jcs::canonicalize(&value)?;
        let mut hasher = Sha256::new();
        hasher.update(self.prev_hash.as_bytes());
        hasher.update(&canonical);
        Ok(hex::encode(hasher.finalize()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Hold {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(format = Uuid)]
    pub wallet_id: String,
    #[schema(schema_with = unsigned_money, example = "30.00")]
    pub amount: String,
    #[schema(pattern = "^[A-Z]{3}$", example = "EUR")]
    pub currency: String,
    #[schema(schema_with = hold_status, example = "active")]
    pub status: String,
    /// `0` (in the currency's digits) until captured.
    #[schema(schema_with = unsigned_money, example = "0.00")]
    pub captured_amount: String,
    #[schema(required = true)]
    pub reference: Option<String>,
    #[schema(schema_with = timestamp)]
    pub expires_at: String,
    #[schema(schema_with = timestamp)]
    pub created_at: String,
    #[schema(schema_with = timestamp)]
    pub updated_at: String,
}

impl Hold {
    /// Renders a hold. An active hold past `expires_at` is shown as `expired` even before the
    /// sweeper marks it so: it can no longer be captured (`at` is the time of the reading).
    pub fn from_row(row: &HoldRow, at: DateTime<Utc>) -> anyhow::Result<Self> {
        let currency = currency_of(&row.currency)?;
        let status = if row.status == "active" && row.expires_at <= at {
            "expired".to_owned()
        } else {
            row.status.clone()
        };
        Ok(Self {
            id: row.id.hyphenated().to_string(),
            wallet_id: row.wallet_id.hyphenated().to_string(),
            amount: currency.render(row.amount),
            currency: currency.code().to_owned(),
            status,
            captured_amount: currency.render(row.captured_amount),
            reference: row.reference.clone(),
            expires_at: render_timestamp(row.expires_at),
            created_at: render_timestamp(row.created_at),
            updated_at: render_timestamp(row.updated_at),
        })
    }
}

/// A page of a wallet's ledger, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerPage {
    pub entries: Vec<Transaction>,
    /// Pass as `after` to get the next page; `null` on the last page.
    #[schema(required = true, pattern = r"^[0-9]{1,19}$", example = "2")]
    pub next_cursor: Option<String>,
}

/// JSON Schema of the rendered fields (used by the derives above and by `/openapi.json`).
pub mod schema {
    use super::{KnownFormat, ObjectBuilder, SchemaFormat, Type};

    /// Money as rendered: exactly the currency's minor-unit digits (at most 4).
    const SIGNED_MONEY: &str = r"^-?[0-9]+(?:\.[0-9]{1,4})?$";
    const UNSIGNED_MONEY: &str = r"^[0-9]+(?:\.[0-9]{1,4})?$";
    /// RFC 3339 UTC with microseconds.
    pub const TIMESTAMP_PATTERN: &str =
        r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$";

    pub fn wallet_status() -> ObjectBuilder {
        string().enum_values(Some(["active", "closed"]))
    }

    /// `type` of a ledger entry.
    pub fn entry_type() -> ObjectBuilder {
        string().enum_values(Some(["debit", "credit", "reversal"]))
    }

    pub fn timestamp() -> ObjectBuilder {
        string()
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .pattern(Some(TIMESTAMP_PATTERN))
            .description(Some("RFC 3339 UTC with microseconds"))
    }

    /// A balance: a decimal string with exactly the currency's minor-unit digits, below 0 only
    /// within the overdraft limit.
    pub fn signed_money() -> ObjectBuilder {
        string().pattern(Some(SIGNED_MONEY)).description(Some(
            "Decimal string with exactly the currency's minor-unit digits; below 0 only within \
             the overdraft limit",
        ))
    }

    /// An amount, a hold, an overdraft limit or what is available: never below 0.
    pub fn unsigned_money() -> ObjectBuilder {
        string().pattern(Some(UNSIGNED_MONEY)).description(Some(
            "Decimal string with exactly the currency's minor-unit digits; never below 0",
        ))
    }

    pub fn hold_status() -> ObjectBuilder {
        string().enum_values(Some(["active", "captured", "voided", "expired"]))
    }

    pub fn sha256_hex() -> ObjectBuilder {
        string()
            .pattern(Some("^[0-9a-f]{64}$"))
            .description(Some("Lowercase hex SHA-256"))
    }

    fn string() -> ObjectBuilder {
        ObjectBuilder::new().schema_type(Type::String)
    }
}

use schema::{
    entry_type, hold_status, sha256_hex, signed_money, timestamp, unsigned_money, wallet_status,
};

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamps_have_microseconds_and_zulu() {
        let at = Utc.with_ymd_and_hms(2026, 11, 23, 18, 4, 5).unwrap();
        assert_eq!(render_timestamp(at), "2026-11-23T18:04:05.000000Z");
    }
}
