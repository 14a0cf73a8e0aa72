//! Reversals (API.md Part 2, refunds): a new entry that moves money back, linked by `reverses`
//! to the original, which never changes. Runs inside the row-locked transaction of the
//! original's wallet, so the reversals of one entry are decided one after the other and each
//! sees every earlier one; the database states the same limits (a trigger on insert).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rust_decimal::Decimal;

use super::append::{Direction, NewEntry, append_entry, entry_time};
use super::changes::Changes;
use super::holds::release_expired_holds;
use super::idempotency::Claim;
use super::outcome::{Decline, StoredResponse};
use super::transaction::TxError;
use crate::db::PgConn;
use crate::db::models::{LedgerEntryRow, WalletRow};
use crate::db::schema::ledger_entries;
use crate::domain::money::BALANCE_MAX;
use crate::domain::{BoundedText, Currency, PendingAmount, TenantId, TransactionId, WalletId};

/// A parsed `POST /v1/transactions/{id}/reverse`; `wallet` is resolved before the lock.
#[derive(Debug, Clone)]
pub struct ReverseCommand {
    pub transaction: TransactionId,
    /// Default: all that is not reversed yet.
    pub amount: Option<PendingAmount>,
    pub reason: Option<BoundedText>,
    pub wallet: Option<WalletId>,
}

pub(super) async fn reverse_once(
    conn: &mut PgConn,
    claim: &Claim,
    wallet: Option<WalletRow>,
    command: &ReverseCommand,
    changes: &mut Changes,
) -> Result<StoredResponse, TxError> {
    let response = match wallet {
        None => Decline::TransactionNotFound.stored(),
        Some(wallet) => match original(conn, &wallet, command.transaction).await? {
            None => Decline::TransactionNotFound.stored(),
            Some(original) => reverse(conn, claim, &wallet, &original, command, changes).await?,
        },
    };
    Ok(response)
}

async fn original(
    conn: &mut PgConn,
    wallet: &WalletRow,
    transaction: TransactionId,
) -> QueryResult<Option<LedgerEntryRow>> {
    ledger_entries::table
        .filter(ledger_entries::wallet_id.eq(wallet.id))
        .filter(ledger_entries::id.eq(transaction.as_uuid()))
        .select(LedgerEntryRow::as_select())
        .first(conn)
        .await
        .optional()
}

async fn reverse(
    conn: &mut PgConn,
    claim: &Claim,
    wallet: &WalletRow,
    original: &LedgerEntryRow,
    command: &ReverseCommand,
    changes: &mut Changes,
) -> Result<StoredResponse, TxError> {
    if original.entry_type == "reversal" {
        return Ok(Decline::NotReversible.stored());
    }
    if wallet.status != "active" {
        return Ok(Decline::WalletClosed.stored());
    }
    let at = entry_time();
    let wallet = &release_expired_holds(conn, wallet.clone(), at, changes).await?;
    let currency = Currency::parse(original.currency.trim())
        .map_err(|e| TxError::Render(anyhow::anyhow!("stored currency is invalid: {e}")))?;
    let reversed: Option<Decimal> = ledger_entries::table
        .filter(ledger_entries::wallet_id.eq(wallet.id))
        .filter(ledger_entries::reverses.eq(original.id))
        .select(diesel::dsl::sum(ledger_entries::amount))
        .first(conn)
        .await?;
    let remaining = original.amount - reversed.unwrap_or(Decimal::ZERO);
    let amount = match &command.amount {
        None => remaining,
        Some(pending) => pending
            .in_currency(currency)
            .map_err(|e| TxError::Rejected(format!("amount: {e}")))?
            .amount(),
    };
    if remaining <= Decimal::ZERO || amount > remaining {
        return Ok(Decline::ReversalExceedsOriginal(format!(
            "{} of {} is left to reverse",
            currency.render(remaining.max(Decimal::ZERO)),
            currency.render(original.amount)
        ))
        .stored());
    }
    // Money moves back: a reversed credit debits the wallet and needs the funds.
    let direction = if original.is_inflow() {
        Direction::Out
    } else {
        Direction::In
    };
    if direction == Direction::Out && wallet.available() < amount {
        return Ok(Decline::InsufficientFunds(format!(
            "available {} is less than the reversal's {}",
            currency.render(wallet.available()),
            currency.render(amount)
        ))
        .stored());
    }
    if direction == Direction::In && wallet.balance + amount > BALANCE_MAX {
        return Err(TxError::Rejected(format!(
            "this reversal would take the balance above the maximum {BALANCE_MAX}"
        )));
    }
    let metadata = serde_json::Value::Object(serde_json::Map::new());
    let entry = NewEntry {
        id: claim.transaction_id(),
        kind: "reversal",
        direction,
        amount,
        currency: currency.code(),
        reference: original.reference.as_deref(),
        description: command.reason.as_ref().map(BoundedText::as_str),
        metadata: &metadata,
        idempotency_key: claim.key().as_str(),
        hold_id: None,
        reverses: Some(original.id),
        held_after: wallet.held,
    };
    let (shown, moved) = append_entry(conn, wallet, entry, at).await?;
    changes.entry_appended(&shown, &moved, None)?;
    let body = serde_json::to_vec(&shown).map_err(|e| TxError::Render(e.into()))?;
    Ok(StoredResponse { status: 201, body })
}

/// The wallet of a tenant's ledger entry, for the lock taken before the transaction (`None`:
/// no such entry; the transaction then stores `transaction_not_found`).
pub async fn transaction_wallet(
    conn: &mut PgConn,
    tenant: TenantId,
    transaction: TransactionId,
) -> QueryResult<Option<WalletId>> {
    let wallet =
        crate::db::routes::wallet_of(conn, tenant.as_uuid(), transaction.as_uuid()).await?;
    Ok(wallet.map(WalletId::from_uuid))
}
