//! Holds (API.md Part 2): money reserved now and captured later. Each command runs inside the
//! pipeline's row-locked transaction of the hold's wallet, so a capture racing a void, or two
//! captures of one hold, meet one after the other on the wallet row and the second sees the
//! first's outcome. The database states the same rules (forward-only holds, `held` equal to
//! the sum of active holds, one capture per hold).

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use rust_decimal::Decimal;

use super::append::{Direction, NewEntry, append_entry, entry_time};
use super::changes::Changes;
use super::idempotency::Claim;
use super::outcome::{Decline, StoredResponse};
use super::transaction::TxError;
use crate::db::PgConn;
use crate::db::models::{HoldRow, WalletRow};
use crate::db::schema::{holds, wallets};
use crate::domain::{BoundedText, HoldId, Money, PendingAmount, WalletId};
use crate::outbox::EventType;
use crate::representation::{Hold, render_timestamp};

/// Longest and default hold lifetime (API.md: 1 ≤ expires_in_seconds ≤ 604800, default 900).
pub const HOLD_SECONDS_MAX: u32 = 604_800;
pub const HOLD_SECONDS_DEFAULT: u32 = 900;

/// A parsed `POST /v1/wallets/{id}/holds`.
#[derive(Debug, Clone)]
pub struct PlaceHoldCommand {
    pub wallet: WalletId,
    pub money: Money,
    pub reference: Option<BoundedText>,
    pub expires_in: Duration,
}

/// A parsed `POST /v1/holds/{id}/capture`; `wallet` is resolved before the lock.
#[derive(Debug, Clone)]
pub struct CaptureCommand {
    pub hold: HoldId,
    pub amount: Option<PendingAmount>,
    pub wallet: Option<WalletId>,
}

/// A parsed `POST /v1/holds/{id}/void`; `wallet` is resolved before the lock.
#[derive(Debug, Clone)]
pub struct VoidCommand {
    pub hold: HoldId,
    pub wallet: Option<WalletId>,
}

fn json_response<T: serde::Serialize>(status: u16, value: &T) -> Result<StoredResponse, TxError> {
    let body = serde_json::to_vec(value).map_err(|e| TxError::Render(e.into()))?;
    Ok(StoredResponse { status, body })
}

/// Places a hold: the same checks as a debit, inside the wallet's row lock (`wallet`, the
/// locked row; `None` if this tenant has no such wallet).
pub(super) async fn place_once(
    conn: &mut PgConn,
    claim: &Claim,
    wallet: Option<WalletRow>,
    command: &PlaceHoldCommand,
    changes: &mut Changes,
) -> Result<StoredResponse, TxError> {
    let response = match wallet {
        None => Decline::WalletNotFound.stored(),
        Some(wallet) => {
            let at = entry_time();
            let wallet = release_expired_holds(conn, wallet, at, changes).await?;
            match refuse_to_reserve(&wallet, &command.money) {
                Some(decline) => decline.stored(),
                None => place(conn, claim, &wallet, command, at, changes).await?,
            }
        }
    };
    Ok(response)
}

async fn place(
    conn: &mut PgConn,
    claim: &Claim,
    wallet: &WalletRow,
    command: &PlaceHoldCommand,
    at: DateTime<Utc>,
    changes: &mut Changes,
) -> Result<StoredResponse, TxError> {
    let expires_at = at
        + chrono::Duration::from_std(command.expires_in).map_err(|e| TxError::Render(e.into()))?;
    let hold: HoldRow = diesel::insert_into(holds::table)
        .values((
            holds::wallet_id.eq(wallet.id),
            holds::id.eq(claim.hold_id().as_uuid()),
            holds::tenant_id.eq(wallet.tenant_id),
            holds::amount.eq(command.money.amount()),
            holds::currency.eq(command.money.currency().code()),
            holds::status.eq("active"),
            holds::reference.eq(command.reference.as_ref().map(BoundedText::as_str)),
            holds::idempotency_key.eq(claim.key().as_str()),
            holds::expires_at.eq(expires_at),
            holds::created_at.eq(at),
            holds::updated_at.eq(at),
        ))
        .returning(HoldRow::as_returning())
        .get_result(conn)
        .await?;
    let moved = move_held(conn, wallet, wallet.held + hold.amount, 1, at).await?;
    let shown = Hold::from_row(&hold, at).map_err(TxError::Render)?;
    changes.hold_changed(EventType::HoldCreated, &shown, &moved, at)?;
    json_response(201, &shown)
}

/// Why the wallet cannot reserve `money`, if it cannot: the debit rules.
fn refuse_to_reserve(wallet: &WalletRow, money: &Money) -> Option<Decline> {
    if wallet.status != "active" {
        return Some(Decline::WalletClosed);
    }
    let currency = money.currency();
    if wallet.currency.trim() != currency.code() {
        return Some(Decline::CurrencyMismatch(format!(
            "request currency {} differs from the wallet's {}",
            currency.code(),
            wallet.currency.trim()
        )));
    }
    let available = wallet.available();
    (available < money.amount()).then(|| {
        Decline::InsufficientFunds(format!(
            "available {} is less than the requested {}",
            currency.render(available),
            currency.render(money.amount())
        ))
    })
}

/// Captures a hold (fully, or the given amount): one debit entry naming the hold, and the
/// whole hold released.
pub(super) async fn capture_once(
    conn: &mut PgConn,
    claim: &Claim,
    wallet: Option<WalletRow>,
    command: &CaptureCommand,
    changes: &mut Changes,
) -> Result<StoredResponse, TxError> {
    let found = lock_hold(conn, claim, command.hold, wallet).await?;
    // The time of the decision: taken once the locks are held, never before a wait for them.
    let at = entry_time();
    let response = match found {
        Err(decline) => decline.stored(),
        Ok((wallet, _)) if wallet.status != "active" => Decline::WalletClosed.stored(),
        Ok((wallet, hold)) => match usable(conn, &wallet, &hold, at, changes).await? {
            Some(decline) => decline.stored(),
            None => {
                let amount = command.amount.as_ref();
                capture(conn, claim, &wallet, &hold, amount, at, changes).await?
            }
        },
    };
    Ok(response)
}

async fn capture(
    conn: &mut PgConn,
    claim: &Claim,
    wallet: &WalletRow,
    hold: &HoldRow,
    amount: Option<&PendingAmount>,
    at: DateTime<Utc>,
    changes: &mut Changes,
) -> Result<StoredResponse, TxError> {
    let currency = crate::domain::Currency::parse(hold.currency.trim())
        .map_err(|e| TxError::Render(anyhow::anyhow!("stored currency is invalid: {e}")))?;
    let amount = match amount {
        None => hold.amount,
        Some(pending) => pending
            .in_currency(currency)
            .map_err(|e| TxError::Rejected(format!("amount: {e}")))?
            .amount(),
    };
    if amount > hold.amount {
        return Ok(Decline::CaptureExceedsHold(format!(
            "capture {} is more than the hold's {}",
            currency.render(amount),
            currency.render(hold.amount)
        ))
        .stored());
    }
    let captured: HoldRow = diesel::update(holds::table.find((hold.wallet_id, hold.id)))
        .set((
            holds::status.eq("captured"),
            holds::captured_amount.eq(amount),
            holds::updated_at.eq(at),
        ))
        .returning(HoldRow::as_returning())
        .get_result(conn)
        .await?;
    let metadata = serde_json::Value::Object(serde_json::Map::new());
    let entry = NewEntry {
        id: claim.transaction_id(),
        kind: "debit",
        direction: Direction::Out,
        amount,
        currency: currency.code(),
        reference: hold.reference.as_deref(),
        description: None,
        metadata: &metadata,
        idempotency_key: claim.key().as_str(),
        hold_id: Some(hold.id),
        reverses: None,
        held_after: wallet.held - hold.amount,
    };
    let (shown, moved) = append_entry(conn, wallet, entry, at).await?;
    let captured = Hold::from_row(&captured, at).map_err(TxError::Render)?;
    changes.entry_appended(&shown, &moved, Some(&captured))?;
    json_response(201, &shown)
}

/// Voids a hold: released, nothing debited.
pub(super) async fn void_once(
    conn: &mut PgConn,
    claim: &Claim,
    wallet: Option<WalletRow>,
    command: &VoidCommand,
    changes: &mut Changes,
) -> Result<StoredResponse, TxError> {
    let found = lock_hold(conn, claim, command.hold, wallet).await?;
    // The time of the decision: taken once the locks are held, never before a wait for them.
    let at = entry_time();
    let response = match found {
        Err(decline) => decline.stored(),
        Ok((wallet, hold)) => match usable(conn, &wallet, &hold, at, changes).await? {
            // A hold found expired cannot be voided either: it is no longer active.
            Some(Decline::HoldExpired(_)) => Decline::HoldNotActive("expired".to_owned()).stored(),
            Some(decline) => decline.stored(),
            None => {
                let voided =
                    release(conn, &wallet, &hold, EventType::HoldVoided, at, changes).await?;
                json_response(200, &voided)?
            }
        },
    };
    Ok(response)
}

/// The hold row-locked, on its wallet's locked row (`None` if this tenant has no such wallet, or
/// the hold's wallet was not found before the lock); a hold that is missing (or another
/// tenant's) is a decline.
async fn lock_hold(
    conn: &mut PgConn,
    claim: &Claim,
    hold: HoldId,
    wallet: Option<WalletRow>,
) -> Result<Result<(WalletRow, HoldRow), Decline>, TxError> {
    let Some(wallet) = wallet else {
        return Ok(Err(Decline::HoldNotFound));
    };
    let row: Option<HoldRow> = holds::table
        .find((wallet.id, hold.as_uuid()))
        .filter(holds::tenant_id.eq(claim.tenant().as_uuid()))
        .select(HoldRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()?;
    Ok(row.map(|row| (wallet, row)).ok_or(Decline::HoldNotFound))
}

/// Whether the hold can still be captured or voided. A hold found past its expiry is expired
/// here and now (released, as the sweeper would), and the decline says so.
async fn usable(
    conn: &mut PgConn,
    wallet: &WalletRow,
    hold: &HoldRow,
    at: DateTime<Utc>,
    changes: &mut Changes,
) -> Result<Option<Decline>, TxError> {
    // An expired hold is `hold_expired` whether the sweeper, an earlier request or this one
    // found it so.
    if hold.status == "expired" {
        return Ok(Some(Decline::HoldExpired(render_timestamp(
            hold.expires_at,
        ))));
    }
    if hold.status != "active" {
        return Ok(Some(Decline::HoldNotActive(hold.status.clone())));
    }
    if hold.expires_at <= at {
        release(conn, wallet, hold, EventType::HoldExpired, at, changes).await?;
        return Ok(Some(Decline::HoldExpired(render_timestamp(
            hold.expires_at,
        ))));
    }
    Ok(None)
}

/// Ends an active hold without a capture (`hold.voided` or `hold.expired`) and releases its
/// amount; returns the hold as it now is.
async fn release(
    conn: &mut PgConn,
    wallet: &WalletRow,
    hold: &HoldRow,
    event: EventType,
    at: DateTime<Utc>,
    changes: &mut Changes,
) -> Result<Hold, TxError> {
    let status = match event {
        EventType::HoldVoided => "voided",
        _ => "expired",
    };
    let ended: HoldRow = diesel::update(holds::table.find((hold.wallet_id, hold.id)))
        .set((holds::status.eq(status), holds::updated_at.eq(at)))
        .returning(HoldRow::as_returning())
        .get_result(conn)
        .await?;
    let moved = move_held(conn, wallet, wallet.held - hold.amount, 1, at).await?;
    let shown = Hold::from_row(&ended, at).map_err(TxError::Render)?;
    changes.hold_changed(event, &shown, &moved, at)?;
    Ok(shown)
}

/// Sets the locked wallet's `held` and raises its version by `changes` (one per hold that
/// changed); returns the wallet as it now is.
async fn move_held(
    conn: &mut PgConn,
    wallet: &WalletRow,
    held: Decimal,
    changes: i64,
    at: DateTime<Utc>,
) -> Result<WalletRow, TxError> {
    debug_assert!(held >= Decimal::ZERO && changes >= 1);
    Ok(diesel::update(wallets::table.find(wallet.id))
        .set((
            wallets::held.eq(held),
            wallets::version.eq(wallets::version + changes),
            wallets::updated_at.eq(at),
        ))
        .returning(WalletRow::as_returning())
        .get_result(conn)
        .await?)
}

/// The wallet a hold belongs to, for the lock taken before the transaction (`None`: no such
/// hold for this tenant; the transaction then stores `hold_not_found`).
pub async fn hold_wallet(
    conn: &mut PgConn,
    tenant: crate::domain::TenantId,
    hold: HoldId,
) -> QueryResult<Option<WalletId>> {
    let wallet = crate::db::routes::wallet_of(conn, tenant.as_uuid(), hold.as_uuid()).await?;
    Ok(wallet.map(WalletId::from_uuid))
}

/// Ends every active hold past its expiry on `wallet` (row-locked): the sweeper's step.
/// Returns how many were expired.
pub(super) async fn expire_due(
    conn: &mut PgConn,
    wallet: uuid::Uuid,
    at: DateTime<Utc>,
    changes: &mut Changes,
) -> Result<usize, TxError> {
    // SKIP LOCKED: a wallet busy with a request is swept at the next run, never waited for.
    let Some(locked): Option<WalletRow> = wallets::table
        .find(wallet)
        .select(WalletRow::as_select())
        .for_update()
        .skip_locked()
        .first(conn)
        .await
        .optional()?
    else {
        return Ok(0);
    };
    let (_, expired) = release_due(conn, locked, at, changes).await?;
    Ok(expired)
}

/// Inside any transaction that decides on a locked wallet's `available`: holds past their
/// expiry no longer reserve money, so they are released first (nothing to do, and no
/// statement, for a wallet that holds nothing). Returns the wallet as it now is.
pub(super) async fn release_expired_holds(
    conn: &mut PgConn,
    wallet: WalletRow,
    at: DateTime<Utc>,
    changes: &mut Changes,
) -> Result<WalletRow, TxError> {
    if wallet.held.is_zero() {
        return Ok(wallet);
    }
    Ok(release_due(conn, wallet, at, changes).await?.0)
}

/// Expires every due hold of the locked wallet in one statement. Each hold is one change of
/// the wallet (one version, one `hold.expired` event whose snapshot has that hold released
/// and the later ones not yet), so the wallet's version rises by the number of holds.
async fn release_due(
    conn: &mut PgConn,
    wallet: WalletRow,
    at: DateTime<Utc>,
    changes: &mut Changes,
) -> Result<(WalletRow, usize), TxError> {
    let mut expired: Vec<HoldRow> = diesel::update(
        holds::table
            .filter(holds::wallet_id.eq(wallet.id))
            .filter(holds::status.eq("active"))
            .filter(holds::expires_at.le(at)),
    )
    .set((holds::status.eq("expired"), holds::updated_at.eq(at)))
    .returning(HoldRow::as_returning())
    .get_results(conn)
    .await?;
    if expired.is_empty() {
        return Ok((wallet, 0));
    }
    expired.sort_by_key(|hold| (hold.expires_at, hold.id));
    let released: Decimal = expired.iter().map(|hold| hold.amount).sum();
    let count = i64::try_from(expired.len()).map_err(|e| TxError::Render(e.into()))?;
    let moved = move_held(conn, &wallet, wallet.held - released, count, at).await?;
    let mut step = wallet;
    for hold in &expired {
        step.held -= hold.amount;
        step.version += 1;
        step.updated_at = moved.updated_at;
        let shown = Hold::from_row(hold, at).map_err(TxError::Render)?;
        changes.hold_changed(EventType::HoldExpired, &shown, &step, at)?;
    }
    debug_assert!(step.version == moved.version && step.held == moved.held);
    Ok((moved, expired.len()))
}
