//! Appending one ledger entry to a wallet whose row this transaction has locked: the one
//! place that moves a balance, so every kind of entry (debit, credit, capture, reversal) gets
//! the same seq, chain and checks.
//!
//! The entry is rendered and sealed (its hash computed) before it is written, from values the
//! application binds — the time included — so the INSERT carries its own hash and the chain
//! costs no extra statement. What the database returns is rendered again and must hash the
//! same, so the stored chain is exactly what the API shows.

use chrono::{DateTime, SubsecRound, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::transaction::TxError;
use crate::db::PgConn;
use crate::db::models::{LedgerEntryRow, NewLedgerEntry, WalletRow};
use crate::db::schema::{ledger_entries, wallets};
use crate::domain::TransactionId;
use crate::representation::Transaction;

/// Which way an entry moves the balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

/// One entry to append.
#[derive(Debug)]
pub struct NewEntry<'a> {
    /// The request's result id ([`crate::domain::IdempotencyKey::result_id`]).
    pub id: TransactionId,
    /// `debit`, `credit` or `reversal`.
    pub kind: &'static str,
    pub direction: Direction,
    pub amount: Decimal,
    pub currency: &'a str,
    pub reference: Option<&'a str>,
    pub description: Option<&'a str>,
    pub metadata: &'a serde_json::Value,
    pub idempotency_key: &'a str,
    pub hold_id: Option<Uuid>,
    pub reverses: Option<Uuid>,
    /// The wallet's `held` after this entry (unchanged unless a capture releases its hold).
    pub held_after: Decimal,
}

/// The time an entry is stamped with: now, to the microsecond Postgres keeps.
pub fn entry_time() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Moves the locked wallet and appends the entry; returns the rendered, sealed entry and the
/// wallet as it now is. The database re-checks the arithmetic, the seq and hash links and the
/// available-balance floor.
pub async fn append_entry(
    conn: &mut PgConn,
    wallet: &WalletRow,
    entry: NewEntry<'_>,
    at: DateTime<Utc>,
) -> Result<(Transaction, WalletRow), TxError> {
    // Entry times never run backwards within a wallet (as_of and the export order rely on it),
    // even if this clock is behind the one that stamped the wallet's last change.
    let at = at.max(wallet.updated_at);
    let balance_after = match entry.direction {
        Direction::In => wallet.balance + entry.amount,
        Direction::Out => wallet.balance - entry.amount,
    };
    debug_assert!(balance_after - entry.held_after + wallet.overdraft_limit >= Decimal::ZERO);
    let direction = match (entry.kind, entry.direction) {
        ("reversal", Direction::In) => Some("credit"),
        ("reversal", Direction::Out) => Some("debit"),
        _ => None,
    };
    let row = LedgerEntryRow {
        wallet_id: wallet.id,
        seq: wallet.last_seq + 1,
        id: entry.id.as_uuid(),
        tenant_id: wallet.tenant_id,
        entry_type: entry.kind.to_owned(),
        amount: entry.amount,
        currency: entry.currency.to_owned(),
        balance_before: wallet.balance,
        balance_after,
        reference: entry.reference.map(str::to_owned),
        description: entry.description.map(str::to_owned),
        metadata: entry.metadata.clone(),
        idempotency_key: entry.idempotency_key.to_owned(),
        created_at: at,
        direction: direction.map(str::to_owned),
        hold_id: entry.hold_id,
        reverses: entry.reverses,
        prev_hash: Some(wallet.last_hash.clone()),
        hash: None,
    };
    let sealed = Transaction::sealed(&row, &wallet.last_hash).map_err(TxError::Render)?;

    // The wallet update and the entry insert are pipelined: one round trip, run in the order
    // sent (`biased`), which the chain trigger needs (it checks the entry against the updated
    // wallet row).
    let (mut wallet_conn, mut entry_conn): (&PgConn, &PgConn) = (conn, conn);
    let move_wallet = diesel::update(wallets::table.find(wallet.id))
        .set((
            wallets::balance.eq(balance_after),
            wallets::held.eq(entry.held_after),
            wallets::version.eq(wallets::version + 1),
            wallets::last_seq.eq(row.seq),
            wallets::last_hash.eq(&sealed.hash),
            wallets::updated_at.eq(at),
        ))
        .returning(WalletRow::as_returning())
        .get_result::<WalletRow>(&mut wallet_conn);
    let insert_entry = diesel::insert_into(ledger_entries::table)
        .values(NewLedgerEntry {
            wallet_id: row.wallet_id,
            seq: row.seq,
            id: row.id,
            tenant_id: row.tenant_id,
            entry_type: &row.entry_type,
            amount: row.amount,
            currency: &row.currency,
            balance_before: row.balance_before,
            balance_after: row.balance_after,
            reference: row.reference.as_deref(),
            description: row.description.as_deref(),
            metadata: &row.metadata,
            idempotency_key: &row.idempotency_key,
            created_at: row.created_at,
            direction: row.direction.as_deref(),
            hold_id: row.hold_id,
            reverses: row.reverses,
            prev_hash: &wallet.last_hash,
            hash: &sealed.hash,
        })
        .returning(LedgerEntryRow::as_returning())
        .get_result::<LedgerEntryRow>(&mut entry_conn);
    let (moved, stored) = tokio::try_join!(biased; move_wallet, insert_entry)?;
    let shown = Transaction::from_row(&stored).map_err(TxError::Render)?;
    // Equal renderings include equal hashes, and `sealed.hash` is the hash of that very
    // rendering: no second hash computation is needed.
    if shown != sealed {
        return Err(TxError::Render(anyhow::anyhow!(
            "entry {} of wallet {} reads back differently from what was hashed",
            row.seq,
            row.wallet_id
        )));
    }
    Ok((shown, moved))
}
