//! Layers 3 and 4: the row-locked Postgres transaction and the in-lock balance check.
//!
//! One transaction: lock the wallet row (`SELECT … FOR UPDATE`), decide from the locked row,
//! then write the wallet, the ledger entry and the stored response (the key's one row; a row
//! already there rolls everything back) and commit them together. Whatever the Redis lock did,
//! two debits of one wallet meet here one after the other, and each sees the balance the other
//! committed.

use rust_decimal::Decimal;

use super::append::{Direction, NewEntry, append_entry, entry_time};
use super::changes::Changes;
use super::holds::release_expired_holds;
use super::idempotency::Claim;
use super::outcome::{Decline, StoredResponse};
use super::transaction::TxError;
use crate::db::PgConn;
use crate::db::models::WalletRow;
use crate::domain::money::BALANCE_MAX;
use crate::domain::{BoundedText, Metadata, Money, WalletId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Debit,
    Credit,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Debit => "debit",
            EntryKind::Credit => "credit",
        }
    }
}

/// A parsed debit or credit request.
#[derive(Debug, Clone)]
pub struct EntryCommand {
    pub wallet: WalletId,
    pub kind: EntryKind,
    pub money: Money,
    pub reference: Option<BoundedText>,
    pub description: Option<BoundedText>,
    pub metadata: serde_json::Value,
}

impl EntryCommand {
    pub fn new(
        wallet: WalletId,
        kind: EntryKind,
        money: Money,
        reference: Option<BoundedText>,
        description: Option<BoundedText>,
        metadata: Metadata,
    ) -> Self {
        Self {
            wallet,
            kind,
            money,
            reference,
            description,
            metadata: metadata.into_value(),
        }
    }
}

/// What the in-lock check decided.
#[derive(Debug)]
enum Verdict {
    /// Apply the entry; the wallet's balance becomes this.
    Apply { balance_after: Decimal },
    /// A business decline: stored and replayed like a success.
    Decline(Decline),
    /// Input that turned out invalid only against the wallet (a credit past the maximum
    /// balance): answered 400 and not stored, like any validation error.
    Reject(String),
}

/// Layer 4, as a pure function of the locked row: easy to read and to test.
fn decide(wallet: Option<&WalletRow>, command: &EntryCommand) -> Verdict {
    let Some(wallet) = wallet else {
        return Verdict::Decline(Decline::WalletNotFound);
    };
    if wallet.status != "active" {
        return Verdict::Decline(Decline::WalletClosed);
    }
    let currency = command.money.currency();
    if wallet.currency.trim() != currency.code() {
        return Verdict::Decline(Decline::CurrencyMismatch(format!(
            "request currency {} differs from the wallet's {}",
            currency.code(),
            wallet.currency.trim()
        )));
    }
    let amount = command.money.amount();
    match command.kind {
        EntryKind::Debit => {
            let available = wallet.available();
            if available < amount {
                return Verdict::Decline(Decline::InsufficientFunds(format!(
                    "available {} is less than the requested {}",
                    currency.render(available),
                    currency.render(amount)
                )));
            }
            Verdict::Apply {
                balance_after: wallet.balance - amount,
            }
        }
        EntryKind::Credit => {
            let balance_after = wallet.balance + amount;
            if balance_after > BALANCE_MAX {
                return Verdict::Reject(format!(
                    "this credit would take the balance above the maximum {BALANCE_MAX}"
                ));
            }
            Verdict::Apply { balance_after }
        }
    }
}

/// What one entry did inside the transaction.
pub(super) struct Posted {
    /// The response to send (and store), or why the entry was refused against the locked row
    /// (a 400, stored nowhere).
    pub answer: Result<StoredResponse, String>,
    /// The wallet as the entry left it (for the next entry of a batch).
    pub wallet: Option<WalletRow>,
}

/// Layers 3 and 4 for one entry, inside the transaction, on the wallet row the transaction
/// has locked (`None` if this tenant has no such wallet).
pub(super) async fn post_entry_once(
    conn: &mut PgConn,
    claim: &Claim,
    wallet: Option<WalletRow>,
    command: &EntryCommand,
    changes: &mut Changes,
) -> Result<Posted, TxError> {
    let at = entry_time();
    let wallet = match wallet {
        Some(wallet) => Some(release_expired_holds(conn, wallet, at, changes).await?),
        None => None,
    };

    let response = match decide(wallet.as_ref(), command) {
        Verdict::Decline(decline) => decline.stored(),
        Verdict::Reject(reason) => {
            return Ok(Posted {
                answer: Err(reason),
                wallet,
            });
        }
        Verdict::Apply { balance_after } => {
            let Some(wallet) = wallet else {
                return Err(TxError::Render(anyhow::anyhow!(
                    "verdict Apply without a wallet"
                )));
            };
            let entry = NewEntry {
                id: claim.transaction_id(),
                kind: command.kind.as_str(),
                direction: match command.kind {
                    EntryKind::Debit => Direction::Out,
                    EntryKind::Credit => Direction::In,
                },
                amount: command.money.amount(),
                currency: command.money.currency().code(),
                reference: command.reference.as_ref().map(BoundedText::as_str),
                description: command.description.as_ref().map(BoundedText::as_str),
                metadata: &command.metadata,
                idempotency_key: claim.key().as_str(),
                hold_id: None,
                reverses: None,
                held_after: wallet.held,
            };
            let (shown, moved) = append_entry(conn, &wallet, entry, at).await?;
            debug_assert_eq!(moved.balance, balance_after);
            changes.entry_appended(&shown, &moved, None)?;
            let body = serde_json::to_vec(&shown).map_err(|e| TxError::Render(e.into()))?;
            return Ok(Posted {
                answer: Ok(StoredResponse { status: 201, body }),
                wallet: Some(moved),
            });
        }
    };
    Ok(Posted {
        answer: Ok(response),
        wallet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Currency;
    use chrono::Utc;
    use std::str::FromStr;
    use uuid::Uuid;

    fn wallet(balance: &str, overdraft: &str) -> WalletRow {
        WalletRow {
            id: Uuid::now_v7(),
            tenant_id: Uuid::now_v7(),
            currency: "EUR".into(),
            owner_ref: None,
            balance: Decimal::from_str(balance).unwrap(),
            held: Decimal::ZERO,
            overdraft_limit: Decimal::from_str(overdraft).unwrap(),
            version: 1,
            last_seq: 0,
            status: "active".into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            last_hash: crate::representation::GENESIS_HASH.to_owned(),
        }
    }

    fn command(kind: EntryKind, amount: &str, currency: &str) -> EntryCommand {
        let currency = Currency::parse(currency).unwrap();
        EntryCommand::new(
            WalletId::generate(),
            kind,
            Money::parse(amount, currency).unwrap(),
            None,
            None,
            Metadata::default(),
        )
    }

    #[test]
    fn debit_needs_available_funds_including_overdraft() {
        let debit = command(EntryKind::Debit, "150.00", "EUR");
        assert!(matches!(
            decide(Some(&wallet("100.00", "0")), &debit),
            Verdict::Decline(Decline::InsufficientFunds(_))
        ));
        match decide(Some(&wallet("100.00", "50.00")), &debit) {
            Verdict::Apply { balance_after } => assert_eq!(balance_after, Decimal::from(-50)),
            other => panic!("expected Apply, got {other:?}"),
        }
    }

    #[test]
    fn declines_for_missing_closed_and_foreign_currency_wallets() {
        let debit = command(EntryKind::Debit, "1.00", "EUR");
        assert!(matches!(
            decide(None, &debit),
            Verdict::Decline(Decline::WalletNotFound)
        ));
        let mut closed = wallet("10.00", "0");
        closed.status = "closed".into();
        assert!(matches!(
            decide(Some(&closed), &debit),
            Verdict::Decline(Decline::WalletClosed)
        ));
        let usd = command(EntryKind::Credit, "1.00", "USD");
        assert!(matches!(
            decide(Some(&wallet("10.00", "0")), &usd),
            Verdict::Decline(Decline::CurrencyMismatch(_))
        ));
    }

    #[test]
    fn credit_past_the_maximum_balance_is_rejected_not_declined() {
        let credit = command(EntryKind::Credit, "1000000000000000", "EUR");
        assert!(matches!(
            decide(Some(&wallet("999999999999999999", "0")), &credit),
            Verdict::Reject(_)
        ));
    }
}
