//! `/v1/wallets…` routes: create, read, debit, credit, ledger.

use actix_web::{HttpRequest, HttpResponse, web};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::{JsonBody, idempotency_key, query};
use super::representations::{LedgerPage, Transaction, Wallet};
use super::respond::{json_ok, respond};
use crate::auth::Caller;
use crate::db::models::{LedgerEntryRow, WalletRow};
use crate::db::schema::{ledger_entries, wallets};
use crate::domain::{BoundedText, Currency, Metadata, Money, NonNegativeAmount, Scope, WalletId};
use crate::pipeline::create_wallet::CreateWalletCommand;
use crate::pipeline::idempotency::{Fingerprint, IdempotentRequest};
use crate::pipeline::ledger::{EntryCommand, EntryKind};
use crate::pipeline::{self, run_detached};
use crate::startup::AppState;

/// Longest `owner_ref` and `reference`.
const REFERENCE_CHARS_MAX: usize = 255;
/// Longest `description`.
const DESCRIPTION_CHARS_MAX: usize = 1024;
/// Default and largest page of `GET /v1/wallets/{id}/ledger`.
const LEDGER_PAGE_DEFAULT: i64 = 100;
const LEDGER_PAGE_MAX: i64 = 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWalletBody {
    /// ISO 4217 alpha-3, upper case.
    #[schema(example = "EUR")]
    currency: String,
    #[schema(example = "user-42")]
    owner_ref: Option<String>,
    /// Decimal string, >= 0, at most the currency's minor-unit digits. Default "0".
    #[schema(example = "0.00")]
    overdraft_limit: Option<String>,
}

impl CreateWalletBody {
    fn parse(self) -> Result<CreateWalletCommand, ApiError> {
        let invalid = |e: &dyn std::fmt::Display| ApiError::Validation(e.to_string());
        let currency = Currency::parse(&self.currency).map_err(|e| invalid(&e))?;
        let overdraft_limit = match self.overdraft_limit {
            Some(text) => NonNegativeAmount::parse(&text, currency)
                .map_err(|e| ApiError::Validation(format!("overdraft_limit: {e}")))?,
            None => NonNegativeAmount::zero(),
        };
        let owner_ref =
            BoundedText::parse_optional("owner_ref", self.owner_ref, REFERENCE_CHARS_MAX)
                .map_err(|e| invalid(&e))?;
        Ok(CreateWalletCommand {
            currency,
            owner_ref,
            overdraft_limit,
        })
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryBody {
    /// Decimal string, > 0, at most 10^15, at most the currency's minor-unit digits.
    #[schema(example = "12.50")]
    amount: String,
    #[schema(example = "EUR")]
    currency: String,
    #[schema(example = "booking-123")]
    reference: Option<String>,
    #[schema(example = "Booking payment")]
    description: Option<String>,
    /// Any JSON object, returned as given.
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An entry body's validated fields, before the wallet id is known to be well-formed.
struct ParsedEntry {
    money: Money,
    reference: Option<BoundedText>,
    description: Option<BoundedText>,
    metadata: Metadata,
}

impl ParsedEntry {
    fn into_command(self, wallet: WalletId, kind: EntryKind) -> EntryCommand {
        EntryCommand::new(
            wallet,
            kind,
            self.money,
            self.reference,
            self.description,
            self.metadata,
        )
    }
}

impl EntryBody {
    fn parse(self) -> Result<ParsedEntry, ApiError> {
        let invalid = |e: &dyn std::fmt::Display| ApiError::Validation(e.to_string());
        let currency = Currency::parse(&self.currency).map_err(|e| invalid(&e))?;
        let money = Money::parse(&self.amount, currency).map_err(|e| invalid(&e))?;
        let reference =
            BoundedText::parse_optional("reference", self.reference, REFERENCE_CHARS_MAX)
                .map_err(|e| invalid(&e))?;
        let description =
            BoundedText::parse_optional("description", self.description, DESCRIPTION_CHARS_MAX)
                .map_err(|e| invalid(&e))?;
        let metadata = Metadata::parse(self.metadata).map_err(|e| invalid(&e))?;
        Ok(ParsedEntry {
            money,
            reference,
            description,
            metadata,
        })
    }
}

/// Create a wallet.
#[utoipa::path(post, path = "/v1/wallets", tag = "wallets",
    request_body = CreateWalletBody,
    params(("Idempotency-Key" = String, Header, description = "1-255 printable ASCII characters")),
    responses((status = 201, body = Wallet), (status = "4XX", description = "problem+json")),
    security(("bearer" = ["wallets:write"])))]
pub async fn create_wallet(
    request: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WalletsWrite)?;
    let key = idempotency_key(&request)?;
    let body = JsonBody::<CreateWalletBody>::read(&request, payload).await?;
    let command = body.value.parse()?;
    let idempotent = IdempotentRequest {
        tenant: caller.tenant,
        key,
        fingerprint: Fingerprint::of("POST", "/v1/wallets", &body.canonical),
        wallet: None,
    };
    let state = state.get_ref().clone();
    let outcome = run_detached(pipeline::execute_create_wallet(state, idempotent, command)).await?;
    Ok(respond(outcome))
}

/// Read a wallet.
#[utoipa::path(get, path = "/v1/wallets/{id}", tag = "wallets",
    params(("id" = String, Path, description = "wallet id")),
    responses((status = 200, body = Wallet), (status = 404, description = "wallet_not_found")),
    security(("bearer" = ["wallets:read"])))]
pub async fn get_wallet(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WalletsRead)?;
    let row = find_wallet(&state, &caller, &id).await?;
    json_ok(&Wallet::from_row(&row).map_err(ApiError::Internal)?)
}

/// Debit a wallet (four layers: idempotency, Redis lock, row lock, balance check).
#[utoipa::path(post, path = "/v1/wallets/{id}/debit", tag = "wallets",
    request_body = EntryBody,
    params(("id" = String, Path, description = "wallet id"),
           ("Idempotency-Key" = String, Header, description = "1-255 printable ASCII characters")),
    responses((status = 201, body = Transaction),
              (status = 422, description = "insufficient_funds, currency_mismatch, wallet_closed, idempotency_key_reused"),
              (status = 409, description = "idempotency_key_in_progress"),
              (status = 503, description = "lock_timeout, unavailable")),
    security(("bearer" = ["wallets:write"])))]
pub async fn debit(
    request: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    post_entry(request, state, caller, &id, payload, EntryKind::Debit).await
}

/// Credit a wallet.
#[utoipa::path(post, path = "/v1/wallets/{id}/credit", tag = "wallets",
    request_body = EntryBody,
    params(("id" = String, Path, description = "wallet id"),
           ("Idempotency-Key" = String, Header, description = "1-255 printable ASCII characters")),
    responses((status = 201, body = Transaction),
              (status = 422, description = "currency_mismatch, wallet_closed, idempotency_key_reused"),
              (status = 409, description = "idempotency_key_in_progress"),
              (status = 503, description = "lock_timeout, unavailable")),
    security(("bearer" = ["wallets:write"])))]
pub async fn credit(
    request: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    post_entry(request, state, caller, &id, payload, EntryKind::Credit).await
}

async fn post_entry(
    request: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    id: &str,
    payload: web::Payload,
    kind: EntryKind,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WalletsWrite)?;
    let key = idempotency_key(&request)?;
    let body = JsonBody::<EntryBody>::read(&request, payload).await?;
    let parsed = body.value.parse()?;
    // Checked after the body, so a non-UUID id behaves exactly like an unknown one.
    let wallet = WalletId::parse(id).ok_or(ApiError::WalletNotFound)?;
    let command = parsed.into_command(wallet, kind);
    let idempotent = IdempotentRequest {
        tenant: caller.tenant,
        key,
        fingerprint: Fingerprint::of(
            "POST",
            &format!("/v1/wallets/{wallet}/{}", kind.as_str()),
            &body.canonical,
        ),
        wallet: Some(wallet),
    };
    let state = state.get_ref().clone();
    let outcome = run_detached(pipeline::execute_entry(state, idempotent, command)).await?;
    Ok(respond(outcome))
}

#[derive(Debug, Deserialize)]
struct LedgerQuery {
    limit: Option<String>,
    after: Option<String>,
}

/// A wallet's ledger, oldest first, with a keyset cursor.
#[utoipa::path(get, path = "/v1/wallets/{id}/ledger", tag = "wallets",
    params(("id" = String, Path, description = "wallet id"),
           ("limit" = Option<i64>, Query, description = "1..=1000, default 100"),
           ("after" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses((status = 200, body = LedgerPage), (status = 404, description = "wallet_not_found")),
    security(("bearer" = ["wallets:read"])))]
pub async fn ledger(
    request: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WalletsRead)?;
    let params: LedgerQuery = query(&request)?;
    let limit = match params.limit.as_deref() {
        None => LEDGER_PAGE_DEFAULT,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=LEDGER_PAGE_MAX).contains(n))
            .ok_or_else(|| {
                ApiError::Validation(format!(
                    "limit must be an integer from 1 to {LEDGER_PAGE_MAX}"
                ))
            })?,
    };
    let after_seq = match params.after.as_deref() {
        None => 0,
        Some(cursor) => parse_cursor(cursor)?,
    };
    let wallet = find_wallet(&state, &caller, &id).await?;
    let mut conn = state.db.get().await.map_err(ApiError::from_pool)?;
    let mut rows: Vec<LedgerEntryRow> = ledger_entries::table
        .filter(ledger_entries::wallet_id.eq(wallet.id))
        .filter(ledger_entries::seq.gt(after_seq))
        .order(ledger_entries::seq.asc())
        .limit(limit + 1)
        .select(LedgerEntryRow::as_select())
        .load(&mut conn)
        .await
        .map_err(ApiError::from_db)?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = has_more
        .then(|| rows.last().map(|r| r.seq.to_string()))
        .flatten();
    let entries = rows
        .iter()
        .map(Transaction::from_row)
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(ApiError::Internal)?;
    json_ok(&LedgerPage {
        entries,
        next_cursor,
    })
}

/// A cursor is the `seq` of the last entry of the previous page.
fn parse_cursor(cursor: &str) -> Result<i64, ApiError> {
    cursor
        .parse::<i64>()
        .ok()
        .filter(|seq| *seq >= 0)
        .ok_or_else(|| ApiError::Validation("after is not a cursor returned by this API".into()))
}

/// The caller's wallet, or 404 for an unknown id, another tenant's id, or a non-UUID.
async fn find_wallet(state: &AppState, caller: &Caller, id: &str) -> Result<WalletRow, ApiError> {
    let wallet = WalletId::parse(id).ok_or(ApiError::WalletNotFound)?;
    let mut conn = state.db.get().await.map_err(ApiError::from_pool)?;
    wallets::table
        .filter(wallets::id.eq(wallet.as_uuid()))
        .filter(wallets::tenant_id.eq(caller.tenant.as_uuid()))
        .select(WalletRow::as_select())
        .first(&mut conn)
        .await
        .optional()
        .map_err(ApiError::from_db)?
        .ok_or(ApiError::WalletNotFound)
}
