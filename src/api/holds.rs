//! `/v1/…/holds` routes: place, read, capture, void (API.md Part 2, Holds).

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{JsonBody, idempotency_key};
use super::openapi_schemas::{
    BadEntryRequest, CaptureDeclined, Forbidden, HoldNotFound, IdempotencyKeyExpired,
    IdempotencyKeyHeader, IdempotencyKeyInProgress, PayloadTooLarge, PlaceHoldDeclined,
    RateLimited, ReplayedFlag, RequestTimeout, Unauthorized, Unavailable, UnsupportedMediaType,
    VoidDeclined, WalletNotFound, examples,
};
use super::respond::{json_ok, respond};
use super::state::AppState;
use super::wallets::REFERENCE_CHARS_MAX;
use crate::auth::Caller;
use crate::db::models::HoldRow;
use crate::db::routes;
use crate::db::schema::holds;
use crate::domain::{
    BoundedText, Currency, HoldId, IdempotencyKey, Money, PendingAmount, Scope, WalletId,
};
use crate::pipeline::Command;
use crate::pipeline::holds::{
    CaptureCommand, HOLD_SECONDS_DEFAULT, HOLD_SECONDS_MAX, PlaceHoldCommand, VoidCommand,
};
use crate::pipeline::idempotency::{Fingerprint, IdempotentRequest};
use crate::representation::{Hold, Transaction};

/// `POST /v1/wallets/{id}/holds`. Its OpenAPI schema is written out in `openapi_schemas`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceHoldBody {
    amount: String,
    currency: String,
    reference: Option<String>,
    /// An integer; JSON Schema counts `900.0` as one too, so it is read as a number.
    expires_in_seconds: Option<serde_json::Number>,
}

/// `POST /v1/holds/{id}/capture`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureBody {
    amount: Option<String>,
}

/// `POST /v1/holds/{id}/void`: `{}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoidBody {}

impl PlaceHoldBody {
    fn parse(self, wallet: WalletId) -> Result<PlaceHoldCommand, ApiError> {
        let invalid = |e: &dyn std::fmt::Display| ApiError::Validation(e.to_string());
        let currency = Currency::parse(&self.currency).map_err(|e| invalid(&e))?;
        let money = Money::parse(&self.amount, currency).map_err(|e| invalid(&e))?;
        let reference =
            BoundedText::parse_optional("reference", self.reference, REFERENCE_CHARS_MAX)
                .map_err(|e| invalid(&e))?;
        let seconds = match self.expires_in_seconds {
            None => HOLD_SECONDS_DEFAULT,
            Some(number) => whole_seconds(&number).ok_or_else(|| {
                ApiError::Validation(format!(
                    "expires_in_seconds must be an integer from 1 to {HOLD_SECONDS_MAX}"
                ))
            })?,
        };
        Ok(PlaceHoldCommand {
            wallet,
            money,
            reference,
            expires_in: Duration::from_secs(u64::from(seconds)),
        })
    }
}

/// A JSON number that is a whole count of seconds within 1..=HOLD_SECONDS_MAX (`900` or `900.0`).
fn whole_seconds(number: &serde_json::Number) -> Option<u32> {
    let value = number.as_f64()?;
    let in_range = value.fract() == 0.0 && (1.0..=f64::from(HOLD_SECONDS_MAX)).contains(&value);
    // In range and whole, so the conversion is exact.
    in_range.then_some(value as u32)
}

/// An optional amount in a currency not known yet (the hold's, the entry's).
pub fn pending_amount(text: Option<String>) -> Result<Option<PendingAmount>, ApiError> {
    text.map(|t| PendingAmount::parse(t).map_err(|e| ApiError::Validation(format!("amount: {e}"))))
        .transpose()
}

/// The request as layer 1 knows it: tenant, key, and the fingerprint of method, path and body.
pub fn idempotent(
    caller: &Caller,
    key: IdempotencyKey,
    path: &str,
    canonical: &[u8],
    wallet: Option<WalletId>,
) -> IdempotentRequest {
    IdempotentRequest {
        tenant: caller.tenant,
        key,
        fingerprint: Fingerprint::of("POST", path, canonical),
        wallet,
    }
}

/// Place a hold (four layers, like a debit): reserves the amount, moves no balance.
#[utoipa::path(post, path = "/v1/wallets/{id}/holds", tag = "holds",
    description = "Reserves `amount` until `expires_in_seconds` (default 900): the wallet's \
        `held` rises and `available` falls; no ledger entry, the balance does not move until \
        capture. Declined (422 `insufficient_funds`) when `available` is short. Scope \
        `wallets:write`. Idempotent like a debit.",
    request_body(content = PlaceHoldBody, content_type = "application/json",
        example = examples::place_hold_body),
    params(("id" = uuid::Uuid, Path, description = "Wallet id (any other string answers 404)",
               example = "01936f3e-8d6a-7c4e-9a51-3f2b8c1d0e7a"),
           IdempotencyKeyHeader),
    responses(
        (status = 201, description = "The hold (or the stored answer to a retry)", body = Hold,
            headers(("Idempotent-Replayed" = ReplayedFlag, description = "`true` on a replay")),
            links(
                ("GetHold" = (operation_id = "get_hold",
                    parameters(("id" = "$response.body#/id")))),
                ("CaptureHold" = (operation_id = "capture_hold",
                    parameters(("id" = "$response.body#/id")))),
                ("VoidHold" = (operation_id = "void_hold",
                    parameters(("id" = "$response.body#/id")))),
            ),
            example = examples::hold),
        (status = 400, response = BadEntryRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = WalletNotFound),
        (status = 408, response = RequestTimeout),
        (status = 409, response = IdempotencyKeyInProgress),
        (status = 410, response = IdempotencyKeyExpired),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = PlaceHoldDeclined),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])))]
pub async fn place_hold(
    request: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WalletsWrite)?;
    let key = idempotency_key(&request)?;
    let body = JsonBody::<PlaceHoldBody>::read(&request, payload, &state.settings.server).await?;
    // Checked after the body, so a non-UUID id behaves exactly like an unknown one.
    let wallet = WalletId::parse(&id).ok_or(ApiError::WalletNotFound)?;
    let command = body.value.parse(wallet)?;
    let path = format!("/v1/wallets/{wallet}/holds");
    let idempotent = idempotent(&caller, key, &path, &body.canonical, Some(wallet));
    let outcome = state
        .pipeline
        .run(idempotent, Command::PlaceHold(command))
        .await?;
    Ok(respond(outcome))
}

/// Read a hold.
#[utoipa::path(get, path = "/v1/holds/{id}", tag = "holds",
    description = "A hold and its status (`expired` as soon as it is past `expires_at`, swept \
        or not). Scope `wallets:read`.",
    params(("id" = uuid::Uuid, Path, description = "Hold id (any other string answers 404)",
               example = "01936f3e-b1c2-7d3e-8f4a-5b6c7d8e9f0a")),
    responses(
        (status = 200, description = "The hold (`expired` once past `expires_at`)", body = Hold,
            example = examples::hold),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = HoldNotFound),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])))]
pub async fn get_hold(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WalletsRead)?;
    let hold = HoldId::parse(&id).ok_or(ApiError::HoldNotFound)?;
    let mut conn = state.db.get().await.map_err(ApiError::from_pool)?;
    let tenant = caller.tenant.as_uuid();
    let wallet = routes::wallet_of(&mut conn, tenant, hold.as_uuid())
        .await
        .map_err(ApiError::from_db)?
        .ok_or(ApiError::HoldNotFound)?;
    let row: HoldRow = holds::table
        .find((wallet, hold.as_uuid()))
        .filter(holds::tenant_id.eq(tenant))
        .select(HoldRow::as_select())
        .first(&mut conn)
        .await
        .optional()
        .map_err(ApiError::from_db)?
        .ok_or(ApiError::HoldNotFound)?;
    json_ok(&Hold::from_row(&row, Utc::now()).map_err(ApiError::Internal)?)
}

/// Capture a hold, fully or partly: a debit entry naming the hold; the whole hold is released.
#[utoipa::path(post, path = "/v1/holds/{id}/capture", tag = "holds",
    description = "Debits the captured amount (default the whole hold, at most the hold) as \
        one ledger entry whose `hold_id` is the hold, and releases the whole hold: the rest \
        returns to `available`. Scope `wallets:write`. Idempotent like a debit.",
    request_body(content = CaptureBody, content_type = "application/json",
        example = examples::capture_body),
    params(("id" = uuid::Uuid, Path, description = "Hold id (any other string answers 404)",
               example = "01936f3e-b1c2-7d3e-8f4a-5b6c7d8e9f0a"),
           IdempotencyKeyHeader),
    responses(
        (status = 201, description = "The capture's ledger entry (or the stored answer to a retry)", body = Transaction,
            headers(("Idempotent-Replayed" = ReplayedFlag, description = "`true` on a replay")),
            links(
                ("Reverse" = (operation_id = "reverse",
                    parameters(("id" = "$response.body#/id")))),
            ),
            example = examples::capture),
        (status = 400, response = BadEntryRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = HoldNotFound),
        (status = 408, response = RequestTimeout),
        (status = 409, response = IdempotencyKeyInProgress),
        (status = 410, response = IdempotencyKeyExpired),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = CaptureDeclined),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])))]
pub async fn capture_hold(
    request: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WalletsWrite)?;
    let key = idempotency_key(&request)?;
    let body = JsonBody::<CaptureBody>::read(&request, payload, &state.settings.server).await?;
    let amount = pending_amount(body.value.amount)?;
    let hold = HoldId::parse(&id).ok_or(ApiError::HoldNotFound)?;
    let path = format!("/v1/holds/{hold}/capture");
    let idempotent = idempotent(&caller, key, &path, &body.canonical, None);
    let command = CaptureCommand {
        hold,
        amount,
        wallet: None,
    };
    let outcome = state
        .pipeline
        .run(idempotent, Command::Capture(command))
        .await?;
    Ok(respond(outcome))
}

/// Void a hold: released, nothing debited.
#[utoipa::path(post, path = "/v1/holds/{id}/void", tag = "holds",
    description = "Releases an active hold; nothing is debited. The body is `{}`. Scope \
        `wallets:write`. Idempotent like a debit.",
    request_body(content = VoidBody, content_type = "application/json", example = json!({})),
    params(("id" = uuid::Uuid, Path, description = "Hold id (any other string answers 404)",
               example = "01936f3e-b1c2-7d3e-8f4a-5b6c7d8e9f0a"),
           IdempotencyKeyHeader),
    responses(
        (status = 200, description = "The voided hold (or the stored answer to a retry)", body = Hold,
            headers(("Idempotent-Replayed" = ReplayedFlag, description = "`true` on a replay")),
            example = examples::voided_hold),
        (status = 400, response = BadEntryRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = HoldNotFound),
        (status = 408, response = RequestTimeout),
        (status = 409, response = IdempotencyKeyInProgress),
        (status = 410, response = IdempotencyKeyExpired),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = VoidDeclined),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])))]
pub async fn void_hold(
    request: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WalletsWrite)?;
    let key = idempotency_key(&request)?;
    let body = JsonBody::<VoidBody>::read(&request, payload, &state.settings.server).await?;
    let hold = HoldId::parse(&id).ok_or(ApiError::HoldNotFound)?;
    let path = format!("/v1/holds/{hold}/void");
    let idempotent = idempotent(&caller, key, &path, &body.canonical, None);
    let command = VoidCommand { hold, wallet: None };
    let outcome = state
        .pipeline
        .run(idempotent, Command::Void(command))
        .await?;
    Ok(respond(outcome))
}
