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

use crate::db::models::{LedgerEntryRow, WalletRow};
use crate::domain::Currency;

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

#[derive(Debug, Serialize, ToSchema)]
pub struct Transaction {
    #[schema(format = Uuid)]
    pub id: String,
    #[schema(format = Uuid)]
    pub wallet_id: String,
    /// `debit` or `credit`.
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
}

impl Transaction {
    pub fn from_row(row: &LedgerEntryRow) -> anyhow::Result<Self> {
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
        })
    }
}

/// A page of a wallet's ledger, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerPage {
    pub entries: Vec<Transaction>,
    /// Pass as `after` to get the next page; `null` on the last page.
    #[schema(required = true, pattern = "^[0-9]+$")]
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
        string().enum_values(Some(["debit", "credit"]))
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

    fn string() -> ObjectBuilder {
        ObjectBuilder::new().schema_type(Type::String)
    }
}

use schema::{entry_type, signed_money, timestamp, unsigned_money, wallet_status};

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
