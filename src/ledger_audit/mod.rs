//! The finance read side (API.md, Ledger integrity and audit): auditing a wallet from its
//! entries ([`verify`]), its balance at an instant ([`balance_as_of`]) and the tenant's
//! ledger exported in time order ([`export`]). Below the HTTP layer: `GET
//! /v1/wallets/{id}/audit`, `GET /v1/wallets/{id}/balance`, `GET /v1/ledger/export` and `walletd
//! audit` are thin callers of this module.
//!
//! Everything here reads in bounded pages (keyset by `seq`, or by `(created_at, wallet_id,
//! seq)` for the export), so memory stays flat for a wallet or tenant with millions of entries.

pub mod export;
pub mod instant;
pub mod verify;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::PgConn;
use crate::db::models::WalletRow;
use crate::db::schema::{ledger_entries, wallets};
use crate::domain::{Currency, TenantId, WalletId};
use crate::representation::render_timestamp;
use crate::representation::schema::{signed_money, timestamp};

pub use instant::{Instant, NotAnInstant};
pub use verify::{AuditLine, AuditReport, WalletAudit, audit_wallet};

/// Why a finance read could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum LedgerReadError {
    /// A query failed (the caller classifies it: unavailable, timeout or bug).
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    /// No pooled connection could be had.
    #[error("no database connection")]
    NoConnection(#[source] anyhow::Error),
    /// A stored row that cannot be rendered at all (a wallet without a valid currency, an
    /// entry without a hash in an export): a bug or a damaged database.
    #[error("stored ledger data cannot be rendered")]
    Corrupt(#[source] anyhow::Error),
}

/// A wallet's balance right after its last entry created at or before an instant.
#[derive(Debug, Clone)]
pub struct BalanceAt {
    pub wallet_id: Uuid,
    pub currency: Currency,
    /// The instant asked about, to the microsecond (rounded down).
    pub as_of: DateTime<Utc>,
    pub balance: Decimal,
    /// That entry's seq; 0 before the first entry.
    pub seq: i64,
}

impl BalanceAt {
    pub fn report(&self) -> BalanceReport {
        BalanceReport {
            wallet_id: self.wallet_id.hyphenated().to_string(),
            as_of: render_timestamp(self.as_of),
            balance: self.currency.render(self.balance),
            seq: self.seq,
        }
    }
}

/// `GET /v1/wallets/{id}/balance?as_of=…`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BalanceReport {
    #[schema(format = Uuid)]
    pub wallet_id: String,
    /// The instant asked about, in UTC, to the microsecond (a finer fraction is rounded down).
    #[schema(schema_with = timestamp)]
    pub as_of: String,
    /// `balance_after` of the last entry created at or before `as_of` (0 before the first).
    #[schema(schema_with = signed_money, example = "87.50")]
    pub balance: String,
    /// That entry's `seq`; 0 before the first entry.
    #[schema(minimum = 0)]
    pub seq: i64,
}

/// The balance of `wallet` (of `tenant`) after its last entry created at or before `as_of`:
/// that entry's `balance_after`, or 0 and seq 0 before the first. Of several entries at or
/// before `as_of`, the last is the one with the highest seq (entry times never run backwards
/// within a wallet, so it is also the latest by time). `None` for an unknown wallet or one of
/// another tenant. Reads backwards from the newest entry (the primary key is the only index
/// that starts with `wallet_id`), so the cost grows with the entries after `as_of`.
pub async fn balance_as_of(
    conn: &mut PgConn,
    tenant: TenantId,
    wallet: WalletId,
    as_of: Instant,
) -> Result<Option<BalanceAt>, LedgerReadError> {
    let Some(row) = wallets::table
        .filter(wallets::id.eq(wallet.as_uuid()))
        .filter(wallets::tenant_id.eq(tenant.as_uuid()))
        .select(WalletRow::as_select())
        .first(conn)
        .await
        .optional()?
    else {
        return Ok(None);
    };
    let currency = Currency::parse(row.currency.trim()).map_err(|e| {
        LedgerReadError::Corrupt(anyhow::anyhow!(
            "wallet {} has an invalid currency: {e}",
            row.id
        ))
    })?;
    let as_of = as_of.floor_micros();
    let last: Option<(i64, Decimal)> = ledger_entries::table
        .filter(ledger_entries::wallet_id.eq(row.id))
        .filter(ledger_entries::created_at.le(as_of))
        .order(ledger_entries::seq.desc())
        .select((ledger_entries::seq, ledger_entries::balance_after))
        .first(conn)
        .await
        .optional()?;
    let (seq, balance) = last.unwrap_or((0, Decimal::ZERO));
    Ok(Some(BalanceAt {
        wallet_id: row.id,
        currency,
        as_of,
        balance,
        seq,
    }))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use chrono::{DateTime, Utc};
    use rust_decimal::Decimal;
    use uuid::Uuid;

    use crate::db::models::LedgerEntryRow;
    use crate::domain::jcs;
    use crate::representation::Transaction;

    /// docs/hash-chain.md, whose worked example must stay what the code computes.
    const HASH_CHAIN_MD: &str = include_str!("../../docs/hash-chain.md");

    fn example() -> LedgerEntryRow {
        let dec = |text: &str| Decimal::from_str(text).unwrap();
        LedgerEntryRow {
            wallet_id: Uuid::parse_str("0193a4c2-6e00-7000-8000-0000000000aa").unwrap(),
            seq: 4,
            id: Uuid::parse_str("0193a4c2-6f00-7000-8000-000000000004").unwrap(),
            tenant_id: Uuid::nil(),
            entry_type: "debit".into(),
            amount: dec("12.5000"),
            currency: "EUR".into(),
            balance_before: dec("100.0000"),
            balance_after: dec("87.5000"),
            reference: Some("booking-123".into()),
            description: Some("Booking payment".into()),
            metadata: serde_json::json!({
                "rate": 1.5, "nights": 2, "tiny": 0.000001,
                "guest": {"name": "Zoë", "vip": true},
            }),
            idempotency_key: "checkout-8f3a".into(),
            created_at: DateTime::parse_from_rfc3339("2026-12-01T10:15:30.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            direction: None,
            hold_id: None,
            reverses: None,
            prev_hash: None,
            hash: None,
        }
    }

    const EXAMPLE_PREV_HASH: &str =
        "5e0c1d6bd3a1b4f7e2c9a8d7f6e5c4b3a2918070605040302010f0e0d0c0b0a0";

    #[test]
    fn the_documented_example_is_what_the_code_computes() {
        let sealed = Transaction::sealed(&example(), EXAMPLE_PREV_HASH).unwrap();
        let mut value = serde_json::to_value(&sealed).unwrap();
        value.as_object_mut().unwrap().remove("hash");
        let canonical = String::from_utf8(jcs::canonicalize(&value).unwrap()).unwrap();
        assert!(
            HASH_CHAIN_MD.contains(&canonical),
            "docs/hash-chain.md lacks {canonical}"
        );
        assert!(
            HASH_CHAIN_MD.contains(&sealed.hash),
            "docs/hash-chain.md lacks {}",
            sealed.hash
        );
        assert!(HASH_CHAIN_MD.contains(EXAMPLE_PREV_HASH));
    }
}
