//! Holds over HTTP (API.md Part 2, Holds): place, capture, void, expiry, their idempotency
//! and their races, against real Postgres and Redis. Each test names the guard it proves.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use futures_util::future::join_all;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use walletd::config::Settings;
use walletd::domain::{Scope, TenantId};

use crate::helpers::{
    Decided, POLL_INTERVAL, PrivateRedis, TestApp, assert_problem, count_answers, dec, new_key,
    poll_until,
};

/// The members of a Hold (API.md Part 2).
pub const HOLD_FIELDS: [&str; 10] = [
    "id",
    "wallet_id",
    "amount",
    "currency",
    "status",
    "captured_amount",
    "reference",
    "expires_at",
    "created_at",
    "updated_at",
];

/// The members of a Transaction, Part 2 fields included.
pub const TRANSACTION_FIELDS: [&str; 17] = [
    "id",
    "wallet_id",
    "type",
    "amount",
    "currency",
    "balance_before",
    "balance_after",
    "seq",
    "reference",
    "description",
    "metadata",
    "idempotency_key",
    "created_at",
    "hold_id",
    "reverses",
    "prev_hash",
    "hash",
];

/// How long a test waits for a 1-second hold to be past its `expires_at`, or for the sweeper.
const EXPIRY_WAIT_MAX: Duration = Duration::from_secs(15);

/// A sweep interval long enough that no sweep runs during a test (the first run happens at
/// start, before the test places anything).
const SWEEPER_OFF_S: u64 = 86_400;

pub fn assert_members(value: &Value, expected: &[&str]) {
    let got: BTreeSet<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not an object"))
        .keys()
        .map(String::as_str)
        .collect();
    let want: BTreeSet<&str> = expected.iter().copied().collect();
    assert_eq!(got, want, "members of {value}");
}

pub fn timestamp(value: &Value) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a string"));
    // RFC 3339 UTC with microseconds: "2026-12-02T10:11:12.123456Z".
    assert_eq!(
        text.len(),
        27,
        "{text} is not RFC 3339 UTC with microseconds"
    );
    assert!(text.ends_with('Z'), "{text} is not UTC");
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_timezone(&Utc)
}

pub fn version(wallet: &Value) -> i64 {
    wallet["version"].as_i64().unwrap()
}

pub fn id_of(value: &Value) -> String {
    value["id"].as_str().unwrap().to_owned()
}

/// A key of this app's tenant with only `ledger:read` and `wallets:read` (finance).
pub async fn finance_key(app: &TestApp) -> String {
    walletd::auth::keys::create_key(
        &mut app.db().await,
        TenantId::parse(&app.tenant_id).unwrap(),
        &[Scope::LedgerRead, Scope::WalletsRead],
    )
    .await
    .unwrap()
    .api_key
}

pub async fn place(app: &TestApp, wallet: &str, key: &str, body: &Value) -> Response {
    app.post(&format!("/v1/wallets/{wallet}/holds"), key, body)
        .await
}

/// Places a hold of `amount` EUR for 900 s and asserts 201; returns the hold.
pub async fn place_ok(app: &TestApp, wallet: &str, amount: &str) -> Value {
    let response = place(
        app,
        wallet,
        &new_key(),
        &json!({"amount": amount, "currency": "EUR", "reference": "booking-9"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

pub async fn capture(app: &TestApp, hold: &str, key: &str, body: &Value) -> Response {
    app.post(&format!("/v1/holds/{hold}/capture"), key, body)
        .await
}

pub async fn void(app: &TestApp, hold: &str, key: &str) -> Response {
    app.post(&format!("/v1/holds/{hold}/void"), key, &json!({}))
        .await
}

pub async fn get_hold(app: &TestApp, hold: &str) -> Value {
    let response = app.get(&format!("/v1/holds/{hold}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// A POST with a raw body (or none) and an optional idempotency key.
pub async fn post_raw(app: &TestApp, path: &str, key: Option<&str>, body: &str) -> Response {
    let mut request = app
        .client
        .post(app.url(path))
        .bearer_auth(&app.api_key)
        .header("Content-Type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.unwrap()
}

/// An answer as sent: status, whether it was marked as a replay, and the exact bytes.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub replayed: bool,
    pub bytes: Vec<u8>,
}

impl Answer {
    pub async fn of(response: Response) -> Self {
        let status = response.status();
        let replayed = match response.headers().get("idempotent-replayed") {
            None => false,
            Some(value) => {
                assert_eq!(value, "true");
                true
            }
        };
        Self {
            status,
            replayed,
            bytes: response.bytes().await.unwrap().to_vec(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap()
    }
}

/// Sends the same request twice: the second answer must be the first one's status and bytes,
/// marked `Idempotent-Replayed: true`, and the wallet must not change in between.
pub async fn assert_replays(app: &TestApp, wallet: &str, path: &str, key: &str, body: &Value) {
    let first = Answer::of(app.post(path, key, body).await).await;
    assert!(!first.replayed, "{path}: the first answer is no replay");
    let before = app.wallet(wallet).await;
    let again = Answer::of(app.post(path, key, body).await).await;
    assert!(again.replayed, "{path}: the retry is not marked replayed");
    assert_eq!(again.status, first.status, "{path}");
    assert_eq!(
        String::from_utf8_lossy(&again.bytes),
        String::from_utf8_lossy(&first.bytes),
        "{path}: replay bytes differ"
    );
    assert_eq!(
        app.wallet(wallet).await,
        before,
        "{path}: a replay changed the wallet"
    );
}

fn sweeper_off(settings: &mut Settings) {
    settings.holds.sweep_interval_s = SWEEPER_OFF_S;
}

/// Contention on one wallet: room in the pool and a generous lock wait, so that a loaded
/// machine queues requests rather than shedding them (shed answers are retried anyway).
fn contended(settings: &mut Settings) {
    settings.database.pool_max_size = 16;
    settings.lock.wait_ms_max = 8_000;
}

/// Waits until `hold` reads as past its `expires_at` (GET renders an active hold past it as
/// `expired`, by the server's clock).
async fn wait_until_past_expiry(app: &TestApp, hold: &str) {
    poll_until("the hold is past expires_at", EXPIRY_WAIT_MAX, || async {
        get_hold(app, hold).await["status"] == "expired"
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Placing a hold
// ---------------------------------------------------------------------------------------

/// Guard: `place_once` raises `held` (and `version`) and writes no ledger entry. The 201 is a
/// Hold of API.md's shape, and GET shows the same hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placing_a_hold_reserves_available_and_leaves_the_balance() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = app.wallet(&wallet).await;

    let sent_at = Utc::now();
    let response = place(
        &app,
        &wallet,
        &new_key(),
        &json!({"amount": "30.00", "currency": "EUR", "reference": "booking-9",
                "expires_in_seconds": 600}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["content-type"], "application/json");
    let hold: Value = response.json().await.unwrap();

    assert_members(&hold, &HOLD_FIELDS);
    let id = id_of(&hold);
    assert_eq!(
        uuid::Uuid::parse_str(&id).unwrap().hyphenated().to_string(),
        id
    );
    assert_eq!(hold["wallet_id"], wallet.as_str());
    assert_eq!(hold["amount"], "30.00");
    assert_eq!(hold["currency"], "EUR");
    assert_eq!(hold["status"], "active");
    assert_eq!(hold["captured_amount"], "0.00");
    assert_eq!(hold["reference"], "booking-9");
    let (created, expires) = (
        timestamp(&hold["created_at"]),
        timestamp(&hold["expires_at"]),
    );
    assert_eq!(timestamp(&hold["updated_at"]), created);
    assert_eq!(expires - created, chrono::Duration::seconds(600));
    let drift = (expires - (sent_at + chrono::Duration::seconds(600))).abs();
    assert!(
        drift < chrono::Duration::seconds(5),
        "expires_at {expires} is not now + 600 s"
    );

    let after = app.wallet(&wallet).await;
    assert_eq!(after["balance"], "100.00");
    assert_eq!(after["held"], "30.00");
    assert_eq!(after["available"], "70.00");
    assert_eq!(version(&after), version(&before) + 1);
    assert_eq!(app.ledger(&wallet).await.len(), 1, "a hold writes no entry");
    assert_eq!(get_hold(&app, &id).await, hold);
    app.assert_invariants(&wallet).await;
}

/// Guard: the in-lock check of a hold is `available = balance - held + overdraft_limit >=
/// amount` — earlier holds count, the overdraft limit counts, and a debit counts the holds too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_needs_available_funds_net_of_holds_and_with_the_overdraft() {
    let app = TestApp::spawn().await;
    let wallet = app
        .create_wallet_with(json!({"currency": "EUR", "overdraft_limit": "20.00"}))
        .await;
    app.fund(&wallet, "50.00").await;
    place_ok(&app, &wallet, "40.00").await;
    // available = 50 - 40 + 20 = 30.
    assert_eq!(app.wallet(&wallet).await["available"], "30.00");
    let before = app.wallet(&wallet).await;
    let declined = place(
        &app,
        &wallet,
        &new_key(),
        &json!({"amount": "30.01", "currency": "EUR"}),
    )
    .await;
    let problem = assert_problem(declined, 422, "insufficient_funds").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("30.00"),
        "{problem}"
    );
    assert_eq!(
        app.wallet(&wallet).await,
        before,
        "a decline changed the wallet"
    );

    // Exactly what is available can be held, into the overdraft.
    place_ok(&app, &wallet, "30.00").await;
    let state = app.wallet(&wallet).await;
    assert_eq!(state["balance"], "50.00");
    assert_eq!(state["held"], "70.00");
    assert_eq!(state["available"], "0.00");
    // Nothing is left, for a hold or for a debit.
    assert_problem(
        place(
            &app,
            &wallet,
            &new_key(),
            &json!({"amount": "0.01", "currency": "EUR"}),
        )
        .await,
        422,
        "insufficient_funds",
    )
    .await;
    assert_problem(
        app.debit(&wallet, &new_key(), "0.01").await,
        422,
        "insufficient_funds",
    )
    .await;
    app.assert_invariants(&wallet).await;
}

/// Guard: `refuse_to_reserve`'s currency check — a valid code other than the wallet's is 422
/// `currency_mismatch` (stored), an invalid code is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_in_another_currency_is_currency_mismatch() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = app.wallet(&wallet).await;
    let path = format!("/v1/wallets/{wallet}/holds");
    assert_replays(
        &app,
        &wallet,
        &path,
        &new_key(),
        &json!({"amount": "10.00", "currency": "USD"}),
    )
    .await;
    assert_problem(
        place(
            &app,
            &wallet,
            &new_key(),
            &json!({"amount": "10.00", "currency": "USD"}),
        )
        .await,
        422,
        "currency_mismatch",
    )
    .await;
    assert_problem(
        place(
            &app,
            &wallet,
            &new_key(),
            &json!({"amount": "10.00", "currency": "XXY"}),
        )
        .await,
        400,
        "validation_failed",
    )
    .await;
    assert_eq!(app.wallet(&wallet).await, before);
}

/// Guard: the tenant filter of `lock_wallet` on a hold — another tenant's wallet answers
/// exactly like an unknown one (404 `wallet_not_found`, stored) and is not touched; a
/// non-UUID id is 404 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_on_an_unknown_or_foreign_wallet_is_wallet_not_found() {
    let app = TestApp::spawn().await;
    let (_, other_key) = app.new_tenant(&Scope::ALL).await;
    let response = app
        .post_as(
            &other_key,
            "/v1/wallets",
            &new_key(),
            &json!({"currency": "EUR"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let foreign = id_of(&response.json::<Value>().await.unwrap());
    let response = app
        .post_as(
            &other_key,
            &format!("/v1/wallets/{foreign}/credit"),
            &new_key(),
            &json!({"amount": "100.00", "currency": "EUR"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = json!({"amount": "10.00", "currency": "EUR"});

    let unknown =
        Answer::of(place(&app, &uuid::Uuid::now_v7().to_string(), "u", &body).await).await;
    let theirs = Answer::of(place(&app, &foreign, "f", &body).await).await;
    for answer in [&unknown, &theirs] {
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(answer.json()["code"], "wallet_not_found");
    }
    // No enumeration: the two answers are the same document.
    assert_eq!(unknown.json(), theirs.json());
    let replay = Answer::of(place(&app, &foreign, "f", &body).await).await;
    assert!(replay.replayed, "the 404 decline is stored");
    assert_eq!(replay.bytes, theirs.bytes);
    assert_problem(
        place(&app, "not-a-uuid", &new_key(), &body).await,
        404,
        "wallet_not_found",
    )
    .await;

    let response = app
        .get_as(&other_key, &format!("/v1/wallets/{foreign}"))
        .await;
    let state: Value = response.json().await.unwrap();
    assert_eq!(state["held"], "0.00");
    assert_eq!(state["available"], "100.00");
}

/// Guard: the bound on `expires_in_seconds` in `PlaceHoldBody::parse` (1..=604800, an
/// integer, default 900). A refused body is 400 `validation_failed` and not stored: the same
/// key then places a valid hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_in_seconds_is_bounded_and_defaults_to_900() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = app.wallet(&wallet).await;
    let key = new_key();
    for bad in [
        json!(0),
        json!(604_801),
        json!(1.5),
        json!("900"),
        json!(-1),
    ] {
        let body = json!({"amount": "1.00", "currency": "EUR", "expires_in_seconds": bad});
        assert_problem(
            place(&app, &wallet, &key, &body).await,
            400,
            "validation_failed",
        )
        .await;
    }
    assert_eq!(
        app.wallet(&wallet).await,
        before,
        "a refused hold changed the wallet"
    );

    let response = place(
        &app,
        &wallet,
        &key,
        &json!({"amount": "1.00", "currency": "EUR", "expires_in_seconds": 604_800}),
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "the 400s were not stored"
    );
    let longest: Value = response.json().await.unwrap();
    assert_eq!(
        timestamp(&longest["expires_at"]) - timestamp(&longest["created_at"]),
        chrono::Duration::seconds(604_800)
    );
    let response = place(
        &app,
        &wallet,
        &new_key(),
        &json!({"amount": "1.00", "currency": "EUR", "expires_in_seconds": 1}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);

    let default = place_ok(&app, &wallet, "1.00").await;
    assert_eq!(
        timestamp(&default["expires_at"]) - timestamp(&default["created_at"]),
        chrono::Duration::seconds(900)
    );
}

// ---------------------------------------------------------------------------------------
// Capture and void
// ---------------------------------------------------------------------------------------

/// Guard: `capture` appends one debit naming the hold and releases the whole hold in the same
/// transaction (`held_after`); the hold becomes `captured` with its captured amount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_capture_debits_the_hold_and_releases_it() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let hold = place_ok(&app, &wallet, "30.00").await;
    let hold_id = id_of(&hold);
    let before = app.wallet(&wallet).await;

    let key = new_key();
    let response = capture(&app, &hold_id, &key, &json!({})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let entry: Value = response.json().await.unwrap();
    assert_members(&entry, &TRANSACTION_FIELDS);
    assert_eq!(entry["type"], "debit");
    assert_eq!(entry["wallet_id"], wallet.as_str());
    assert_eq!(entry["amount"], "30.00");
    assert_eq!(entry["currency"], "EUR");
    assert_eq!(entry["hold_id"], hold_id.as_str());
    assert_eq!(entry["reverses"], Value::Null);
    assert_eq!(
        entry["reference"], "booking-9",
        "the capture carries the hold's reference"
    );
    assert_eq!(entry["balance_before"], "100.00");
    assert_eq!(entry["balance_after"], "70.00");
    assert_eq!(entry["seq"], 2);
    assert_eq!(entry["idempotency_key"], key.as_str());

    let after = app.wallet(&wallet).await;
    assert_eq!(after["balance"], "70.00");
    assert_eq!(after["held"], "0.00");
    assert_eq!(after["available"], "70.00");
    assert_eq!(version(&after), version(&before) + 1);
    let captured = get_hold(&app, &hold_id).await;
    assert_eq!(captured["status"], "captured");
    assert_eq!(captured["captured_amount"], "30.00");
    assert_eq!(captured["amount"], "30.00");
    assert!(timestamp(&captured["updated_at"]) > timestamp(&hold["updated_at"]));
    let response = app
        .get(&format!("/v1/transactions/{}", id_of(&entry)))
        .await;
    assert_eq!(response.json::<Value>().await.unwrap(), entry);
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(entries.len(), 2);
}

/// Guard: a partial capture debits only the amount asked for and still releases the whole
/// hold (`held_after = held - hold.amount`, not `- captured`): the rest returns to available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_capture_returns_the_uncaptured_rest_to_available() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let other = place_ok(&app, &wallet, "10.00").await;
    let hold = id_of(&place_ok(&app, &wallet, "30.00").await);
    assert_eq!(app.wallet(&wallet).await["available"], "60.00");

    let response = capture(&app, &hold, &new_key(), &json!({"amount": "25.00"})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let entry: Value = response.json().await.unwrap();
    assert_eq!(entry["amount"], "25.00");
    assert_eq!(entry["balance_before"], "100.00");
    assert_eq!(entry["balance_after"], "75.00");

    let state = app.wallet(&wallet).await;
    assert_eq!(state["balance"], "75.00");
    assert_eq!(state["held"], "10.00", "only the other hold is still held");
    assert_eq!(state["available"], "65.00");
    let captured = get_hold(&app, &hold).await;
    assert_eq!(captured["status"], "captured");
    assert_eq!(captured["captured_amount"], "25.00");
    assert_eq!(captured["amount"], "30.00");
    assert_eq!(get_hold(&app, &id_of(&other)).await["status"], "active");
    app.assert_invariants(&wallet).await;
}

/// Guard: `capture`'s `amount > hold.amount` check (422 `capture_exceeds_hold`, stored); the
/// hold stays active and can still be captured in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_above_the_hold_is_capture_exceeds_hold() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let hold = id_of(&place_ok(&app, &wallet, "30.00").await);
    let before = app.wallet(&wallet).await;

    assert_replays(
        &app,
        &wallet,
        &format!("/v1/holds/{hold}/capture"),
        &new_key(),
        &json!({"amount": "30.01"}),
    )
    .await;
    let problem = assert_problem(
        capture(&app, &hold, &new_key(), &json!({"amount": "30.01"})).await,
        422,
        "capture_exceeds_hold",
    )
    .await;
    assert!(
        problem["detail"].as_str().unwrap().contains("30.00"),
        "{problem}"
    );
    assert_eq!(app.wallet(&wallet).await, before);
    assert_eq!(get_hold(&app, &hold).await["status"], "active");
    assert_eq!(app.ledger(&wallet).await.len(), 1);

    let response = capture(&app, &hold, &new_key(), &json!({"amount": "30.00"})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(app.wallet(&wallet).await["balance"], "70.00");
}

/// Guard: the `status != active` check of `usable` — a captured hold cannot be captured again
/// with a new key, nor voided (422 `hold_not_active`), and a voided one cannot be captured:
/// one debit at most per hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_is_not_active_can_be_neither_captured_nor_voided() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;

    let captured = id_of(&place_ok(&app, &wallet, "30.00").await);
    assert_eq!(
        capture(&app, &captured, &new_key(), &json!({}))
            .await
            .status(),
        StatusCode::CREATED
    );
    let after_capture = app.wallet(&wallet).await;
    assert_problem(
        capture(&app, &captured, &new_key(), &json!({})).await,
        422,
        "hold_not_active",
    )
    .await;
    assert_problem(
        capture(&app, &captured, &new_key(), &json!({"amount": "1.00"})).await,
        422,
        "hold_not_active",
    )
    .await;
    assert_problem(
        void(&app, &captured, &new_key()).await,
        422,
        "hold_not_active",
    )
    .await;
    assert_eq!(app.wallet(&wallet).await, after_capture);
    assert_eq!(get_hold(&app, &captured).await["status"], "captured");

    let voided = id_of(&place_ok(&app, &wallet, "20.00").await);
    assert_eq!(
        void(&app, &voided, &new_key()).await.status(),
        StatusCode::OK
    );
    let after_void = app.wallet(&wallet).await;
    assert_problem(
        capture(&app, &voided, &new_key(), &json!({})).await,
        422,
        "hold_not_active",
    )
    .await;
    assert_problem(
        void(&app, &voided, &new_key()).await,
        422,
        "hold_not_active",
    )
    .await;
    assert_eq!(app.wallet(&wallet).await, after_void);
    assert_eq!(get_hold(&app, &voided).await["status"], "voided");

    let entries = app.assert_invariants(&wallet).await;
    let captures: Vec<_> = entries.iter().filter(|e| !e["hold_id"].is_null()).collect();
    assert_eq!(captures.len(), 1, "{entries:?}");
    assert_eq!(captures[0]["hold_id"], captured.as_str());
}

/// Guard: `release` on void — 200 with the hold `voided`, `held` released and `version`
/// raised, no entry, the balance unmoved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_releases_the_hold_and_moves_no_money() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let hold = place_ok(&app, &wallet, "30.00").await;
    let before = app.wallet(&wallet).await;
    assert_eq!(before["held"], "30.00");

    let response = void(&app, &id_of(&hold), &new_key()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let voided: Value = response.json().await.unwrap();
    assert_members(&voided, &HOLD_FIELDS);
    assert_eq!(voided["status"], "voided");
    assert_eq!(voided["captured_amount"], "0.00");
    assert_eq!(voided["amount"], "30.00");
    assert_eq!(voided["expires_at"], hold["expires_at"]);
    assert_eq!(voided["created_at"], hold["created_at"]);
    assert_eq!(get_hold(&app, &id_of(&hold)).await, voided);

    let after = app.wallet(&wallet).await;
    assert_eq!(after["balance"], "100.00");
    assert_eq!(after["held"], "0.00");
    assert_eq!(after["available"], "100.00");
    assert_eq!(version(&after), version(&before) + 1);
    assert_eq!(app.ledger(&wallet).await.len(), 1);
}

/// Guard: an empty body reads as `{}` (`JsonBody::parse`): a void and a full capture need no
/// fields, and `{}` with the same key is the same request (a replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_body_reads_as_an_empty_object() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let to_capture = id_of(&place_ok(&app, &wallet, "30.00").await);
    let to_void = id_of(&place_ok(&app, &wallet, "20.00").await);

    let path = format!("/v1/holds/{to_capture}/capture");
    let first = Answer::of(post_raw(&app, &path, Some("cap"), "").await).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    assert_eq!(first.json()["amount"], "30.00");
    let again = Answer::of(post_raw(&app, &path, Some("cap"), "{}").await).await;
    assert!(again.replayed);
    assert_eq!(again.bytes, first.bytes);

    let path = format!("/v1/holds/{to_void}/void");
    let voided = Answer::of(post_raw(&app, &path, Some("void"), "").await).await;
    assert_eq!(voided.status, StatusCode::OK, "{voided:?}");
    assert_eq!(voided.json()["status"], "voided");
    let state = app.wallet(&wallet).await;
    assert_eq!(state["balance"], "70.00");
    assert_eq!(state["held"], "0.00");
}

/// Guard: the tenant filter of `hold_wallet`/`lock_hold` and of GET — an unknown hold,
/// another tenant's hold and a non-UUID id all answer 404 `hold_not_found`; the foreign hold
/// is not touched; a well-formed unknown id's decline is stored, a non-UUID's is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_or_foreign_hold_is_hold_not_found() {
    let app = TestApp::spawn().await;
    let (_, other_key) = app.new_tenant(&Scope::ALL).await;
    let response = app
        .post_as(
            &other_key,
            "/v1/wallets",
            &new_key(),
            &json!({"currency": "EUR"}),
        )
        .await;
    let foreign_wallet = id_of(&response.json::<Value>().await.unwrap());
    let response = app
        .post_as(
            &other_key,
            &format!("/v1/wallets/{foreign_wallet}/credit"),
            &new_key(),
            &json!({"amount": "100.00", "currency": "EUR"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = app
        .post_as(
            &other_key,
            &format!("/v1/wallets/{foreign_wallet}/holds"),
            &new_key(),
            &json!({"amount": "30.00", "currency": "EUR"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let foreign_hold = id_of(&response.json::<Value>().await.unwrap());

    let unknown = uuid::Uuid::now_v7().to_string();
    for hold in [unknown.as_str(), foreign_hold.as_str(), "not-a-uuid"] {
        assert_problem(
            app.get(&format!("/v1/holds/{hold}")).await,
            404,
            "hold_not_found",
        )
        .await;
        assert_problem(
            capture(&app, hold, &new_key(), &json!({})).await,
            404,
            "hold_not_found",
        )
        .await;
        assert_problem(void(&app, hold, &new_key()).await, 404, "hold_not_found").await;
    }

    // Stored for a well-formed id (replayed), not for a malformed one.
    for hold in [unknown.as_str(), foreign_hold.as_str()] {
        let key = new_key();
        let first = Answer::of(capture(&app, hold, &key, &json!({})).await).await;
        let again = Answer::of(capture(&app, hold, &key, &json!({})).await).await;
        assert!(again.replayed, "hold_not_found for {hold} is stored");
        assert_eq!(again.bytes, first.bytes);
    }
    let key = new_key();
    capture(&app, "not-a-uuid", &key, &json!({})).await;
    let again = capture(&app, "not-a-uuid", &key, &json!({})).await;
    assert!(again.headers().get("idempotent-replayed").is_none());
    assert_problem(again, 404, "hold_not_found").await;

    let response = app
        .get_as(&other_key, &format!("/v1/holds/{foreign_hold}"))
        .await;
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "active");
    let response = app
        .get_as(&other_key, &format!("/v1/wallets/{foreign_wallet}"))
        .await;
    let state: Value = response.json().await.unwrap();
    assert_eq!(state["held"], "30.00");
    assert_eq!(state["balance"], "100.00");
}

/// Guard: a capture's amount is parsed in the hold's currency (`PendingAmount::in_currency`):
/// too many fraction digits for it is 400 `validation_failed`, not stored (the same key then
/// captures); zero and negative amounts are 400 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_amount_is_checked_against_the_hold_currency() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("JPY").await;
    app.fund(&wallet, "1000").await;
    let response = place(
        &app,
        &wallet,
        &new_key(),
        &json!({"amount": "500", "currency": "JPY"}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let hold = id_of(&response.json::<Value>().await.unwrap());
    let before = app.wallet(&wallet).await;

    let key = new_key();
    for bad in ["5.0", "1.5", "0", "-1", "abc", "5.00001"] {
        assert_problem(
            capture(&app, &hold, &key, &json!({"amount": bad})).await,
            400,
            "validation_failed",
        )
        .await;
    }
    assert_problem(
        capture(&app, &hold, &key, &json!({"amount": 5})).await,
        400,
        "validation_failed",
    )
    .await;
    assert_eq!(app.wallet(&wallet).await, before);
    assert_eq!(get_hold(&app, &hold).await["status"], "active");

    let response = capture(&app, &hold, &key, &json!({"amount": "200"})).await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "the 400s were not stored"
    );
    let entry: Value = response.json().await.unwrap();
    assert_eq!(entry["amount"], "200");
    assert_eq!(entry["balance_after"], "800");
    let state = app.wallet(&wallet).await;
    assert_eq!(state["held"], "0");
    assert_eq!(state["available"], "800");
}

// ---------------------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------------------

/// Guard: the `expires_at <= at` check of `usable`, which does not wait for the sweeper (it is
/// off here: the wallet still holds the money once the hold is past expiry). The capture is
/// refused with 422 `hold_expired` (stored) and expires the hold in the same transaction:
/// `held` released, `version` raised, no entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_cannot_be_captured_even_before_the_sweeper_runs() {
    let app = TestApp::spawn_with(sweeper_off).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let response = place(
        &app,
        &wallet,
        &new_key(),
        &json!({"amount": "30.00", "currency": "EUR", "expires_in_seconds": 1}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let hold = id_of(&response.json::<Value>().await.unwrap());
    wait_until_past_expiry(&app, &hold).await;
    let before = app.wallet(&wallet).await;
    assert_eq!(
        before["held"], "30.00",
        "the sweeper is off: nothing released it yet"
    );

    let path = format!("/v1/holds/{hold}/capture");
    let key = new_key();
    let first = Answer::of(app.post(&path, &key, &json!({})).await).await;
    assert_eq!(first.status, StatusCode::UNPROCESSABLE_ENTITY, "{first:?}");
    assert_eq!(first.json()["code"], "hold_expired");

    let after = app.wallet(&wallet).await;
    assert_eq!(after["held"], "0.00");
    assert_eq!(after["available"], "100.00");
    assert_eq!(after["balance"], "100.00");
    assert_eq!(version(&after), version(&before) + 1);
    let expired = get_hold(&app, &hold).await;
    assert_eq!(expired["status"], "expired");
    assert_eq!(expired["captured_amount"], "0.00");
    assert_eq!(app.ledger(&wallet).await.len(), 1, "no capture entry");

    let again = Answer::of(app.post(&path, &key, &json!({})).await).await;
    assert!(again.replayed);
    assert_eq!(again.bytes, first.bytes);
    assert_eq!(app.wallet(&wallet).await, after);
    app.assert_invariants(&wallet).await;
}

/// Guard: `void_once` maps a hold found past its expiry to 422 `hold_not_active` and still
/// expires it (held released, version raised) in the same transaction; the sweeper is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_of_an_expired_hold_is_hold_not_active_and_expires_it() {
    let app = TestApp::spawn_with(sweeper_off).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let response = place(
        &app,
        &wallet,
        &new_key(),
        &json!({"amount": "30.00", "currency": "EUR", "expires_in_seconds": 1}),
    )
    .await;
    let hold = id_of(&response.json::<Value>().await.unwrap());
    wait_until_past_expiry(&app, &hold).await;
    let before = app.wallet(&wallet).await;
    assert_eq!(before["held"], "30.00");

    let key = new_key();
    let path = format!("/v1/holds/{hold}/void");
    let first = Answer::of(app.post(&path, &key, &json!({})).await).await;
    assert_eq!(first.status, StatusCode::UNPROCESSABLE_ENTITY, "{first:?}");
    assert_eq!(first.json()["code"], "hold_not_active");
    let after = app.wallet(&wallet).await;
    assert_eq!(after["held"], "0.00");
    assert_eq!(version(&after), version(&before) + 1);
    assert_eq!(get_hold(&app, &hold).await["status"], "expired");
    let again = Answer::of(app.post(&path, &key, &json!({})).await).await;
    assert!(again.replayed);
    assert_eq!(again.bytes, first.bytes);
}

/// Guard: the sweeper (`expiry::run_forever`, every `holds.sweep_interval_s`) — with nobody
/// asking, an expired hold is released, its wallet's `version` raised, and the hold reads
/// `expired`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_releases_an_expired_hold_on_its_own() {
    let app = TestApp::spawn_with(|s| s.holds.sweep_interval_s = 1).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let response = place(
        &app,
        &wallet,
        &new_key(),
        &json!({"amount": "30.00", "currency": "EUR", "expires_in_seconds": 1}),
    )
    .await;
    let hold = id_of(&response.json::<Value>().await.unwrap());
    let placed = app.wallet(&wallet).await;
    assert_eq!(placed["held"], "30.00");

    poll_until("the sweeper released the hold", EXPIRY_WAIT_MAX, || async {
        app.wallet(&wallet).await["held"] == "0.00"
    })
    .await;
    let swept = app.wallet(&wallet).await;
    assert_eq!(swept["available"], "100.00");
    assert_eq!(swept["balance"], "100.00");
    assert_eq!(version(&swept), version(&placed) + 1);
    let expired = get_hold(&app, &hold).await;
    assert_eq!(expired["status"], "expired");
    assert!(timestamp(&expired["updated_at"]) >= timestamp(&expired["expires_at"]));
    assert_eq!(app.ledger(&wallet).await.len(), 1);
    app.assert_invariants(&wallet).await;
}

/// Guard: "a hold past `expires_at` can no longer be captured (422 `hold_expired`) even if no
/// background job has swept it yet" — so also once one has: the answer to a capture of a hold
/// past its expiry must not depend on whether the sweeper got to it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_of_a_swept_hold_is_still_hold_expired() {
    let app = TestApp::spawn_with(|s| s.holds.sweep_interval_s = 1).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let response = place(
        &app,
        &wallet,
        &new_key(),
        &json!({"amount": "30.00", "currency": "EUR", "expires_in_seconds": 1}),
    )
    .await;
    let hold = id_of(&response.json::<Value>().await.unwrap());
    poll_until("the sweeper released the hold", EXPIRY_WAIT_MAX, || async {
        app.wallet(&wallet).await["held"] == "0.00"
    })
    .await;

    assert_problem(
        capture(&app, &hold, &new_key(), &json!({})).await,
        422,
        "hold_expired",
    )
    .await;
}

/// Guard: as above, for a hold that a first capture found expired (and expired): a second
/// capture with a new key is still 422 `hold_expired`, the same answer as the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_capture_of_an_expired_hold_is_still_hold_expired() {
    let app = TestApp::spawn_with(sweeper_off).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let response = place(
        &app,
        &wallet,
        &new_key(),
        &json!({"amount": "30.00", "currency": "EUR", "expires_in_seconds": 1}),
    )
    .await;
    let hold = id_of(&response.json::<Value>().await.unwrap());
    wait_until_past_expiry(&app, &hold).await;
    assert_problem(
        capture(&app, &hold, &new_key(), &json!({})).await,
        422,
        "hold_expired",
    )
    .await;
    assert_problem(
        capture(&app, &hold, &new_key(), &json!({})).await,
        422,
        "hold_expired",
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Idempotency
// ---------------------------------------------------------------------------------------

/// Guard: layer 1 on every hold route — a retry with the same key and body gets the stored
/// status and bytes with `Idempotent-Replayed: true` and changes nothing: 201 place, 201
/// capture, 200 void, and the 422 declines (`insufficient_funds`, `capture_exceeds_hold`,
/// `hold_not_active` on capture and on void), even after the wallet changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hold_route_replays_its_answer_byte_for_byte() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let holds = format!("/v1/wallets/{wallet}/holds");

    // 201 place.
    let key = new_key();
    let body = json!({"amount": "30.00", "currency": "EUR", "reference": "r-1"});
    assert_replays(&app, &wallet, &holds, &key, &body).await;
    let placed = Answer::of(app.post(&holds, &key, &body).await).await;
    let hold = id_of(&placed.json());
    // 422 insufficient_funds on place, replayed even once the funds are there.
    let poor_key = new_key();
    let poor = json!({"amount": "80.00", "currency": "EUR"});
    assert_replays(&app, &wallet, &holds, &poor_key, &poor).await;
    let declined = Answer::of(app.post(&holds, &poor_key, &poor).await).await;
    app.fund(&wallet, "100.00").await;
    let later = Answer::of(app.post(&holds, &poor_key, &poor).await).await;
    assert!(later.replayed);
    assert_eq!(later.bytes, declined.bytes);
    assert_eq!(later.json()["code"], "insufficient_funds");

    // 422 capture_exceeds_hold, then 201 capture.
    let capture_path = format!("/v1/holds/{hold}/capture");
    assert_replays(
        &app,
        &wallet,
        &capture_path,
        &new_key(),
        &json!({"amount": "99.00"}),
    )
    .await;
    let capture_key = new_key();
    assert_replays(
        &app,
        &wallet,
        &capture_path,
        &capture_key,
        &json!({"amount": "10.00"}),
    )
    .await;
    // 422 hold_not_active on capture and on void.
    assert_replays(&app, &wallet, &capture_path, &new_key(), &json!({})).await;
    assert_replays(
        &app,
        &wallet,
        &format!("/v1/holds/{hold}/void"),
        &new_key(),
        &json!({}),
    )
    .await;

    // 200 void.
    let other = id_of(&place_ok(&app, &wallet, "5.00").await);
    assert_replays(
        &app,
        &wallet,
        &format!("/v1/holds/{other}/void"),
        &new_key(),
        &json!({}),
    )
    .await;

    // The 201 capture is still replayed after all that.
    let replay = Answer::of(
        app.post(&capture_path, &capture_key, &json!({"amount": "10.00"}))
            .await,
    )
    .await;
    assert!(replay.replayed);
    assert_eq!(replay.status, StatusCode::CREATED);
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(entries.iter().filter(|e| e["type"] == "debit").count(), 1);
    let state = app.wallet(&wallet).await;
    assert_eq!(state["balance"], "190.00");
    assert_eq!(state["held"], "0.00");
}

/// Guard: the fingerprint binding a key to one request (method, path, canonical body) on the
/// hold routes — same key, other body or other route: 422 `idempotency_key_reused`, nothing
/// changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_hold_request_is_refused() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let first = id_of(&place_ok(&app, &wallet, "10.00").await);
    let second = id_of(&place_ok(&app, &wallet, "20.00").await);

    let key = new_key();
    assert_eq!(
        place(
            &app,
            &wallet,
            &key,
            &json!({"amount": "1.00", "currency": "EUR"})
        )
        .await
        .status(),
        StatusCode::CREATED
    );
    let before = app.wallet(&wallet).await;
    assert_problem(
        place(
            &app,
            &wallet,
            &key,
            &json!({"amount": "2.00", "currency": "EUR"}),
        )
        .await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_problem(
        capture(&app, &first, &key, &json!({})).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.wallet(&wallet).await, before);

    let capture_key = new_key();
    assert_eq!(
        capture(&app, &first, &capture_key, &json!({}))
            .await
            .status(),
        StatusCode::CREATED
    );
    let before = app.wallet(&wallet).await;
    assert_problem(
        capture(&app, &first, &capture_key, &json!({"amount": "5.00"})).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_problem(
        capture(&app, &second, &capture_key, &json!({})).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_problem(
        void(&app, &second, &capture_key).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.wallet(&wallet).await, before);
    assert_eq!(get_hold(&app, &second).await["status"], "active");
}

/// Guard: `idempotency_key` extraction on the hold routes — no key is 400
/// `idempotency_key_missing` (a malformed one `idempotency_key_invalid`), and nothing happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_routes_require_an_idempotency_key() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let hold = id_of(&place_ok(&app, &wallet, "10.00").await);
    let before = app.wallet(&wallet).await;
    let routes = [
        (
            format!("/v1/wallets/{wallet}/holds"),
            r#"{"amount":"1.00","currency":"EUR"}"#,
        ),
        (format!("/v1/holds/{hold}/capture"), "{}"),
        (format!("/v1/holds/{hold}/void"), "{}"),
    ];
    for (path, body) in &routes {
        assert_problem(
            post_raw(&app, path, None, body).await,
            400,
            "idempotency_key_missing",
        )
        .await;
        assert_problem(
            post_raw(&app, path, Some(""), body).await,
            400,
            "idempotency_key_invalid",
        )
        .await;
        assert_problem(
            post_raw(&app, path, Some(&"k".repeat(256)), body).await,
            400,
            "idempotency_key_invalid",
        )
        .await;
    }
    assert_eq!(app.wallet(&wallet).await, before);
    assert_eq!(get_hold(&app, &hold).await["status"], "active");
}

/// Guard: scopes — a finance key (`ledger:read` + `wallets:read`) gets 403 `forbidden` on
/// place, capture, void and reverse, nothing changes, and the 403 is not stored (the same
/// idempotency key then works with a full key). It may still read the hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finance_key_cannot_place_capture_void_or_reverse() {
    let app = TestApp::spawn().await;
    let finance = finance_key(&app).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let hold = id_of(&place_ok(&app, &wallet, "10.00").await);
    let debit: Value = app
        .debit(&wallet, &new_key(), "5.00")
        .await
        .json()
        .await
        .unwrap();
    let before = app.wallet(&wallet).await;

    let key = new_key();
    let requests = [
        (
            format!("/v1/wallets/{wallet}/holds"),
            json!({"amount": "1.00", "currency": "EUR"}),
        ),
        (format!("/v1/holds/{hold}/capture"), json!({})),
        (format!("/v1/holds/{hold}/void"), json!({})),
        (
            format!("/v1/transactions/{}/reverse", id_of(&debit)),
            json!({}),
        ),
    ];
    for (path, body) in &requests {
        let problem = assert_problem(
            app.post_as(&finance, path, &key, body).await,
            403,
            "forbidden",
        )
        .await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("wallets:write"),
            "{problem}"
        );
    }
    assert_eq!(app.wallet(&wallet).await, before);
    let response = app.get_as(&finance, &format!("/v1/holds/{hold}")).await;
    assert_eq!(response.status(), StatusCode::OK);

    // Not stored: the key is still free.
    let response = app.post(&requests[0].0, &key, &requests[0].1).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}

// ---------------------------------------------------------------------------------------
// Races (one process: local queue, Redlock and the row lock together)
// ---------------------------------------------------------------------------------------

/// Guard: the whole pipeline of one process on holds (local queue, Redlock, the in-lock check
/// of `available`; one process, so this passes with the row lock deleted — the row lock alone
/// is proven by `the_row_lock_alone_places_exactly_ten_holds_across_two_processes`): 30
/// concurrent holds of 1.00 (distinct keys) on 10.00, shed answers retried with their keys —
/// exactly 10 placed, 20 `insufficient_funds`, held 10.00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_concurrent_holds_on_ten_euros_place_exactly_ten() {
    let app = TestApp::spawn_with(contended).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let before = app.wallet(&wallet).await;
    let path = format!("/v1/wallets/{wallet}/holds");
    let body = json!({"amount": "1.00", "currency": "EUR"});

    let answers: Vec<(StatusCode, Value)> = join_all((0..30).map(|_| async {
        let decided = app.post_until_decided(&path, &new_key(), &body).await;
        (decided.status, decided.body)
    }))
    .await;

    assert_eq!(
        count_answers(&answers, StatusCode::CREATED, None),
        10,
        "{answers:?}"
    );
    assert_eq!(
        count_answers(
            &answers,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("insufficient_funds")
        ),
        20,
        "{answers:?}"
    );
    let state = app.wallet(&wallet).await;
    assert_eq!(state["held"], "10.00");
    assert_eq!(state["available"], "0.00");
    assert_eq!(state["balance"], "10.00");
    assert_eq!(version(&state), version(&before) + 10);
    let ids: BTreeSet<String> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .map(|(_, b)| id_of(b))
        .collect();
    assert_eq!(ids.len(), 10);
    for id in &ids {
        assert_eq!(get_hold(&app, id).await["status"], "active");
    }
    assert_eq!(app.assert_invariants(&wallet).await.len(), 1);
}

/// Guard: the pipeline of one process on captures — its local queue and Redlock order the
/// captures before the row lock sees them, and each sees the one before it through the
/// `status` check (so this passes with the row locks deleted; those alone are proven by
/// `the_row_lock_alone_ends_a_hold_once_across_two_processes`): 10 concurrent captures with
/// distinct keys — exactly one 201, the rest `hold_not_active`, one entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_captures_of_one_hold_capture_it_once() {
    let app = TestApp::spawn_with(contended).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let hold = id_of(&place_ok(&app, &wallet, "30.00").await);
    let path = format!("/v1/holds/{hold}/capture");

    let answers: Vec<(StatusCode, Value)> = join_all((0..10).map(|_| async {
        let decided = app.post_until_decided(&path, &new_key(), &json!({})).await;
        (decided.status, decided.body)
    }))
    .await;

    assert_eq!(
        count_answers(&answers, StatusCode::CREATED, None),
        1,
        "{answers:?}"
    );
    assert_eq!(
        count_answers(
            &answers,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("hold_not_active")
        ),
        9,
        "{answers:?}"
    );
    let state = app.wallet(&wallet).await;
    assert_eq!(state["balance"], "70.00");
    assert_eq!(state["held"], "0.00");
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["hold_id"] == hold.as_str())
            .count(),
        1
    );
    assert_eq!(get_hold(&app, &hold).await["status"], "captured");
}

/// Guard: the pipeline of one process orders a capture and a void of one hold, and the second
/// sees the first's outcome (the `status` check; the row locks alone are proven across two
/// processes below). Raced over several holds: in each, exactly one wins, the other gets
/// `hold_not_active`, the hold ends as the winner says, `held` ends at 0, and there is one
/// capture entry exactly when the capture won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_racing_a_void_lets_exactly_one_win() {
    const ROUNDS: usize = 8;
    let app = TestApp::spawn_with(contended).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "1000.00").await;
    let holds: Vec<String> = join_all((0..ROUNDS).map(|_| async {
        let decided = app
            .post_until_decided(
                &format!("/v1/wallets/{wallet}/holds"),
                &new_key(),
                &json!({"amount": "10.00", "currency": "EUR"}),
            )
            .await;
        assert_eq!(decided.status, StatusCode::CREATED);
        id_of(&decided.body)
    }))
    .await;

    let outcomes = join_all(holds.iter().map(|hold| {
        let app = &app;
        async move {
            let capture_path = format!("/v1/holds/{hold}/capture");
            let void_path = format!("/v1/holds/{hold}/void");
            let (capture_key, void_key, empty) = (new_key(), new_key(), json!({}));
            let (captured, voided) = tokio::join!(
                app.post_until_decided(&capture_path, &capture_key, &empty),
                app.post_until_decided(&void_path, &void_key, &empty),
            );
            (hold.clone(), captured, voided)
        }
    }))
    .await;

    let mut captures_won = 0;
    for (hold, captured, voided) in &outcomes {
        let capture_won = captured.status == StatusCode::CREATED;
        let void_won = voided.status == StatusCode::OK;
        assert!(capture_won != void_won, "{hold}: {captured:?} / {voided:?}");
        let loser = if capture_won { voided } else { captured };
        assert_eq!(loser.status, StatusCode::UNPROCESSABLE_ENTITY, "{loser:?}");
        assert_eq!(loser.body["code"], "hold_not_active", "{loser:?}");
        let status = get_hold(&app, hold).await["status"].clone();
        assert_eq!(status, if capture_won { "captured" } else { "voided" });
        captures_won += usize::from(capture_won);
    }
    let state = app.wallet(&wallet).await;
    assert_eq!(state["held"], "0.00");
    let entries = app.assert_invariants(&wallet).await;
    for (hold, captured, _) in &outcomes {
        let entries_of_hold = entries
            .iter()
            .filter(|e| e["hold_id"] == hold.as_str())
            .count();
        let expected = usize::from(captured.status == StatusCode::CREATED);
        assert_eq!(entries_of_hold, expected, "{hold}");
    }
    assert_eq!(
        dec(&state["balance"]),
        rust_decimal::Decimal::from(1000 - 10 * captures_won as i64)
    );
}

// ---------------------------------------------------------------------------------------
// Races across two processes (the row lock alone)
// ---------------------------------------------------------------------------------------

/// Two walletd processes on one database and tenant, each with its own private Redis: their
/// Redlocks and local queues never see each other, so what keeps their transactions on one
/// wallet apart is the Postgres row lock alone (as in `row_lock.rs`).
pub struct TwoProcesses {
    pub first: TestApp,
    pub second: TestApp,
    _redis: (PrivateRedis, PrivateRedis),
}

impl TwoProcesses {
    pub async fn start() -> Self {
        let (a, b) = tokio::join!(PrivateRedis::start(), PrivateRedis::start());
        let first = TestApp::spawn_with(own_redis(&a)).await;
        let second = first.spawn_replica(own_redis(&b)).await;
        Self {
            first,
            second,
            _redis: (a, b),
        }
    }

    pub fn process(&self, i: usize) -> &TestApp {
        if i.is_multiple_of(2) {
            &self.first
        } else {
            &self.second
        }
    }
}

fn own_redis(node: &PrivateRedis) -> impl FnOnce(&mut Settings) + use<> {
    let url = node.url();
    move |s| {
        s.redis.urls = vec![url];
        s.database.pool_max_size = 16;
        s.lock.wait_ms_max = 8_000;
        // Replicas on separate Redis nodes cannot share a balance cache (one replica's writes
        // would never reach the other's entries): a deployment gives them one first node.
        s.cache.enabled = false;
    }
}

/// How long a race waits for both processes to block on the held wallet row.
const BARRIER_WAIT_MAX: Duration = Duration::from_secs(20);

/// Sends `requests` (path, body) at once, request `i` to process `i % 2`, while the test's own
/// session holds the wallet row (`FOR NO KEY UPDATE`: what the wallet UPDATE needs and what
/// `SELECT … FOR UPDATE` conflicts with) until both processes block on it, so their first
/// transactions run at the same instant. Shed answers are retried with their keys.
pub async fn race_on_row(
    processes: &TwoProcesses,
    wallet: &str,
    requests: &[(String, Value)],
) -> Vec<Decided> {
    let mut holder = processes.first.db().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM wallets WHERE id = '{wallet}' FOR NO KEY UPDATE"
        ))
        .await
        .unwrap();
    let mut probe = processes.first.db().await;
    let release = async move {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let deadline = Instant::now() + BARRIER_WAIT_MAX;
        loop {
            let blocked = diesel::sql_query(
                "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .get_result::<Count>(&mut probe)
            .await
            .unwrap()
            .n;
            if blocked >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {blocked} of 2 transactions blocked on the held wallet row"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        holder.batch_execute("COMMIT").await.unwrap();
    };
    let keys: Vec<String> = (0..requests.len()).map(|_| new_key()).collect();
    let answers = join_all(
        requests
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(i, ((path, body), key))| {
                processes.process(i).post_until_decided(path, key, body)
            }),
    );
    let (answers, ()) = tokio::join!(answers, release);
    answers
}

/// Guard: the row lock alone (`lock_wallet`'s `FOR UPDATE`) keeps `held` right: 30 holds of
/// 1.00 on 10.00 through two processes whose Redlocks and queues cannot see each other, both
/// first transactions released onto the wallet row at once. Without the row lock both decide
/// on the same `held` and the second commit breaks `held = sum of active holds` (a 500).
/// Exactly 10 placed, 20 `insufficient_funds`, held 10.00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_row_lock_alone_places_exactly_ten_holds_across_two_processes() {
    let processes = TwoProcesses::start().await;
    let app = &processes.first;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let requests: Vec<(String, Value)> = (0..30)
        .map(|_| {
            (
                format!("/v1/wallets/{wallet}/holds"),
                json!({"amount": "1.00", "currency": "EUR"}),
            )
        })
        .collect();

    let answers = race_on_row(&processes, &wallet, &requests).await;

    let answers: Vec<(StatusCode, Value)> =
        answers.into_iter().map(|a| (a.status, a.body)).collect();
    assert_eq!(
        count_answers(&answers, StatusCode::CREATED, None),
        10,
        "{answers:?}"
    );
    assert_eq!(
        count_answers(
            &answers,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("insufficient_funds")
        ),
        20,
        "{answers:?}"
    );
    for process in [&processes.first, &processes.second] {
        let state = process.wallet(&wallet).await;
        assert_eq!(state["held"], "10.00");
        assert_eq!(state["available"], "0.00");
    }
    app.assert_invariants(&wallet).await;
}

/// Guard: the row locks alone (the wallet's `FOR UPDATE` in `lock_wallet` and the hold's in
/// `lock_hold`; either one suffices, so this fails only with both gone) let one hold be
/// captured or voided once across two processes: 6 captures and 6 voids of one hold, distinct
/// keys, released onto the wallet row at once. Exactly one wins; every other answer is
/// `hold_not_active` (without the locks the loser decides on the stale hold and its write is
/// refused by the database: a 500); `held` ends at 0 and there is a capture entry only if a
/// capture won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_row_lock_alone_ends_a_hold_once_across_two_processes() {
    let processes = TwoProcesses::start().await;
    let app = &processes.first;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let hold = id_of(&place_ok(app, &wallet, "30.00").await);
    let requests: Vec<(String, Value)> = (0..12)
        .map(|i| {
            let route = if i % 4 < 2 { "capture" } else { "void" };
            (format!("/v1/holds/{hold}/{route}"), json!({}))
        })
        .collect();

    let answers = race_on_row(&processes, &wallet, &requests).await;

    let won: Vec<&Decided> = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED || a.status == StatusCode::OK)
        .collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    for answer in &answers {
        if !std::ptr::eq(answer, won[0]) {
            assert_eq!(
                answer.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{answer:?}"
            );
            assert_eq!(answer.body["code"], "hold_not_active", "{answer:?}");
        }
    }
    let captured = won[0].status == StatusCode::CREATED;
    let state = app.wallet(&wallet).await;
    assert_eq!(state["held"], "0.00");
    assert_eq!(state["balance"], if captured { "70.00" } else { "100.00" });
    assert_eq!(
        get_hold(app, &hold).await["status"],
        if captured { "captured" } else { "voided" }
    );
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["hold_id"] == hold.as_str())
            .count(),
        usize::from(captured)
    );
}

/// Guard: the pipeline stores every command's answer in the same transaction (`Pipeline::
/// transaction` completes the claim for every command). A hold decline replays from Postgres
/// alone — the Redis replay cache forgotten — with the same bytes; had the answer not been
/// stored, the retry would see a key still in flight (409) instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_decline_is_stored_in_postgres_not_only_in_the_replay_cache() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    let key = new_key();
    let path = format!("/v1/wallets/{wallet}/holds");
    let body = json!({"amount": "5.00", "currency": "EUR"});
    let first = app.post(&path, &key, &body).await;
    assert_eq!(first.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let first = first.bytes().await.unwrap();
    crate::helpers::forget_replay_cache(&app, &key).await;
    let replay = app.post(&path, &key, &body).await;
    assert_eq!(replay.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.bytes().await.unwrap(), first);
}
