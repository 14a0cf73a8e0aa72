use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, new_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_wallet_renders_the_contract_shape() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/v1/wallets",
            &new_key(),
            &json!({"currency": "EUR", "owner_ref": "user-42", "overdraft_limit": "10.00"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let wallet: Value = response.json().await.unwrap();
    assert_eq!(wallet["currency"], "EUR");
    assert_eq!(wallet["owner_ref"], "user-42");
    assert_eq!(wallet["balance"], "0.00");
    assert_eq!(wallet["held"], "0.00");
    assert_eq!(wallet["available"], "10.00");
    assert_eq!(wallet["overdraft_limit"], "10.00");
    assert_eq!(wallet["version"], 1);
    assert_eq!(wallet["status"], "active");
    let id = wallet["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(id, id.to_lowercase());
    let created_at = wallet["created_at"].as_str().unwrap();
    assert!(
        created_at.ends_with('Z') && created_at.len() == "2026-11-23T18:04:05.123456Z".len(),
        "{created_at}"
    );
    assert_eq!(app.wallet(id).await, wallet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_then_debit_moves_the_balance_and_writes_the_ledger() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let response = app
        .post(
            &format!("/v1/wallets/{wallet}/debit"),
            "debit-1",
            &json!({"amount": "30.00", "currency": "EUR", "reference": "booking-123",
                    "description": "Booking payment", "metadata": {"seat": "12A"}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let entry: Value = response.json().await.unwrap();
    assert_eq!(entry["type"], "debit");
    assert_eq!(entry["amount"], "30.00");
    assert_eq!(entry["balance_before"], "100.00");
    assert_eq!(entry["balance_after"], "70.00");
    assert_eq!(entry["seq"], 2);
    assert_eq!(entry["reference"], "booking-123");
    assert_eq!(entry["description"], "Booking payment");
    assert_eq!(entry["metadata"], json!({"seat": "12A"}));
    assert_eq!(entry["idempotency_key"], "debit-1");
    assert_eq!(entry["wallet_id"], wallet.as_str());

    let fetched = app
        .get(&format!(
            "/v1/transactions/{}",
            entry["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(fetched.json::<Value>().await.unwrap(), entry);

    let state = app.wallet(&wallet).await;
    assert_eq!(state["balance"], "70.00");
    assert_eq!(state["version"], 3);
    assert_eq!(app.assert_invariants(&wallet).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amounts_render_with_each_currency_minor_units() {
    let app = TestApp::spawn().await;
    for (currency, amount, rendered_zero) in [
        ("JPY", "5", "0"),
        ("KWD", "1.000", "0.000"),
        ("EUR", "0.01", "0.00"),
    ] {
        let wallet = app.create_wallet(currency).await;
        assert_eq!(app.wallet(&wallet).await["balance"], rendered_zero);
        let response = app
            .post(
                &format!("/v1/wallets/{wallet}/credit"),
                &new_key(),
                &json!({"amount": amount, "currency": currency}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let entry: Value = response.json().await.unwrap();
        assert_eq!(entry["amount"], amount);
        assert_eq!(entry["balance_after"], amount);
    }
    let jpy = app.create_wallet("JPY").await;
    let response = app
        .post(
            &format!("/v1/wallets/{jpy}/credit"),
            &new_key(),
            &json!({"amount": "5.0", "currency": "JPY"}),
        )
        .await;
    assert_problem(response, 400, "validation_failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overdraft_limit_lets_the_balance_go_negative_down_to_the_floor() {
    let app = TestApp::spawn().await;
    let wallet = app
        .create_wallet_with(json!({"currency": "EUR", "overdraft_limit": "50.00"}))
        .await;
    app.fund(&wallet, "10.00").await;
    let response = app.debit(&wallet, &new_key(), "60.00").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let state = app.wallet(&wallet).await;
    assert_eq!(state["balance"], "-50.00");
    assert_eq!(state["available"], "0.00");
    assert_problem(
        app.debit(&wallet, &new_key(), "0.01").await,
        422,
        "insufficient_funds",
    )
    .await;
    app.assert_invariants(&wallet).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_pages_with_a_keyset_cursor() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    for _ in 0..5 {
        app.fund(&wallet, "1.00").await;
    }
    let first: Value = app
        .get(&format!("/v1/wallets/{wallet}/ledger?limit=2"))
        .await
        .json()
        .await
        .unwrap();
    let seqs = |page: &Value| {
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs(&first), vec![1, 2]);
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .get(&format!(
            "/v1/wallets/{wallet}/ledger?limit=2&after={cursor}"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seqs(&second), vec![3, 4]);
    let cursor = second["next_cursor"].as_str().unwrap();
    let last: Value = app
        .get(&format!(
            "/v1/wallets/{wallet}/ledger?limit=2&after={cursor}"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seqs(&last), vec![5]);
    assert!(last["next_cursor"].is_null());
    let all: Value = app
        .get(&format!("/v1/wallets/{wallet}/ledger"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seqs(&all), vec![1, 2, 3, 4, 5]);
    assert!(all["next_cursor"].is_null());
}

/// A credit that would take the balance past 10^18 is 400 `validation_failed`, not stored, and
/// changes nothing; the wallet keeps working. (The balance is built up with 1000 maximal
/// credits written in SQL, each chained and keyed as the triggers demand.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credit_past_the_maximum_balance_is_refused() {
    use diesel_async::SimpleAsyncConnection;
    // The balance is written in SQL behind the service, which its balance cache cannot see.
    let app = TestApp::spawn_with(|s| s.cache.enabled = false).await;
    let wallet = app.create_wallet("EUR").await;
    app.db()
        .await
        .batch_execute(&format!(
            "DO $$
             DECLARE w uuid := '{wallet}'; t uuid; running numeric := 0; previous text := repeat('0', 64);
             BEGIN
               SELECT tenant_id INTO t FROM wallets WHERE id = w;
               FOR i IN 1..1000 LOOP
                 INSERT INTO idempotency_keys (result_id, tenant_id, idempotency_key, fingerprint, wallet_id,
                                               state, response_status, response_body, created_at, completed_at)
                 VALUES (walletd_result_id(t, 'bulk-' || i), t, 'bulk-' || i, sha256(('bulk-' || i)::bytea), w,
                         'completed', 201, '\\x7b7d', now(), now());
                 UPDATE wallets SET balance = balance + 1000000000000000, last_seq = last_seq + 1,
                                    version = version + 1,
                                    last_hash = encode(sha256(('bulk-' || i)::bytea), 'hex')
                  WHERE id = w;
                 INSERT INTO outbox_events (wallet_id, wallet_version, event_id, tenant_id, event_type,
                                            payload, occurred_at)
                 SELECT w, version, gen_random_uuid(), t, 'wallet.credited', '{{}}', now()
                   FROM wallets WHERE id = w;
                 INSERT INTO ledger_entries (wallet_id, seq, id, tenant_id, entry_type, amount, currency,
                                             balance_before, balance_after, idempotency_key,
                                             prev_hash, hash, created_at)
                 VALUES (w, i, gen_random_uuid(), t, 'credit', 1000000000000000, 'EUR',
                         running, running + 1000000000000000, 'bulk-' || i,
                         previous, encode(sha256(('bulk-' || i)::bytea), 'hex'), now());
                 previous := encode(sha256(('bulk-' || i)::bytea), 'hex');
                 running := running + 1000000000000000;
               END LOOP;
             END $$;"
        ))
        .await
        .unwrap();
    assert_eq!(
        app.wallet(&wallet).await["balance"],
        "1000000000000000000.00"
    );

    let path = format!("/v1/wallets/{wallet}/credit");
    let body = json!({"amount": "0.01", "currency": "EUR"});
    assert_problem(
        app.post(&path, "too-rich", &body).await,
        400,
        "validation_failed",
    )
    .await;
    assert_eq!(
        app.wallet(&wallet).await["balance"],
        "1000000000000000000.00"
    );
    // Not stored: after a debit makes room, the same key executes.
    assert_eq!(
        app.debit(&wallet, &new_key(), "1.00").await.status(),
        StatusCode::CREATED
    );
    let response = app.post(&path, "too-rich", &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().get("idempotent-replayed").is_none());
    assert_eq!(
        app.wallet(&wallet).await["balance"],
        "999999999999999999.01"
    );
    assert_eq!(app.assert_invariants(&wallet).await.len(), 1002);
}

/// Metadata numbers at the edges of API.md's bounds survive the round trip through `jsonb`
/// exactly; beyond them (the largest double, the smallest subnormal, a 30-digit integer)
/// they are refused with 400 before anything is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_metadata_numbers_round_trip_or_are_refused() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    let credit = async |metadata: &str| {
        app.client
            .post(app.url(&format!("/v1/wallets/{wallet}/credit")))
            .bearer_auth(&app.api_key)
            .header("Idempotency-Key", new_key())
            .header("Content-Type", "application/json")
            .body(format!(
                r#"{{"amount":"5.00","currency":"EUR","metadata":{metadata}}}"#
            ))
            .send()
            .await
            .unwrap()
    };
    for beyond in [
        r#"{"max":1.7976931348623157e308}"#,
        r#"{"tiny":5e-324}"#,
        r#"{"big":123456789012345678901234567890}"#,
    ] {
        assert_problem(credit(beyond).await, 400, "validation_failed").await;
    }
    let response = credit(
        r#"{"max":999999999999999,"min":-999999999999999,"tiny":0.000001,"fine":123456.789012345}"#,
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let entry: Value = response.json().await.unwrap();
    assert_eq!(
        entry["metadata"]["max"].as_f64(),
        Some(999_999_999_999_999.0)
    );
    assert_eq!(
        entry["metadata"]["min"].as_f64(),
        Some(-999_999_999_999_999.0)
    );
    assert_eq!(entry["metadata"]["tiny"].to_string(), "0.000001");
    assert_eq!(entry["metadata"]["fine"].to_string(), "123456.789012345");
    let fetched: Value = app
        .get(&format!(
            "/v1/transactions/{}",
            entry["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, entry);
    assert_eq!(
        app.ledger(&wallet).await.len(),
        1,
        "refused bodies stored nothing"
    );
}
