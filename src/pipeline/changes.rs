//! What one transaction changed, collected as it goes: the events it must write before it
//! commits (the transactional outbox, API.md Part 3) and the wallet as it ends up (for the
//! balance cache, after the commit).
//!
//! Every change of a wallet raises its version by one and records one event here with the
//! wallet as it is right after that change, so the events of a wallet are numbered by its
//! version without gaps (the database checks the same at commit). Declines change nothing and
//! record nothing; replays never reach a transaction.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;

use super::transaction::TxError;
use crate::balance_cache::{BalanceCache, Mark};
use crate::db::models::WalletRow;
use crate::domain::{TenantId, WalletId};
use crate::outbox::{EventType, NewEvent};
use crate::representation::{Hold, Transaction, Wallet};

#[derive(Debug, Default)]
pub struct Changes {
    events: Vec<NewEvent>,
    wallet: Option<WalletRow>,
    /// `wallet` as GET renders it (rendered once for the last event's snapshot, reused by
    /// the cache after the commit).
    shown: Option<Wallet>,
}

/// `data.wallet` of every event: the wallet right after the change.
#[derive(Serialize)]
struct Snapshot {
    balance: String,
    held: String,
    available: String,
    version: i64,
}

fn render_error(error: impl Into<anyhow::Error>) -> TxError {
    TxError::Render(error.into())
}

impl Changes {
    /// A new wallet (`wallet.created`; `data` is the wallet).
    pub fn wallet_created(&mut self, wallet: &WalletRow) -> Result<(), TxError> {
        let shown = Wallet::from_row(wallet).map_err(render_error)?;
        let data = serde_json::to_value(&shown).map_err(render_error)?;
        self.push(EventType::WalletCreated, wallet, wallet.created_at, data)
    }

    /// A ledger entry appended: `wallet.debited`, `wallet.credited` or `wallet.reversed`, or
    /// `hold.captured` for the debit of a capture (whose `data` also carries the hold).
    pub fn entry_appended(
        &mut self,
        entry: &Transaction,
        wallet: &WalletRow,
        captured: Option<&Hold>,
    ) -> Result<(), TxError> {
        let event_type = match (entry.kind.as_str(), captured) {
            (_, Some(_)) => EventType::HoldCaptured,
            ("debit", None) => EventType::WalletDebited,
            ("credit", None) => EventType::WalletCredited,
            ("reversal", None) => EventType::WalletReversed,
            (other, None) => {
                return Err(render_error(anyhow::anyhow!(
                    "no event for an entry of type {other}"
                )));
            }
        };
        let mut data = serde_json::to_value(entry).map_err(render_error)?;
        if let (Some(hold), Value::Object(members)) = (captured, &mut data) {
            members.insert(
                "hold".to_owned(),
                serde_json::to_value(hold).map_err(render_error)?,
            );
        }
        let at = wallet.updated_at;
        self.push(event_type, wallet, at, data)
    }

    /// A hold placed, voided or expired (`data` is the hold).
    pub fn hold_changed(
        &mut self,
        event_type: EventType,
        hold: &Hold,
        wallet: &WalletRow,
        at: DateTime<Utc>,
    ) -> Result<(), TxError> {
        let data = serde_json::to_value(hold).map_err(render_error)?;
        self.push(event_type, wallet, at, data)
    }

    fn push(
        &mut self,
        event_type: EventType,
        wallet: &WalletRow,
        at: DateTime<Utc>,
        mut data: Value,
    ) -> Result<(), TxError> {
        // One event per version, in order: the outbox's order is the wallet's version.
        debug_assert!(
            self.wallet
                .as_ref()
                .is_none_or(|before| before.id == wallet.id && before.version + 1 == wallet.version),
            "events of one transaction follow the wallet's versions one by one"
        );
        let shown = Wallet::from_row(wallet).map_err(render_error)?;
        let snapshot = Snapshot {
            balance: shown.balance.clone(),
            held: shown.held.clone(),
            available: shown.available.clone(),
            version: shown.version,
        };
        let Value::Object(members) = &mut data else {
            return Err(render_error(anyhow::anyhow!("event data is not an object")));
        };
        members.insert(
            "wallet".to_owned(),
            serde_json::to_value(&snapshot).map_err(render_error)?,
        );
        let event = NewEvent::render(
            event_type,
            wallet.tenant_id,
            wallet.id,
            wallet.version,
            at,
            &data,
        )
        .map_err(TxError::Render)?;
        self.events.push(event);
        self.wallet = Some(wallet.clone());
        self.shown = Some(shown);
        Ok(())
    }

    pub fn events(&self) -> &[NewEvent] {
        &self.events
    }

    /// The wallet as this transaction leaves it, if it changed one.
    pub fn wallet(&self) -> Option<&WalletRow> {
        self.wallet.as_ref()
    }
}

/// The cache and relay side of a commit that changed a wallet, shared by the pipeline and the
/// hold sweeper: before the COMMIT the wallet's cache entry is marked pending (the events are
/// already written, in the transaction); after it the cache gets the committed wallet and the
/// relay is woken to publish the events.
#[derive(Clone)]
pub struct CommitEffects {
    cache: BalanceCache,
    relay_wake: Arc<Notify>,
}

impl CommitEffects {
    pub fn new(cache: BalanceCache, relay_wake: Arc<Notify>) -> Self {
        Self { cache, relay_wake }
    }

    /// Last inside the transaction, after the events were inserted.
    pub async fn before_commit(&self, changes: &Changes) -> Mark {
        match changes.wallet() {
            None => Mark::Off,
            Some(wallet) => {
                self.cache
                    .mark_pending(
                        TenantId::from_uuid(wallet.tenant_id),
                        WalletId::from_uuid(wallet.id),
                        wallet.version,
                    )
                    .await
            }
        }
    }

    /// Once the transaction committed.
    pub async fn after_commit(&self, changes: &Changes, mark: Mark) {
        let (Some(wallet), Some(shown)) = (changes.wallet(), changes.shown.as_ref()) else {
            return;
        };
        self.relay_wake.notify_one();
        let body = match serde_json::to_vec(shown) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, "committed wallet could not be rendered for the cache");
                return;
            }
        };
        self.cache
            .store_committed(
                TenantId::from_uuid(wallet.tenant_id),
                WalletId::from_uuid(wallet.id),
                mark,
                wallet.version,
                &body,
            )
            .await;
    }
}
