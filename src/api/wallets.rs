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
    WalletNotFound, examples,
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
    description = "A new wallet in one currency, balance 0. Scope `wallets:write`. Idempotent: a \
        retry with the same `Idempotency-Key` and body gets the stored answer.",
    request_body(content = CreateWalletBody, content_type = "application/json",
        example = examples::create_wallet_body),
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
                    parameters(("id" = "$response.body#/id")))),
                ("Credit" = (operation_id = "credit",
                    parameters(("id" = "$response.body#/id")))),
                ("Debit" = (operation_id = "debit",
                    parameters(("id" = "$response.body#/id")))),
            ),
            example = examples::wallet),
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
    security(("bearer" = [])))]
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
    description = "The wallet's balance, held and available amounts and version. Scope \
        `wallets:read`. Another tenant's wallet answers 404 like an unknown id.",
    params(("id" = uuid::Uuid, Path, description = "Wallet id (any other string answers 404)",
               example = "01936f3e-8d6a-7c4e-9a51-3f2b8c1d0e7a")),
    responses(
        (status = 200, description = "The wallet", body = Wallet,
            example = examples::wallet),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = WalletNotFound),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])))]
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
    description = "Takes `amount` from the wallet: one ledger entry with `balance_before` and \
        `balance_after`, declined (422 `insufficient_funds`) when `available` (balance - held + \
        overdraft limit) is short. Scope `wallets:write`. Idempotent: a retry with the same \
        `Idempotency-Key` and body gets the stored answer, success or decline, and charges \
        nothing again.",
    request_body(content = EntryBody, content_type = "application/json",
        example = examples::debit_body),
    params(("id" = uuid::Uuid, Path, description = "Wallet id (any other string answers 404)",
               example = "01936f3e-8d6a-7c4e-9a51-3f2b8c1d0e7a"),
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
                    request_body = "$request.body")),
                ("Debit" = (operation_id = "debit",
                    parameters(("id" = "$response.body#/wallet_id")),
                    request_body = "$request.body")),
            ),
            example = examples::debit),
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
    security(("bearer" = [])))]
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
    description = "Adds `amount` to the wallet: one ledger entry. Scope `wallets:write`. \
        Idempotent like a debit.",
    request_body(content = EntryBody, content_type = "application/json",
        example = examples::credit_body),
    params(("id" = uuid::Uuid, Path, description = "Wallet id (any other string answers 404)",
               example = "01936f3e-8d6a-7c4e-9a51-3f2b8c1d0e7a"),
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
                    request_body = "$request.body")),
                ("Debit" = (operation_id = "debit",
                    parameters(("id" = "$response.body#/wallet_id")),
                    request_body = "$request.body")),
            ),
            example = examples::credit),
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
    security(("bearer" = [])))]
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
    description = "The wallet's entries in `seq` order, a page at a time: pass the page's \
        `next_cursor` as `after` for the next one (`null` on the last page). Scope \
        `wallets:read`.",
    params(("id" = uuid::Uuid, Path, description = "Wallet id (any other string answers 404)",
               example = "01936f3e-8d6a-7c4e-9a51-3f2b8c1d0e7a"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, example = 100,
               description = "Page size, 1..=1000, default 100"),
           ("after" = Option<String>, Query, pattern = r"^[0-9]{1,19}$", example = "2",
               description = "`next_cursor` of the previous page (the `seq` of its last entry, \
                   a string of digits); absent for the first page")),
    responses(
        (status = 200, description = "A page of the ledger, oldest first", body = LedgerPage,
            example = examples::ledger_page),
        (status = 400, response = BadQuery),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = WalletNotFound),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = [])))]
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

/// Longest cursor: `i64::MAX`, the largest `seq`, has 19 digits.
const CURSOR_DIGITS_MAX: usize = 19;

/// A cursor is the `seq` of the last entry of the previous page, as `next_cursor` renders it:
/// 1 to 19 ASCII digits (the document's pattern for `after`). One beyond every `seq` is an
/// empty page, not an error, so everything the pattern allows is answered.
fn parse_cursor(cursor: &str) -> Result<i64, ApiError> {
    let digits = (1..=CURSOR_DIGITS_MAX).contains(&cursor.len())
        && cursor.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| cursor.parse::<u64>().ok())
        .flatten()
        .map(|seq| i64::try_from(seq).unwrap_or(i64::MAX))
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

#[cfg(test)]
mod cursor {
    use super::*;

    #[test]
    fn a_cursor_is_what_next_cursor_renders() {
        for (text, seq) in [
            ("0", 0),
            ("2", 2),
            ("007", 7),
            ("9223372036854775807", i64::MAX),
        ] {
            assert_eq!(parse_cursor(text).ok(), Some(seq), "{text}");
        }
        // Beyond every seq: an empty page, not a refusal (the document's pattern allows it).
        assert_eq!(parse_cursor("9999999999999999999").ok(), Some(i64::MAX));
        for text in [
            "",
            "-1",
            "+1",
            " 1",
            "1.5",
            "abc",
            "12345678901234567890",
            "١",
        ] {
            assert!(parse_cursor(text).is_err(), "{text}");
        }
    }
}
