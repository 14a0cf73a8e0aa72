//! `/v1/transactions/{id}`: read one entry, reverse it (API.md Part 2, Reversals).

use actix_web::{HttpRequest, HttpResponse, web};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{JsonBody, idempotency_key};
use super::holds::{idempotent, pending_amount};
use super::openapi_schemas::{
    BadEntryRequest, Forbidden, IdempotencyKeyExpired, IdempotencyKeyHeader,
    IdempotencyKeyInProgress, PayloadTooLarge, RateLimited, ReplayedFlag, RequestTimeout,
    ReverseDeclined, ReverseNotFound, TransactionNotFound, Unauthorized, Unavailable,
    UnsupportedMediaType, examples,
};
use super::respond::json_ok;
use super::respond::respond;
use super::state::AppState;
use super::wallets::DESCRIPTION_CHARS_MAX;
use crate::auth::Caller;
use crate::db::models::LedgerEntryRow;
use crate::db::routes;
use crate::db::schema::ledger_entries;
use crate::domain::{BoundedText, Scope, TransactionId};
use crate::pipeline::Command;
use crate::pipeline::reversal::ReverseCommand;
use crate::representation::Transaction;

/// Read one ledger entry.
#[utoipa::path(get, path = "/v1/transactions/{id}", tag = "transactions",
    description = "One ledger entry (debit, credit or reversal), as the debit or credit \
        answered it. Scope `wallets:read`.",
    params(("id" = uuid::Uuid, Path, description = "Transaction id (any other string answers 404)",
               example = "01936f3e-a2b4-7c6d-9e8f-0a1b2c3d4e5f")),
    responses(
        (status = 200, description = "The ledger entry", body = Transaction,
            example = examples::debit),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = TransactionNotFound),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])))]
pub async fn get_transaction(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WalletsRead)?;
    let id = TransactionId::parse(&id).ok_or(ApiError::TransactionNotFound)?;
    let mut conn = state.db.get().await.map_err(ApiError::from_pool)?;
    let tenant = caller.tenant.as_uuid();
    let wallet = routes::wallet_of(&mut conn, tenant, id.as_uuid())
        .await
        .map_err(ApiError::from_db)?
        .ok_or(ApiError::TransactionNotFound)?;
    let row: LedgerEntryRow = ledger_entries::table
        .filter(ledger_entries::wallet_id.eq(wallet))
        .filter(ledger_entries::id.eq(id.as_uuid()))
        .filter(ledger_entries::tenant_id.eq(tenant))
        .select(LedgerEntryRow::as_select())
        .first(&mut conn)
        .await
        .optional()
        .map_err(ApiError::from_db)?
        .ok_or(ApiError::TransactionNotFound)?;
    json_ok(&Transaction::from_row(&row).map_err(ApiError::Internal)?)
}

/// `POST /v1/transactions/{id}/reverse`. Its OpenAPI schema is written out in `openapi_schemas`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseBody {
    amount: Option<String>,
    reason: Option<String>,
}

/// Reverse an entry (a refund), fully or partly: a new `reversal` entry moving money back.
#[utoipa::path(post, path = "/v1/transactions/{id}/reverse", tag = "transactions",
    description = "A new `reversal` entry that moves money back (a debit's reversal credits \
        the wallet, a credit's debits it), linked by `reverses`; the original never changes. \
        `amount` defaults to all that is not yet reversed. Scope `wallets:write`. Idempotent \
        like a debit.",
    request_body(content = ReverseBody, content_type = "application/json",
        example = examples::reverse_body),
    params(("id" = uuid::Uuid, Path, description = "Transaction id (any other string answers 404)",
               example = "01936f3e-a2b4-7c6d-9e8f-0a1b2c3d4e5f"),
           IdempotencyKeyHeader),
    responses(
        (status = 201, description = "The reversal entry (or the stored answer to a retry)", body = Transaction,
            headers(("Idempotent-Replayed" = ReplayedFlag, description = "`true` on a replay")),
            example = examples::reversal),
        (status = 400, response = BadEntryRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = ReverseNotFound),
        (status = 408, response = RequestTimeout),
        (status = 409, response = IdempotencyKeyInProgress),
        (status = 410, response = IdempotencyKeyExpired),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = ReverseDeclined),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])))]
pub async fn reverse(
    request: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WalletsWrite)?;
    let key = idempotency_key(&request)?;
    let body = JsonBody::<ReverseBody>::read(&request, payload, &state.settings.server).await?;
    let amount = pending_amount(body.value.amount)?;
    let reason = BoundedText::parse_optional("reason", body.value.reason, DESCRIPTION_CHARS_MAX)
        .map_err(|e| ApiError::Validation(e.to_string()))?;
    let transaction = TransactionId::parse(&id).ok_or(ApiError::TransactionNotFound)?;
    let path = format!("/v1/transactions/{transaction}/reverse");
    let idempotent = idempotent(&caller, key, &path, &body.canonical, None);
    let command = ReverseCommand {
        transaction,
        amount,
        reason,
        wallet: None,
    };
    let outcome = state
        .pipeline
        .run(idempotent, Command::Reverse(command))
        .await?;
    Ok(respond(outcome))
}
