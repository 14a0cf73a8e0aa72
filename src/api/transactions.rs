//! `GET /v1/transactions/{id}`.

use actix_web::{HttpResponse, web};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::error::ApiError;
use super::openapi_schemas::{
    Forbidden, RateLimited, TransactionNotFound, Unauthorized, Unavailable,
};
use super::respond::json_ok;
use super::state::AppState;
use crate::auth::Caller;
use crate::db::models::LedgerEntryRow;
use crate::db::schema::ledger_entries;
use crate::domain::{Scope, TransactionId};
use crate::representation::Transaction;

/// Read one ledger entry.
#[utoipa::path(get, path = "/v1/transactions/{id}", tag = "transactions",
    params(("id" = String, Path, description = "Transaction id (a UUID; any other string answers 404)")),
    responses(
        (status = 200, description = "The ledger entry", body = Transaction),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = TransactionNotFound),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = ["wallets:read"])))]
pub async fn get_transaction(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WalletsRead)?;
    let id = TransactionId::parse(&id).ok_or(ApiError::TransactionNotFound)?;
    let mut conn = state.db.get().await.map_err(ApiError::from_pool)?;
    let row: LedgerEntryRow = ledger_entries::table
        .filter(ledger_entries::id.eq(id.as_uuid()))
        .filter(ledger_entries::tenant_id.eq(caller.tenant.as_uuid()))
        .select(LedgerEntryRow::as_select())
        .first(&mut conn)
        .await
        .optional()
        .map_err(ApiError::from_db)?
        .ok_or(ApiError::TransactionNotFound)?;
    json_ok(&Transaction::from_row(&row).map_err(ApiError::Internal)?)
}
