//! The finance read routes (API.md, Ledger integrity and audit): `GET /v1/wallets/{id}/audit`,
//! `GET /v1/wallets/{id}/balance?as_of=…` and `GET /v1/ledger/export`. HTTP only: the work is
//! in `ledger_audit`.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, SemaphorePermit};
use utoipa::ToSchema;

use super::error::ApiError;
use super::extract::query;
use super::openapi_schemas::{
    BadQuery, Forbidden, RateLimited, Unauthorized, Unavailable, WalletNotFound, examples,
};
use super::respond::json_ok;
use super::state::AppState;
use crate::auth::Caller;
use crate::db::errors::{DbFailure, classify};
use crate::domain::{Scope, WalletId};
use crate::ledger_audit::export::{Export, ExportFormat, ExportWindow};
use crate::ledger_audit::{
    self, AuditReport, BalanceReport, Instant, LedgerReadError, NotAnInstant,
};

/// Audits running at once in this process. An audit holds one pooled connection for its whole
/// snapshot (a wallet of a million entries takes seconds), so without a cap a burst of audits
/// would take the pool from debits. Beyond it a request waits up to
/// `database.pool_wait_timeout_ms`, then 503 `unavailable`.
pub const AUDITS_CONCURRENT_MAX: usize = 4;
static AUDITS: Semaphore = Semaphore::const_new(AUDITS_CONCURRENT_MAX);

impl From<LedgerReadError> for ApiError {
    fn from(error: LedgerReadError) -> Self {
        match error {
            LedgerReadError::Database(error) => ApiError::from_db(error),
            LedgerReadError::NoConnection(cause) => ApiError::Unavailable(cause),
            LedgerReadError::Corrupt(cause) => ApiError::Internal(cause),
        }
    }
}

impl From<NotAnInstant> for ApiError {
    fn from(error: NotAnInstant) -> Self {
        ApiError::Validation(error.to_string())
    }
}

async fn audit_permit(state: &AppState) -> Result<SemaphorePermit<'static>, ApiError> {
    let wait = Duration::from_millis(state.settings.database.pool_wait_timeout_ms);
    match tokio::time::timeout(wait, AUDITS.acquire()).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(closed)) => Err(ApiError::Internal(closed.into())),
        Err(_) => Err(ApiError::Unavailable(anyhow::anyhow!(
            "{AUDITS_CONCURRENT_MAX} audits already running"
        ))),
    }
}

/// Recompute a wallet's ledger from its entries.
#[utoipa::path(get, path = "/v1/wallets/{id}/audit", tag = "ledger",
    description = "Recomputes the wallet's ledger from its entries in one snapshot: seq \
        continuity, before/after arithmetic, the hash chain, and the balance beside the sum \
        of the entries. Scope `ledger:read`.",
    params(("id" = uuid::Uuid, Path, description = "Wallet id (any other string answers 404)",
               example = "01936f3e-8d6a-7c4e-9a51-3f2b8c1d0e7a")),
    responses(
        (status = 200, description = "The audit, read in one consistent snapshot: seq continuity, \
            before/after arithmetic, the hash chain, and the balance beside the ledger sum. A \
            wallet is sound when `chain_ok` is true and `balance` equals `ledger_sum`.",
            body = AuditReport, example = examples::audit),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = WalletNotFound),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])))]
pub async fn audit_wallet(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::LedgerRead)?;
    let wallet = WalletId::parse(&id).ok_or(ApiError::WalletNotFound)?;
    let _permit = audit_permit(&state).await?;
    let mut conn = state.db.get().await.map_err(ApiError::from_pool)?;
    let audit = ledger_audit::audit_wallet(&mut conn, wallet, Some(caller.tenant))
        .await?
        .ok_or(ApiError::WalletNotFound)?;
    json_ok(&audit.report())
}

#[derive(Debug, Deserialize)]
struct BalanceQuery {
    as_of: Option<String>,
}

/// A wallet's balance at an instant.
#[utoipa::path(get, path = "/v1/wallets/{id}/balance", tag = "ledger",
    description = "The balance right after the last entry created at or before `as_of`. \
        Scope `wallets:read`.",
    params(("id" = uuid::Uuid, Path, description = "Wallet id (any other string answers 404)",
               example = "01936f3e-8d6a-7c4e-9a51-3f2b8c1d0e7a"),
           ("as_of" = String, Query, format = DateTime,
               description = "RFC 3339 date-time with an offset (`Z` or `±hh:mm`; percent-encode \
                   `+` as `%2B`). The balance after the last entry created at or before it.",
               example = "2026-12-03T10:20:00Z")),
    responses(
        (status = 200, description = "The balance after the last entry created at or before \
            `as_of`; 0 and `seq` 0 before the first entry", body = BalanceReport,
            example = examples::balance),
        (status = 400, response = BadQuery),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = WalletNotFound),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])))]
pub async fn balance_as_of(
    request: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WalletsRead)?;
    let params: BalanceQuery = query(&request)?;
    let as_of = required_instant("as_of", params.as_of)?;
    let wallet = WalletId::parse(&id).ok_or(ApiError::WalletNotFound)?;
    let mut conn = state.db.get().await.map_err(ApiError::from_pool)?;
    let balance = ledger_audit::balance_as_of(&mut conn, caller.tenant, wallet, as_of)
        .await?
        .ok_or(ApiError::WalletNotFound)?;
    json_ok(&balance.report())
}

/// `format` of `GET /v1/ledger/export`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[expect(
    dead_code,
    reason = "only its schema is used; `ExportFormat::parse` reads the value"
)]
enum ExportFormatName {
    Csv,
    Jsonl,
}

#[derive(Debug, Deserialize)]
struct ExportQuery {
    from: Option<String>,
    to: Option<String>,
    format: Option<String>,
}

/// Example bodies for the OpenAPI document.
const CSV_EXAMPLE: &str = "id,wallet_id,type,amount,currency,balance_before,balance_after,seq,\
    reference,description,metadata,idempotency_key,created_at,hold_id,reverses,prev_hash,hash\r\n";

/// Export the tenant's ledger entries in a time window, streamed.
#[utoipa::path(get, path = "/v1/ledger/export", tag = "ledger",
    description = "Streams the tenant's entries with `from <= created_at < to` as CSV or JSON \
        Lines, in `(created_at, wallet_id, seq)` order; memory stays flat whatever the size. \
        Scope `ledger:read`.",
    params(("from" = String, Query, format = DateTime,
               description = "RFC 3339 date-time with an offset (percent-encode `+` as `%2B`): \
                   entries with `from <= created_at`", example = "2026-12-03T00:00:00Z"),
           ("to" = String, Query, format = DateTime,
               description = "RFC 3339 date-time with an offset: entries with `created_at < to`. \
                   `to <= from` is an empty window", example = "2026-12-04T00:00:00Z"),
           ("format" = inline(ExportFormatName), Query,
               description = "`csv` (text/csv) or `jsonl` (application/x-ndjson)",
               example = "jsonl")),
    responses(
        (status = 200, description = "The tenant's entries with `from <= created_at < to` in \
            `(created_at, wallet_id, seq)` order, streamed (chunked). JSON Lines: one transaction \
            object per line, the same bytes as `GET /v1/transactions/{id}`. CSV (RFC 4180, CRLF): \
            a header row naming the transaction fields in the order of the transaction object, \
            then one row per entry; `metadata` as its JSON text, `null` as an empty field. A body \
            cut short (the connection closed before the last chunk) is incomplete.",
            content(
                (String = "text/csv", example = json!(CSV_EXAMPLE)),
                (String = "application/x-ndjson", example = examples::export_jsonl),
            ),
            headers(("Content-Disposition" = String,
                description = "`attachment; filename=\"ledger-export.csv\"` (or `.jsonl`)"))),
        (status = 400, response = BadQuery),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])))]
pub async fn export_ledger(
    request: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::LedgerRead)?;
    let params: ExportQuery = query(&request)?;
    let from = required_instant("from", params.from)?;
    let to = required_instant("to", params.to)?;
    let format = params
        .format
        .as_deref()
        .and_then(ExportFormat::parse)
        .ok_or_else(|| ApiError::Validation("format must be csv or jsonl".into()))?;
    let window = ExportWindow {
        tenant: caller.tenant,
        from: from.ceil_micros(),
        to: to.ceil_micros(),
    };
    let export = Export::start(state.db.clone(), window, format).await?;
    let tenant = caller.tenant;
    let body =
        export
            .into_stream()
            .map_ok(web::Bytes::from)
            .inspect_err(move |error| match error {
                LedgerReadError::Database(cause) if classify(cause) != DbFailure::Bug => {
                    tracing::warn!(%tenant, error = ?cause, "export cut short")
                }
                LedgerReadError::NoConnection(_) => {
                    tracing::warn!(%tenant, error = ?error, "export cut short")
                }
                _ => tracing::error!(%tenant, error = ?error, "export cut short"),
            });
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, format.content_type()))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"ledger-export.{}\"", format.as_str()),
        ))
        .streaming(body))
}

fn required_instant(name: &'static str, text: Option<String>) -> Result<Instant, ApiError> {
    let text = text.ok_or_else(|| ApiError::Validation(format!("{name} is required")))?;
    Ok(Instant::parse(name, &text)?)
}
