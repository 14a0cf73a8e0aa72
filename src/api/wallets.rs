//! `/v1/wallets…` routes: create, read, debit, credit, ledger.

use actix_web::{HttpRequest, HttpResponse, web};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{JsonBody, idempotency_key, query};
use super::openapi_schemas::{
    BadEntryRequest, BadQuery, CreditDeclined, DebitDeclined, Forbidden, IdempotencyKeyExpired,
    IdempotencyKeyHeader, IdempotencyKeyInProgress, IdempotencyKeyReused, PayloadTooLarge,
    RateLimited, ReplayedFlag, RequestTimeout, Unauthorized, Unavailable, UnsupportedMediaType,
    WalletNotFound,
};
use super::respond::{json_bytes, json_ok, respond};
use super::state::AppState;
use crate::auth::Caller;
use crate::balance_cache::Lookup;
use crate::db::models::{LedgerEntryRow, WalletRow};
use crate::db::schema::{ledger_entries, wallets};
use crate::domain::{BoundedText, Currency, Metadata, Money, NonNegativeAmount, Scope, WalletId};
use crate::pipeline::Command;
use crate::pipeline::create_wallet::CreateWalletCommand;
use crate::pipeline::idempotency::{Fingerprint, IdempotentRequest};
use crate::pipeline::ledger::{EntryCommand, EntryKind};
use crate::representation::{LedgerPage, Transaction, Wallet};

/// Longest `owner_ref` and `reference`.
pub const REFERENCE_CHARS_MAX: usize = 255;
/// Longest `description`.
pub const DESCRIPTION_CHARS_MAX: usize = 1024;
/// Default and largest page of `GET /v1/wallets/{id}/ledger`.
const LEDGER_PAGE_DEFAULT: i64 = 100;
const LEDGER_PAGE_MAX: i64 = 1000;

/// `POST /v1/wallets`. Its OpenAPI schema is written out in `openapi_schemas`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWalletBody {
    /// ISO 4217 alpha-3, upper case.
    currency: String,
    owner_ref: Option<String>,
    /// Decimal string, >= 0, at most the currency's minor-unit digits. Default "0".
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

/// Debit and credit bodies. Its OpenAPI schema is written out in `openapi_schemas`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryBody {
    /// Decimal string, > 0, at most 10^15, at most the currency's minor-unit digits.
    amount: String,
    currency: String,
    reference: Option<String>,
    description: Option<String>,
    /// Any JSON object, returned as given.
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
    request_body(content = CreateWalletBody, content_type = "application/json"),
    params(IdempotencyKeyHeader),
    responses(
        (status = 201, description = "The new wallet (or the stored answer to a retry)", body = Wallet,
            headers(("Idempotent-Replayed" = ReplayedFlag, description = "`true` on a replay")),
            links(
                ("GetWallet" = (operation_id = "get_wallet",
                    parameters(("id" = "$response.body#/id")))),
                ("Ledger" = (operation_id = "ledger",
                    parameters(("id" = "$response.body#/id")))),
                ("PlaceHold" = (operation_id = "place_hold",
                    parameters(("id" = "$response.body#/id")),
                    request_body = json!({"amount": "1", "currency": "$response.body#/currency"}))),
                ("Credit" = (operation_id = "credit",
                    parameters(("id" = "$response.body#/id")),
                    request_body = json!({"amount": "1", "currency": "$response.body#/currency"}))),
                ("Debit" = (operation_id = "debit",
                    parameters(("id" = "$response.body#/id")),
                    request_body = json!({"amount": "1", "currency": "$response.body#/currency"}))),
            )),
        (status = 400, response = BadEntryRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 408, response = RequestTimeout),
        (status = 409, response = IdempotencyKeyInProgress),
        (status = 410, response = IdempotencyKeyExpired),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = IdempotencyKeyReused),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = ["wallets:write"])))]
pub async fn create_wallet(
    request: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WalletsWrite)?;
    let key = idempotency_key(&request)?;
    let body =
        JsonBody::<CreateWalletBody>::read(&request, payload, &state.settings.server).await?;
    let command = body.value.parse()?;
    let idempotent = IdempotentRequest {
        tenant: caller.tenant,
        key,
        fingerprint: Fingerprint::of("POST", "/v1/wallets", &body.canonical),
        wallet: None,
    };
    let outcome = state
        .pipeline
        .run(idempotent, Command::CreateWallet(command))
        .await?;
    Ok(respond(outcome))
}

/// Read a wallet.
#[utoipa::path(get, path = "/v1/wallets/{id}", tag = "wallets",
    params(("id" = String, Path, description = "Wallet id (a UUID; any other string answers 404)")),
    responses(
        (status = 200, description = "The wallet", body = Wallet),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = WalletNotFound),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = ["wallets:read"])))]
pub async fn get_wallet(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WalletsRead)?;
    let wallet = WalletId::parse(&id).ok_or(ApiError::WalletNotFound)?;
    // The balance cache first; a miss reads Postgres and offers what it read back to the
    // cache, under the epoch seen before the read (see balance_cache for why that is safe).
    let seen = match state.cache.lookup(caller.tenant, wallet).await {
        Lookup::Hit(body) => return Ok(json_bytes(body)),
        Lookup::Miss(epoch) => Some(epoch),
        Lookup::Bypass => None,
    };
    let row = find_wallet(&state, &caller, &id).await?;
    let body = serde_json::to_vec(&Wallet::from_row(&row).map_err(ApiError::Internal)?)
        .map_err(|e| ApiError::Internal(e.into()))?;
    if let Some(epoch) = seen {
        state
            .cache
            .offer(caller.tenant, wallet, &epoch, row.version, &body)
            .await;
    }
    Ok(json_bytes(body))
}

/// Debit a wallet (four layers: idempotency, Redis lock, row lock, balance check).
#[utoipa::path(post, path = "/v1/wallets/{id}/debit", tag = "wallets",
    request_body(content = EntryBody, content_type = "application/json"),
    params(("id" = String, Path, description = "Wallet id (a UUID; any other string answers 404)"),
           IdempotencyKeyHeader),
    responses(
        (status = 201, description = "The ledger entry (or the stored answer to a retry)", body = Transaction,
            headers(("Idempotent-Replayed" = ReplayedFlag, description = "`true` on a replay")),
            links(
                ("GetTransaction" = (operation_id = "get_transaction",
                    parameters(("id" = "$response.body#/id")))),
                ("Reverse" = (operation_id = "reverse",
                    parameters(("id" = "$response.body#/id")))),
                ("GetWallet" = (operation_id = "get_wallet",
                    parameters(("id" = "$response.body#/wallet_id")))),
                ("Ledger" = (operation_id = "ledger",
                    parameters(("id" = "$response.body#/wallet_id")))),
                ("Credit" = (operation_id = "credit",
                    parameters(("id" = "$response.body#/wallet_id")),
                    request_body = json!({"amount": "1", "currency": "$response.body#/currency"}))),
                ("Debit" = (operation_id = "debit",
                    parameters(("id" = "$response.body#/wallet_id")),
                    request_body = json!({"amount": "1", "currency": "$response.body#/currency"}))),
            )),
        (status = 400, response = BadEntryRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = WalletNotFound),
        (status = 408, response = RequestTimeout),
        (status = 409, response = IdempotencyKeyInProgress),
        (status = 410, response = IdempotencyKeyExpired),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = DebitDeclined),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
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
    request_body(content = EntryBody, content_type = "application/json"),
    params(("id" = String, Path, description = "Wallet id (a UUID; any other string answers 404)"),
           IdempotencyKeyHeader),
    responses(
        (status = 201, description = "The ledger entry (or the stored answer to a retry)", body = Transaction,
            headers(("Idempotent-Replayed" = ReplayedFlag, description = "`true` on a replay")),
            links(
                ("GetTransaction" = (operation_id = "get_transaction",
                    parameters(("id" = "$response.body#/id")))),
                ("Reverse" = (operation_id = "reverse",
                    parameters(("id" = "$response.body#/id")))),
                ("GetWallet" = (operation_id = "get_wallet",
                    parameters(("id" = "$response.body#/wallet_id")))),
                ("Ledger" = (operation_id = "ledger",
                    parameters(("id" = "$response.body#/wallet_id")))),
                ("Credit" = (operation_id = "credit",
                    parameters(("id" = "$response.body#/wallet_id")),
                    request_body = json!({"amount": "1", "currency": "$response.body#/currency"}))),
                ("Debit" = (operation_id = "debit",
                    parameters(("id" = "$response.body#/wallet_id")),
                    request_body = json!({"amount": "1", "currency": "$response.body#/currency"}))),
            )),
        (status = 400, response = BadEntryRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = WalletNotFound),
        (status = 408, response = RequestTimeout),
        (status = 409, response = IdempotencyKeyInProgress),
        (status = 410, response = IdempotencyKeyExpired),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = CreditDeclined),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
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
    let body = JsonBody::<EntryBody>::read(&request, payload, &state.settings.server).await?;
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
    let outcome = state
        .pipeline
        .run(idempotent, Command::Entry(command))
        .await?;
    Ok(respond(outcome))
}

#[derive(Debug, Deserialize)]
struct LedgerQuery {
    limit: Option<String>,
    after: Option<String>,
}

/// A wallet's ledger, oldest first, with a keyset cursor.
#[utoipa::path(get, path = "/v1/wallets/{id}/ledger", tag = "wallets",
    params(("id" = String, Path, description = "Wallet id (a UUID; any other string answers 404)"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
               description = "Page size, 1..=1000, default 100"),
           ("after" = Option<i64>, Query, minimum = 0, maximum = 9_223_372_036_854_775_807_i64,
               description = "`next_cursor` of the previous page (the `seq` of its last entry)")),
    responses(
        (status = 200, description = "A page of the ledger, oldest first", body = LedgerPage),
        (status = 400, response = BadQuery),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = WalletNotFound),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
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

/// Fuzzing the request parsers with arbitrary input: they never panic, and whatever they accept
/// satisfies the contract's rules.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal::Decimal;

    /// Bodies close to valid ones, so the fuzzer reaches deep into the parsers.
    fn entry_like_body() -> impl Strategy<Value = String> {
        let amount = prop_oneof![
            "[0-9]{0,20}(\\.[0-9]{0,6})?",
            "-?[0-9]{1,4}",
            Just("NaN".to_owned()),
            Just("1e3".to_owned()),
            "\\PC{0,8}",
        ];
        let currency = prop_oneof![
            "[A-Z]{3}",
            "[a-zA-Z]{0,4}",
            Just("EUR".to_owned()),
            Just("JPY".to_owned()),
            Just("KWD".to_owned())
        ];
        let extra = prop_oneof![
            Just(String::new()),
            Just(r#","reference":"r""#.to_owned()),
            Just(r#","metadata":{"a":[1,{"b":null}]}"#.to_owned()),
            Just(r#","metadata":{"a":1,"a":2}"#.to_owned()),
            Just(r#","balance_after":"1""#.to_owned()),
            Just(r#","amount":"1""#.to_owned()),
            "\\PC{0,12}",
        ];
        (amount, currency, extra, any::<bool>()).prop_map(|(amount, currency, extra, quoted)| {
            let amount = if quoted {
                format!("{amount:?}")
            } else {
                amount
            };
            format!(r#"{{"amount":{amount},"currency":"{currency}"{extra}}}"#)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(body) = JsonBody::<EntryBody>::parse(&bytes) {
                let _ = body.value.parse();
            }
            if let Ok(body) = JsonBody::<CreateWalletBody>::parse(&bytes) {
                let _ = body.value.parse();
            }
        }

        #[test]
        fn accepted_entries_obey_the_contract(text in entry_like_body()) {
            let Ok(body) = JsonBody::<EntryBody>::parse(text.as_bytes()) else { return Ok(()) };
            let Ok(parsed) = body.value.parse() else { return Ok(()) };
            let money = parsed.money;
            let currency = money.currency();
            prop_assert!(money.amount() > Decimal::ZERO);
            prop_assert!(money.amount() <= crate::domain::money::AMOUNT_MAX);
            prop_assert!(money.amount().scale() <= currency.minor_units(), "{text}");
            prop_assert!(!text.contains("balance_after"));
            prop_assert!(!text.contains(r#""a":1,"a":2"#));
        }
    }
}
