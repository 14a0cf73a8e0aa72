//! Every row of API.md's error table (Part 1) through HTTP, and after each error that must
//! change nothing, proof that nothing changed.

use std::time::{Duration, Instant};

use diesel_async::SimpleAsyncConnection;
use reqwest::header::HeaderValue;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;
use walletd::domain::{Scope, TenantId, WalletId};
use walletd::pipeline::lock::wallet_lock_key;

use crate::helpers::{TestApp, assert_problem, base_settings, new_key};

/// A wallet's whole observable state: the wallet document and every ledger entry.
async fn snapshot(app: &TestApp, wallet: &str) -> (Value, Vec<Value>) {
    (app.wallet(wallet).await, app.ledger(wallet).await)
}

async fn assert_unchanged(app: &TestApp, wallet: &str, before: &(Value, Vec<Value>)) {
    assert_eq!(
        &snapshot(app, wallet).await,
        before,
        "the wallet or its ledger changed"
    );
}

/// An authenticated POST with a raw JSON body and an optional idempotency key.
async fn post_raw(
    app: &TestApp,
    path: &str,
    key: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> Response {
    let mut request = app
        .client
        .post(app.url(path))
        .bearer_auth(&app.api_key)
        .header("Content-Type", "application/json");
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.body(body).send().await.unwrap()
}

/// The `Retry-After` header as whole seconds (at least 1).
fn retry_after(response: &Response) -> u64 {
    let value = response
        .headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("{} without Retry-After", response.status()))
        .to_str()
        .unwrap();
    let seconds: u64 = value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?} is not delta-seconds"));
    assert!(seconds >= 1, "Retry-After {seconds}");
    assert_conventions(response);
    seconds
}

/// `Cache-Control: no-store` and an `X-Request-Id`, which every response carries.
fn assert_conventions(response: &Response) {
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(!response.headers()["x-request-id"].is_empty());
}

fn is_replayed(response: &Response) -> bool {
    response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
}

/// The settings that make a debit wait on the lock for a short, bounded time.
const LOCK_WAIT_MS: u64 = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_unknown_and_duplicate_fields_are_validation_failed() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = snapshot(&app, &wallet).await;
    let long_description = format!(
        r#"{{"amount":"1.00","currency":"EUR","description":"{}"}}"#,
        "d".repeat(1025)
    );
    let long_reference = format!(
        r#"{{"amount":"1.00","currency":"EUR","reference":"{}"}}"#,
        "r".repeat(256)
    );
    let bodies: Vec<&str> = vec![
        // Not JSON, or not a JSON object.
        r#"{"amount": "1.00", "currency": "EUR""#,
        r#"{"amount": "1.00" "currency": "EUR"}"#,
        r#"{"amount": "1.00", "currency": "EUR",}"#,
        r#"{"amount": "1.00", "currency": "EUR"} {}"#,
        r#"{amount: "1.00", currency: "EUR"}"#,
        r#"{'amount': '1.00', 'currency': 'EUR'}"#,
        "",
        "null",
        "[]",
        r#""1.00""#,
        // Missing or null required fields.
        r#"{"currency": "EUR"}"#,
        r#"{"amount": "1.00"}"#,
        r#"{"amount": null, "currency": "EUR"}"#,
        r#"{"amount": "1.00", "currency": null}"#,
        // Unknown fields, including mass assignment of what only the server decides.
        r#"{"amount": "1.00", "currency": "EUR", "balance_after": "1000.00"}"#,
        r#"{"amount": "1.00", "currency": "EUR", "balance_before": "0.00"}"#,
        r#"{"amount": "1.00", "currency": "EUR", "tenant_id": "00000000-0000-0000-0000-000000000000"}"#,
        r#"{"amount": "1.00", "currency": "EUR", "wallet_id": "00000000-0000-0000-0000-000000000000"}"#,
        r#"{"amount": "1.00", "currency": "EUR", "type": "credit"}"#,
        r#"{"amount": "1.00", "currency": "EUR", "seq": 1}"#,
        r#"{"amount": "1.00", "currency": "EUR", "Amount": "90.00"}"#,
        r#"{"amount": "1.00", "currency": "EUR", "extra": null}"#,
        // Duplicate keys: which one wins would be up to the parser.
        r#"{"amount": "1.00", "currency": "EUR", "amount": "90.00"}"#,
        r#"{"amount": "90.00", "amount": "1.00", "currency": "EUR"}"#,
        r#"{"amount": "1.00", "currency": "EUR", "currency": "USD"}"#,
        r#"{"amount": "1.00", "currency": "EUR", "reference": "a", "reference": "b"}"#,
        r#"{"amount": "1.00", "currency": "EUR", "metadata": {}, "metadata": {"a": 1}}"#,
        // Wrong types and bad text fields.
        r#"{"amount": "1.00", "currency": "EUR", "metadata": []}"#,
        r#"{"amount": "1.00", "currency": "EUR", "metadata": "x"}"#,
        r#"{"amount": "1.00", "currency": "EUR", "reference": 5}"#,
        r#"{"amount": "1.00", "currency": "EUR", "reference": ""}"#,
        r#"{"amount": "1.00", "currency": "EUR", "reference": "a\u0001b"}"#,
        r#"{"amount": "1.00", "currency": "EUR", "description": "line\nbreak"}"#,
        r#"{"amount": "1.00", "currency": "EUR", "metadata": {"a": "nul\u0000"}}"#,
        r#"{"amount": "1.00", "currency": "EUR", "metadata": {"nul\u0000": 1}}"#,
        &long_description,
        &long_reference,
    ];
    for path in [
        format!("/v1/wallets/{wallet}/debit"),
        format!("/v1/wallets/{wallet}/credit"),
    ] {
        for body in &bodies {
            let response = post_raw(&app, &path, Some(&new_key()), body.to_string()).await;
            let problem = assert_problem(response, 400, "validation_failed").await;
            assert!(
                !problem["detail"].as_str().unwrap().is_empty(),
                "{body}: {problem}"
            );
        }
        // Bytes that are not UTF-8.
        let response = post_raw(
            &app,
            &path,
            Some(&new_key()),
            b"{\"amount\":\"1.00\",\"currency\":\"EU\xff\"}".to_vec(),
        )
        .await;
        assert_problem(response, 400, "validation_failed").await;
    }
    assert_unchanged(&app, &wallet, &before).await;

    // Creating a wallet: no field the server owns can be set by the client.
    for body in [
        r#"{"currency": "EUR", "balance": "1000000.00"}"#,
        r#"{"currency": "EUR", "available": "1000000.00"}"#,
        r#"{"currency": "EUR", "held": "0.00"}"#,
        r#"{"currency": "EUR", "tenant_id": "00000000-0000-0000-0000-000000000000"}"#,
        r#"{"currency": "EUR", "id": "00000000-0000-0000-0000-000000000000"}"#,
        r#"{"currency": "EUR", "status": "closed"}"#,
        r#"{"currency": "EUR", "version": 7}"#,
        r#"{"currency": "EUR", "currency": "USD"}"#,
        r#"{"currency": "EUR", "overdraft_limit": 10}"#,
        r#"{"currency": "EUR", "overdraft_limit": "-1.00"}"#,
        r#"{"currency": "EUR", "overdraft_limit": "1.001"}"#,
        r#"{"currency": "EUR", "owner_ref": ""}"#,
        r#"{"owner_ref": "user-42"}"#,
        r#"{"currency": "EUR""#,
    ] {
        let response = post_raw(&app, "/v1/wallets", Some("create-once"), body).await;
        assert_problem(response, 400, "validation_failed").await;
    }
    // None of those was stored under the key: the corrected request executes.
    let response = post_raw(
        &app,
        "/v1/wallets",
        Some("create-once"),
        r#"{"currency":"EUR"}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(!is_replayed(&response));
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["balance"], "0.00");
    assert_eq!(created["status"], "active");
}

/// Duplicate keys anywhere in the body are as ambiguous as at the top level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_inside_metadata_are_validation_failed() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = snapshot(&app, &wallet).await;
    let response = post_raw(
        &app,
        &format!("/v1/wallets/{wallet}/debit"),
        Some(&new_key()),
        r#"{"amount": "1.00", "currency": "EUR", "metadata": {"order": "A-1", "order": "B-2"}}"#,
    )
    .await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "a duplicate key inside metadata was accepted: {body}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "validation_failed"
    );
    assert_unchanged(&app, &wallet, &before).await;
}

/// API.md: a revoked key answers 401 at most 1 s later, on every replica.
const REVOCATION_DELAY_MAX: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_unauthorized_within_a_second() {
    let app = TestApp::spawn().await;
    let (_, key) = app.new_tenant(&Scope::ALL).await;
    let path = format!("/v1/wallets/{}", Uuid::now_v7());
    // Used once, so that the service has it cached.
    assert_problem(app.get_as(&key, &path).await, 404, "wallet_not_found").await;
    let key_id = walletd::domain::KeyId::parse(&key[3..35]).unwrap();
    assert_eq!(
        walletd::auth::keys::revoke_key(&mut app.db().await, key_id)
            .await
            .unwrap(),
        walletd::auth::keys::Revoked::Now
    );
    // Revoked in the database only (no Redis marker): the auth cache TTL bounds the delay,
    // and API.md allows at most 1 s. A request sent 1 s or more after the revocation must be
    // refused; earlier ones may still pass.
    let revoked = Instant::now();
    loop {
        let sent = revoked.elapsed();
        let response = app.get_as(&key, &path).await;
        if response.status() == StatusCode::UNAUTHORIZED {
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            assert_problem(response, 401, "unauthorized").await;
            break;
        }
        assert!(
            sent < REVOCATION_DELAY_MAX,
            "a revoked key still works in a request sent {sent:?} after the revocation"
        );
        assert_problem(response, 404, "wallet_not_found").await;
        tokio::time::sleep(crate::helpers::POLL_INTERVAL).await;
    }
    // The tenant's other key, and other tenants, are unaffected.
    assert_eq!(app.get(&path).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amounts_must_be_positive_decimal_strings_within_bounds_and_minor_units() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = snapshot(&app, &wallet).await;
    let bad_amounts = [
        json!(12.5),
        json!(1),
        json!(true),
        json!({"value": "1.00"}),
        json!("0"),
        json!("0.00"),
        json!("-1"),
        json!("-1.00"),
        json!("+1.00"),
        json!("1e3"),
        json!("1E3"),
        json!("NaN"),
        json!("Infinity"),
        json!("1.001"),
        json!("0.001"),
        json!(""),
        json!(" 1.00"),
        json!("1.00 "),
        json!("1."),
        json!(".50"),
        json!("1,00"),
        json!("1_000"),
        json!("0x10"),
        json!("\u{ff11}"),
        json!("1000000000000000.01"),
        json!("1000000000000001"),
        json!("99999999999999999999999999999999999999"),
    ];
    for path in [
        format!("/v1/wallets/{wallet}/debit"),
        format!("/v1/wallets/{wallet}/credit"),
    ] {
        for amount in &bad_amounts {
            let response = app
                .post(
                    &path,
                    &new_key(),
                    &json!({"amount": amount, "currency": "EUR"}),
                )
                .await;
            let status = response.status();
            let body = response.text().await.unwrap();
            assert_eq!(status, StatusCode::BAD_REQUEST, "amount {amount}: {body}");
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap()["code"],
                "validation_failed",
                "amount {amount}"
            );
        }
    }
    assert_unchanged(&app, &wallet, &before).await;

    // The maximum is inclusive, with or without the currency's fraction digits.
    let big = app.create_wallet("EUR").await;
    for (amount, balance) in [
        ("1000000000000000", "1000000000000000.00"),
        ("1000000000000000.00", "2000000000000000.00"),
    ] {
        let response = app
            .post(
                &format!("/v1/wallets/{big}/credit"),
                &new_key(),
                &json!({"amount": amount, "currency": "EUR"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED, "{amount}");
        let entry: Value = response.json().await.unwrap();
        assert_eq!(entry["amount"], "1000000000000000.00");
        assert_eq!(entry["balance_after"], balance);
    }
    let response = app.debit(&big, &new_key(), "1000000000000000").await;
    assert_eq!(response.status(), StatusCode::CREATED);

    // Fraction digits are counted as written, per currency.
    let jpy = app.create_wallet("JPY").await;
    let kwd = app.create_wallet("KWD").await;
    for (wallet, currency, amount, accepted) in [
        (&jpy, "JPY", "5.0", false),
        (&jpy, "JPY", "5.", false),
        (&jpy, "JPY", "5", true),
        (&kwd, "KWD", "1.0000", false),
        (&kwd, "KWD", "0.0001", false),
        (&kwd, "KWD", "1.000", true),
        (&kwd, "KWD", "1.5", true),
    ] {
        let response = app
            .post(
                &format!("/v1/wallets/{wallet}/credit"),
                &new_key(),
                &json!({"amount": amount, "currency": currency}),
            )
            .await;
        if accepted {
            assert_eq!(
                response.status(),
                StatusCode::CREATED,
                "{currency} {amount}"
            );
        } else {
            assert_problem(response, 400, "validation_failed").await;
        }
    }
    assert_eq!(app.wallet(&jpy).await["balance"], "5");
    assert_eq!(app.wallet(&kwd).await["balance"], "2.500");
    app.assert_invariants(&big).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn currencies_must_be_upper_case_iso_4217_codes() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = snapshot(&app, &wallet).await;
    let bad_codes = [
        json!("eur"),
        json!("Eur"),
        json!("ABC"),
        json!("QQQ"),
        json!("EU"),
        json!("EURO"),
        json!(" EUR"),
        json!(""),
        json!(978),
    ];
    for code in &bad_codes {
        for path in [
            format!("/v1/wallets/{wallet}/debit"),
            format!("/v1/wallets/{wallet}/credit"),
        ] {
            let response = app
                .post(
                    &path,
                    &new_key(),
                    &json!({"amount": "1.00", "currency": code}),
                )
                .await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{code}");
            assert_problem(response, 400, "validation_failed").await;
        }
        let response = app
            .post("/v1/wallets", &new_key(), &json!({"currency": code}))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{code}");
        assert_problem(response, 400, "validation_failed").await;
    }
    // A real code that is not the wallet's is another error: 422, not 400.
    let response = app
        .post(
            &format!("/v1/wallets/{wallet}/debit"),
            &new_key(),
            &json!({"amount": "1.00", "currency": "USD"}),
        )
        .await;
    assert_problem(response, 422, "currency_mismatch").await;
    assert_unchanged(&app, &wallet, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_limit_and_cursor_are_validated() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    app.fund(&wallet, "20.00").await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=abc",
        "limit=",
        "limit=1.5",
        "limit=99999999999999999999",
        "after=abc",
        "after=-1",
        "after=",
        "after=1.5",
        "after=99999999999999999999",
        "limit=10&after=xyz",
    ] {
        let response = app
            .get(&format!("/v1/wallets/{wallet}/ledger?{query}"))
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        assert_problem(response, 400, "validation_failed").await;
    }
    // The bounds themselves are fine, and a returned cursor works.
    for (query, count) in [("limit=1", 1), ("limit=1000", 2), ("", 2)] {
        let response = app
            .get(&format!("/v1/wallets/{wallet}/ledger?{query}"))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{query}");
        let page: Value = response.json().await.unwrap();
        assert_eq!(page["entries"].as_array().unwrap().len(), count, "{query}");
    }
    let first: Value = app
        .get(&format!("/v1/wallets/{wallet}/ledger?limit=1"))
        .await
        .json()
        .await
        .unwrap();
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .get(&format!(
            "/v1/wallets/{wallet}/ledger?limit=1&after={cursor}"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["entries"][0]["seq"], 2);
    assert_eq!(second["next_cursor"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutating_post_without_idempotency_key_is_refused() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = snapshot(&app, &wallet).await;
    for (path, body) in [
        (
            format!("/v1/wallets/{wallet}/debit"),
            r#"{"amount":"1.00","currency":"EUR"}"#,
        ),
        (
            format!("/v1/wallets/{wallet}/credit"),
            r#"{"amount":"1.00","currency":"EUR"}"#,
        ),
        ("/v1/wallets".to_owned(), r#"{"currency":"EUR"}"#),
    ] {
        let response = post_raw(&app, &path, None, body).await;
        assert_problem(response, 400, "idempotency_key_missing").await;
    }
    assert_unchanged(&app, &wallet, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_idempotency_keys_are_refused_and_255_characters_are_fine() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = snapshot(&app, &wallet).await;
    let path = format!("/v1/wallets/{wallet}/debit");
    let body = r#"{"amount":"1.00","currency":"EUR"}"#;
    let too_long = "k".repeat(256);
    let invalid: Vec<HeaderValue> = vec![
        HeaderValue::from_static(""),
        HeaderValue::from_str(&too_long).unwrap(),
        HeaderValue::from_bytes(b"tab\there").unwrap(),
        HeaderValue::from_bytes("caf\u{e9}".as_bytes()).unwrap(),
        HeaderValue::from_bytes(b"latin1-\xe9").unwrap(),
        HeaderValue::from_bytes(b"high-\x80").unwrap(),
    ];
    for value in invalid {
        let response = app
            .client
            .post(app.url(&path))
            .bearer_auth(&app.api_key)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", value.clone())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{value:?}");
        assert_problem(response, 400, "idempotency_key_invalid").await;
    }
    // Two keys on one request: which one would count?
    let response = app
        .client
        .post(app.url(&path))
        .bearer_auth(&app.api_key)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", "one")
        .header("Idempotency-Key", "two")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_problem(response, 400, "idempotency_key_invalid").await;
    assert_unchanged(&app, &wallet, &before).await;

    // 255 printable characters (space and punctuation included) are a valid key.
    let longest = "k".repeat(255);
    for key in [longest.as_str(), "a b~!@#$%^&*()_+{}|:<>?", "x"] {
        let response = post_raw(&app, &path, Some(key), body).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{key}");
        assert!(!is_replayed(&response));
        let entry: Value = response.json().await.unwrap();
        assert_eq!(entry["idempotency_key"], key);
        let replay = post_raw(&app, &path, Some(key), body).await;
        assert_eq!(replay.status(), StatusCode::CREATED);
        assert!(is_replayed(&replay), "{key}");
    }
    assert_eq!(app.wallet(&wallet).await["balance"], "97.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_unknown_or_malformed_api_keys_are_unauthorized() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let transaction: Value = app
        .post(
            &format!("/v1/wallets/{wallet}/credit"),
            &new_key(),
            &json!({"amount": "1.00", "currency": "EUR"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let before = snapshot(&app, &wallet).await;

    // Our own key id with another secret; an unknown key id with a well-formed secret.
    let mut wrong_secret = app.api_key.clone();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == '0' { '1' } else { '0' });
    let unknown = format!("wd_{}_{}", Uuid::new_v4().simple(), "ab".repeat(32));
    let authorizations: Vec<Option<String>> = vec![
        None,
        Some(format!("Bearer {wrong_secret}")),
        Some(format!("Bearer {unknown}")),
        Some("Bearer not-a-key".to_owned()),
        Some("Bearer ".to_owned()),
        Some("Bearer".to_owned()),
        Some(format!("Basic {}", app.api_key)),
        Some(format!("Token {}", app.api_key)),
        Some(app.api_key.clone()),
        Some(format!("Bearer {}x", app.api_key)),
        Some(format!("Bearer {}", &app.api_key[..app.api_key.len() - 2])),
    ];
    let routes = [
        ("GET", format!("/v1/wallets/{wallet}")),
        ("GET", format!("/v1/wallets/{wallet}/ledger")),
        (
            "GET",
            format!("/v1/transactions/{}", transaction["id"].as_str().unwrap()),
        ),
        ("POST", format!("/v1/wallets/{wallet}/debit")),
        ("POST", format!("/v1/wallets/{wallet}/credit")),
        ("POST", "/v1/wallets".to_owned()),
    ];
    for authorization in &authorizations {
        for (method, path) in &routes {
            let mut request = if *method == "GET" {
                app.client.get(app.url(path))
            } else {
                app.client
                    .post(app.url(path))
                    .header("Idempotency-Key", new_key())
                    .header("Content-Type", "application/json")
                    .body(r#"{"amount":"1.00","currency":"EUR"}"#)
            };
            if let Some(value) = authorization {
                request = request.header("Authorization", value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {authorization:?}"
            );
            let challenge = response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
            let problem = assert_problem(response, 401, "unauthorized").await;
            assert!(
                !problem.to_string().contains(&app.api_key[..20]),
                "the key leaks into {problem}"
            );
        }
    }
    // Authentication comes first: no key and no Idempotency-Key is still 401.
    let response = app
        .client
        .post(app.url(&format!("/v1/wallets/{wallet}/debit")))
        .json(&json!({"amount": "1.00", "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_problem(response, 401, "unauthorized").await;
    // The scheme is case-insensitive (RFC 9110).
    let response = app
        .client
        .get(app.url(&format!("/v1/wallets/{wallet}")))
        .header("Authorization", format!("bearer {}", app.api_key))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_unchanged(&app, &wallet, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_the_route_scope_is_forbidden() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = snapshot(&app, &wallet).await;
    let (_, read_only) = app.new_tenant(&[Scope::WalletsRead]).await;
    let (_, write_only) = app.new_tenant(&[Scope::WalletsWrite]).await;
    let (_, ledger_only) = app.new_tenant(&[Scope::LedgerRead]).await;
    let entry = json!({"amount": "1.00", "currency": "EUR"});

    // A write-only key can create and move money in its own wallet...
    let response = app
        .post_as(
            &write_only,
            "/v1/wallets",
            &new_key(),
            &json!({"currency": "EUR"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let own: Value = response.json().await.unwrap();
    let own = own["id"].as_str().unwrap().to_owned();
    let response = app
        .post_as(
            &write_only,
            &format!("/v1/wallets/{own}/credit"),
            &new_key(),
            &entry,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let credit: Value = response.json().await.unwrap();
    let credit_id = credit["id"].as_str().unwrap().to_owned();
    // ...but cannot read anything, not even its own wallet.
    for path in [
        format!("/v1/wallets/{own}"),
        format!("/v1/wallets/{own}/ledger"),
        format!("/v1/transactions/{credit_id}"),
    ] {
        let response = app.get_as(&write_only, &path).await;
        let problem = assert_problem(response, 403, "forbidden").await;
        assert!(
            problem["detail"].as_str().unwrap().contains("wallets:read"),
            "{problem}"
        );
    }

    // A read-only key cannot write, whoever's wallet it is (403 before any lookup).
    for key in [&read_only, &ledger_only] {
        for path in [
            format!("/v1/wallets/{wallet}/debit"),
            format!("/v1/wallets/{wallet}/credit"),
            format!("/v1/wallets/{own}/debit"),
        ] {
            let response = app.post_as(key, &path, &new_key(), &entry).await;
            assert_problem(response, 403, "forbidden").await;
        }
        let response = app
            .post_as(key, "/v1/wallets", &new_key(), &json!({"currency": "EUR"}))
            .await;
        assert_problem(response, 403, "forbidden").await;
    }
    // A ledger:read-only key does not carry wallets:read either.
    for path in [
        format!("/v1/wallets/{wallet}"),
        format!("/v1/wallets/{wallet}/ledger"),
    ] {
        let response = app.get_as(&ledger_only, &path).await;
        assert_problem(response, 403, "forbidden").await;
    }
    assert_unchanged(&app, &wallet, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_foreign_and_non_uuid_wallets_are_not_found() {
    let app = TestApp::spawn().await;
    let (_, other_key) = app.new_tenant(&Scope::ALL).await;
    let foreign: Value = app
        .post_as(
            &other_key,
            "/v1/wallets",
            &new_key(),
            &json!({"currency": "EUR"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let foreign = foreign["id"].as_str().unwrap().to_owned();
    let response = app
        .post_as(
            &other_key,
            &format!("/v1/wallets/{foreign}/credit"),
            &new_key(),
            &json!({"amount": "50.00", "currency": "EUR"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let foreign_before = app
        .get_as(&other_key, &format!("/v1/wallets/{foreign}"))
        .await;
    let foreign_before: Value = foreign_before.json().await.unwrap();

    let unknown = Uuid::now_v7().to_string();
    let mut bodies = Vec::new();
    for id in [
        unknown.as_str(),
        foreign.as_str(),
        "not-a-uuid",
        "123",
        "00000000-0000-0000-0000-00000000000g",
    ] {
        for path in [
            format!("/v1/wallets/{id}"),
            format!("/v1/wallets/{id}/ledger"),
        ] {
            let response = app.get(&path).await;
            bodies.push(assert_problem(response, 404, "wallet_not_found").await);
        }
        for kind in ["debit", "credit"] {
            let response = app
                .post(
                    &format!("/v1/wallets/{id}/{kind}"),
                    &new_key(),
                    &json!({"amount": "1.00", "currency": "EUR"}),
                )
                .await;
            bodies.push(assert_problem(response, 404, "wallet_not_found").await);
        }
    }
    // Another tenant's wallet is indistinguishable from one that does not exist.
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");

    // A decline on an unknown or foreign wallet is stored and replayed byte for byte.
    for id in [&unknown, &foreign] {
        let path = format!("/v1/wallets/{id}/debit");
        let body = json!({"amount": "1.00", "currency": "EUR"});
        let key = format!("not-found-{id}");
        let first = app.post(&path, &key, &body).await;
        assert_eq!(first.status(), StatusCode::NOT_FOUND);
        assert!(!is_replayed(&first));
        let first_bytes = first.bytes().await.unwrap();
        let replay = app.post(&path, &key, &body).await;
        assert_eq!(replay.status(), StatusCode::NOT_FOUND);
        assert!(is_replayed(&replay));
        assert_eq!(replay.bytes().await.unwrap(), first_bytes);
    }
    let foreign_after: Value = app
        .get_as(&other_key, &format!("/v1/wallets/{foreign}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(foreign_after, foreign_before);
    assert_eq!(foreign_after["balance"], "50.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_foreign_and_non_uuid_transactions_are_not_found() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    let credit: Value = app
        .post(
            &format!("/v1/wallets/{wallet}/credit"),
            &new_key(),
            &json!({"amount": "1.00", "currency": "EUR"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = credit["id"].as_str().unwrap().to_owned();
    let response = app.get(&format!("/v1/transactions/{id}")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), credit);

    let (_, other_key) = app.new_tenant(&Scope::ALL).await;
    let mut bodies = Vec::new();
    for path in [
        format!("/v1/transactions/{}", Uuid::now_v7()),
        format!("/v1/transactions/{wallet}"),
        "/v1/transactions/not-a-uuid".to_owned(),
        "/v1/transactions/42".to_owned(),
    ] {
        let response = app.get(&path).await;
        bodies.push(assert_problem(response, 404, "transaction_not_found").await);
    }
    // Another tenant cannot see it.
    let response = app
        .get_as(&other_key, &format!("/v1/transactions/{id}"))
        .await;
    bodies.push(assert_problem(response, 404, "transaction_not_found").await);
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_in_flight_gets_409_and_a_held_lock_answers_503_which_is_not_stored() {
    let app = TestApp::spawn_with(|settings| settings.lock.wait_ms_max = LOCK_WAIT_MS).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = snapshot(&app, &wallet).await;

    // Someone else holds the wallet's lock.
    let redis = redis::Client::open(base_settings().redis.urls[0].as_str()).unwrap();
    let mut redis = redis.get_multiplexed_async_connection().await.unwrap();
    let lock_key = wallet_lock_key(
        TenantId::parse(&app.tenant_id).unwrap(),
        WalletId::parse(&wallet).unwrap(),
    );
    let set: Option<String> = redis::cmd("SET")
        .arg(&lock_key)
        .arg(format!("test-holder-{}", Uuid::new_v4()))
        .arg("NX")
        .arg("PX")
        .arg(20_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(set.as_deref(), Some("OK"));

    let path = format!("/v1/wallets/{wallet}/debit");
    let body = json!({"amount": "1.00", "currency": "EUR"});
    let started = Instant::now();
    let first = {
        let (client, url, api_key, body) = (
            app.client.clone(),
            app.url(&path),
            app.api_key.clone(),
            body.clone(),
        );
        tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(api_key)
                .header("Idempotency-Key", "held")
                .json(&body)
                .send()
                .await
                .unwrap();
            (response, started.elapsed())
        })
    };

    // Wait until the first request has claimed its key (it is now waiting on the lock).
    app.wait_for_claim("held").await;

    let twin = app.post(&path, "held", &body).await;
    assert_eq!(twin.headers()["retry-after"], "1");
    assert!(!is_replayed(&twin));
    assert_problem(twin, 409, "idempotency_key_in_progress").await;

    let (first, waited) = first.await.unwrap();
    assert!(
        waited >= Duration::from_millis(LOCK_WAIT_MS - 200) && waited < Duration::from_secs(6),
        "lock wait took {waited:?}"
    );
    retry_after(&first);
    assert!(!is_replayed(&first));
    assert_problem(first, 503, "lock_timeout").await;
    assert_unchanged(&app, &wallet, &before).await;

    // The lock is free again: a 503 was not stored, so the same key executes now.
    let deleted: i64 = redis::cmd("DEL")
        .arg(&lock_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let retry = app.post(&path, "held", &body).await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert!(!is_replayed(&retry));
    let retry_bytes = retry.bytes().await.unwrap();
    let replay = app.post(&path, "held", &body).await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert!(is_replayed(&replay));
    assert_eq!(replay.bytes().await.unwrap(), retry_bytes);
    assert_eq!(app.wallet(&wallet).await["balance"], "99.00");
    app.assert_invariants(&wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_64_kib_are_refused_with_413_and_not_stored() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = snapshot(&app, &wallet).await;
    let path = format!("/v1/wallets/{wallet}/debit");
    let json = r#"{"amount":"1.00","currency":"EUR"}"#;
    let padded = |len: usize| format!("{json}{}", " ".repeat(len - json.len()));

    // One byte over the limit, and far over it.
    for len in [65_537, 1_000_000] {
        let response = post_raw(&app, &path, Some("big"), padded(len)).await;
        assert_problem(response, 413, "payload_too_large").await;
    }
    // The same over a chunked body, which announces no length.
    let (status, head) = chunked_post(&app, &path, "big", &padded(80_000)).await;
    assert_eq!(status, 413, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("application/problem+json"),
        "{head}"
    );
    assert_unchanged(&app, &wallet, &before).await;

    // Exactly 64 KiB is within the limit; the key was not stored by the 413s.
    let response = post_raw(&app, &path, Some("big"), padded(65_536)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(!is_replayed(&response));
    // A small chunked body works too.
    let (status, head) = chunked_post(&app, &path, "small-chunked", json).await;
    assert_eq!(status, 201, "{head}");
    assert_eq!(app.wallet(&wallet).await["balance"], "98.00");
}

/// A POST with `Transfer-Encoding: chunked` over a raw socket (reqwest here cannot stream a
/// body); answers the status and the response head.
async fn chunked_post(app: &TestApp, path: &str, key: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Idempotency-Key: {key}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.api_key
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(8192) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The server may answer and stop reading before the whole body is sent.
        let _ = stream.write_all(&request);
        let mut response = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    response.extend_from_slice(&buffer[..n]);
                    if response.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Err(error) if response.is_empty() => panic!("no response: {error}"),
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        (status, text)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_funds_is_declined_stored_and_replayed() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let before = snapshot(&app, &wallet).await;
    let first = app.debit(&wallet, "too-much", "10.01").await;
    assert!(!is_replayed(&first));
    let first_bytes = first.bytes().await.unwrap();
    let problem: Value = serde_json::from_slice(&first_bytes).unwrap();
    assert_eq!(problem["code"], "insufficient_funds");
    assert_eq!(problem["status"], 422);
    let replay = app.debit(&wallet, "too-much", "10.01").await;
    assert_eq!(replay.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(is_replayed(&replay));
    assert_eq!(replay.headers()["content-type"], "application/problem+json");
    assert_eq!(replay.bytes().await.unwrap(), first_bytes);
    assert_unchanged(&app, &wallet, &before).await;

    // Exactly the available amount is fine; then not one cent more.
    let response = app.debit(&wallet, &new_key(), "10.00").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = app.debit(&wallet, &new_key(), "0.01").await;
    assert_problem(response, 422, "insufficient_funds").await;

    // With an overdraft, the floor is -overdraft_limit.
    let overdraft = app
        .create_wallet_with(json!({"currency": "EUR", "overdraft_limit": "5.00"}))
        .await;
    let response = app.debit(&overdraft, &new_key(), "5.00").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = app.debit(&overdraft, &new_key(), "0.01").await;
    assert_problem(response, 422, "insufficient_funds").await;
    let state = app.wallet(&overdraft).await;
    assert_eq!(state["balance"], "-5.00");
    assert_eq!(state["available"], "0.00");
    app.assert_invariants(&wallet).await;
    app.assert_invariants(&overdraft).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn currency_mismatch_is_declined_stored_and_replayed() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = snapshot(&app, &wallet).await;
    let path = format!("/v1/wallets/{wallet}/debit");
    let usd = json!({"amount": "1.00", "currency": "USD"});
    let first = app.post(&path, "usd", &usd).await;
    assert!(!is_replayed(&first));
    let first_bytes = first.bytes().await.unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&first_bytes).unwrap()["code"],
        "currency_mismatch"
    );
    let replay = app.post(&path, "usd", &usd).await;
    assert_eq!(replay.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(is_replayed(&replay));
    assert_eq!(replay.bytes().await.unwrap(), first_bytes);
    // The stored decline is final for that key: a corrected body is another request.
    let response = app
        .post(&path, "usd", &json!({"amount": "1.00", "currency": "EUR"}))
        .await;
    assert_problem(response, 422, "idempotency_key_reused").await;

    for (kind, amount, currency) in [
        ("credit", "1.00", "USD"),
        ("debit", "5", "JPY"),
        ("credit", "1.000", "KWD"),
    ] {
        let response = app
            .post(
                &format!("/v1/wallets/{wallet}/{kind}"),
                &new_key(),
                &json!({"amount": amount, "currency": currency}),
            )
            .await;
        assert_problem(response, 422, "currency_mismatch").await;
    }
    assert_unchanged(&app, &wallet, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_wallet_declines_entries() {
    // The wallet is closed in SQL, behind the service (no route closes one), so the balance
    // cache cannot know: this test reads Postgres.
    let app = TestApp::spawn_with(|s| s.cache.enabled = false).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "50.00").await;
    app.db()
        .await
        .batch_execute(&format!(
            "UPDATE wallets SET status = 'closed' WHERE id = '{wallet}'"
        ))
        .await
        .unwrap();
    let before = snapshot(&app, &wallet).await;
    assert_eq!(before.0["status"], "closed");
    let path = format!("/v1/wallets/{wallet}/debit");
    let body = json!({"amount": "1.00", "currency": "EUR"});
    let first = app.post(&path, "closed", &body).await;
    assert!(!is_replayed(&first));
    let first_body = assert_problem(first, 422, "wallet_closed").await;
    let replay = app.post(&path, "closed", &body).await;
    assert!(is_replayed(&replay));
    assert_eq!(
        assert_problem(replay, 422, "wallet_closed").await,
        first_body
    );
    let response = app
        .post(&format!("/v1/wallets/{wallet}/credit"), &new_key(), &body)
        .await;
    assert_problem(response, 422, "wallet_closed").await;
    assert_unchanged(&app, &wallet, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_request_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    // A key first used to create a wallet, then for a debit.
    let response = app
        .post("/v1/wallets", "shared", &json!({"currency": "EUR"}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    // A key first used for a decline, then for a smaller debit.
    let response = app.debit(&wallet, "declined", "500.00").await;
    assert_problem(response, 422, "insufficient_funds").await;
    let before = snapshot(&app, &wallet).await;

    for key in ["shared", "declined"] {
        let response = app.debit(&wallet, key, "1.00").await;
        assert!(!is_replayed(&response));
        assert_problem(response, 422, "idempotency_key_reused").await;
    }
    // Member order and spacing do not make a request different; a metadata value does.
    let path = format!("/v1/wallets/{wallet}/debit");
    let response = post_raw(
        &app,
        &path,
        Some("meta"),
        r#"{"amount":"1.00","currency":"EUR","metadata":{"a":1,"b":2}}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = post_raw(
        &app,
        &path,
        Some("meta"),
        r#"{ "metadata": {"b": 2, "a": 1}, "currency": "EUR", "amount": "1.00" }"#,
    )
    .await;
    assert!(is_replayed(&response));
    let response = post_raw(
        &app,
        &path,
        Some("meta"),
        r#"{"amount":"1.00","currency":"EUR","metadata":{"a":1,"b":3}}"#,
    )
    .await;
    assert_problem(response, 422, "idempotency_key_reused").await;
    let after = snapshot(&app, &wallet).await;
    assert_eq!(after.1.len(), before.1.len() + 1);
    assert_eq!(after.0["balance"], "99.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_requests_get_429_with_retry_after_and_write_nothing() {
    let app = TestApp::spawn_with(|settings| settings.rate_limit.requests_per_second = 3).await;
    // Three requests fit in any one-second window: create, then fund (a read and a credit).
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;

    let path = format!("/v1/wallets/{wallet}");
    let mut limited = 0;
    for _ in 0..10 {
        let response = app.get(&path).await;
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after(&response);
            assert_problem(response, 429, "rate_limited").await;
            limited += 1;
        } else {
            assert_eq!(response.status(), StatusCode::OK);
        }
    }
    assert!(limited >= 1, "10 quick GETs at 3/s were never limited");
    // Operational routes are not rate limited.
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Another key has its own budget.
    let (_, other_key) = app.new_tenant(&Scope::ALL).await;
    let response = app
        .get_as(&other_key, &format!("/v1/wallets/{}", Uuid::now_v7()))
        .await;
    assert_problem(response, 404, "wallet_not_found").await;

    // A burst of debits: the limited ones write nothing and are not stored.
    let mut executed = 0;
    let mut limited_keys = Vec::new();
    for i in 0..10 {
        let key = format!("burst-{i}");
        let response = app.debit(&wallet, &key, "1.00").await;
        match response.status() {
            StatusCode::CREATED => executed += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                retry_after(&response);
                assert_problem(response, 429, "rate_limited").await;
                limited_keys.push(key);
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        !limited_keys.is_empty(),
        "10 quick debits at 3/s were never limited"
    );

    // Next window: a limited key executes afresh (retried until the window turns, each 429
    // writing nothing), then the state is checked (3 requests).
    let deadline = Instant::now() + Duration::from_secs(3);
    let response = loop {
        let response = app.debit(&wallet, &limited_keys[0], "1.00").await;
        if response.status() != StatusCode::TOO_MANY_REQUESTS {
            break response;
        }
        assert!(
            Instant::now() < deadline,
            "the rate-limit window never turned"
        );
        tokio::time::sleep(crate::helpers::POLL_INTERVAL).await;
    };
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(!is_replayed(&response));
    executed += 1;
    let state = app.wallet(&wallet).await;
    assert_eq!(
        crate::helpers::dec(&state["balance"]),
        rust_decimal::Decimal::from(100 - executed)
    );
    let entries = app.ledger(&wallet).await;
    assert_eq!(entries.len(), 1 + executed as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_answers_503_unavailable_quickly() {
    let app = TestApp::spawn_with(|settings| {
        settings.database.url = "postgres://postgres@127.0.0.1:1/none".into();
        settings.database.connect_timeout_ms = 500;
        settings.database.pool_wait_timeout_ms = 500;
    })
    .await;
    let wallet = Uuid::now_v7();
    let started = Instant::now();
    let responses = [
        app.get(&format!("/v1/wallets/{wallet}")).await,
        app.get(&format!("/v1/wallets/{wallet}/ledger")).await,
        app.get(&format!("/v1/transactions/{wallet}")).await,
        app.post("/v1/wallets", &new_key(), &json!({"currency": "EUR"}))
            .await,
        app.post(
            &format!("/v1/wallets/{wallet}/debit"),
            &new_key(),
            &json!({"amount": "1.00", "currency": "EUR"}),
        )
        .await,
    ];
    for response in responses {
        retry_after(&response);
        let problem = assert_problem(response, 503, "unavailable").await;
        assert!(
            !problem.to_string().contains("127.0.0.1:1"),
            "the cause leaks: {problem}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "5 requests took {:?}",
        started.elapsed()
    );
    // Liveness does not depend on the database.
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Guard: `JsonBody::parse`'s object check. serde's derive would read a body struct from an
/// array of its fields in order; a body that is not a JSON object is 400, and nothing happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_array_body_is_refused_not_read_as_the_fields_in_order() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    for (path, body) in [
        ("/v1/wallets".to_owned(), json!(["EUR", null, null])),
        (
            format!("/v1/wallets/{wallet}/credit"),
            json!(["10.00", "EUR", null, null, null]),
        ),
    ] {
        let response = app.post(&path, &new_key(), &body).await;
        assert_problem(response, 400, "validation_failed").await;
    }
    assert_eq!(app.wallet(&wallet).await["balance"], "0.00");
    assert!(app.ledger(&wallet).await.is_empty());
}
