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
