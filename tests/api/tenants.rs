//! Tenant isolation: another tenant's wallets and transactions do not exist for a caller, and
//! idempotency keys are scoped to the tenant.

use reqwest::StatusCode;
use serde_json::{Value, json};
use walletd::domain::Scope;

use crate::helpers::{TestApp, assert_problem, new_key};

/// A wallet of tenant A with some history, and the id of one of its transactions.
async fn wallet_with_history(app: &TestApp) -> (String, String) {
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let response = app.debit(&wallet, &new_key(), "25.00").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let entry: Value = response.json().await.unwrap();
    (wallet, entry["id"].as_str().unwrap().to_owned())
}

/// Tenant B gets exactly what an unknown id gets, for every route, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_wallet_and_transaction_answer_404() {
    let app = TestApp::spawn().await;
    let (wallet, transaction) = wallet_with_history(&app).await;
    let before = app.wallet(&wallet).await;
    let ledger_before = app.ledger(&wallet).await;
    let (_, b) = app.new_tenant(&Scope::ALL).await;
    let unknown = uuid::Uuid::now_v7().to_string();

    for id in [wallet.as_str(), unknown.as_str()] {
        assert_problem(
            app.get_as(&b, &format!("/v1/wallets/{id}")).await,
            404,
            "wallet_not_found",
        )
        .await;
        assert_problem(
            app.get_as(&b, &format!("/v1/wallets/{id}/ledger")).await,
            404,
            "wallet_not_found",
        )
        .await;
        assert_problem(
            app.get_as(&b, &format!("/v1/wallets/{id}/ledger?limit=10"))
                .await,
            404,
            "wallet_not_found",
        )
        .await;
        for kind in ["debit", "credit"] {
            let body = json!({"amount": "10.00", "currency": "EUR"});
            let key = new_key();
            let path = format!("/v1/wallets/{id}/{kind}");
            let first = assert_problem(
                app.post_as(&b, &path, &key, &body).await,
                404,
                "wallet_not_found",
            )
            .await;
            // A business decline: stored and replayed for B, still without any of A's data.
            let replay = app.post_as(&b, &path, &key, &body).await;
            assert_eq!(replay.headers()["idempotent-replayed"], "true");
            let replayed = assert_problem(replay, 404, "wallet_not_found").await;
            assert_eq!(replayed, first);
        }
    }
    // The 404 for A's wallet says nothing more than the one for an unknown id.
    let for_a: Value = app
        .get_as(&b, &format!("/v1/wallets/{wallet}"))
        .await
        .json()
        .await
        .unwrap();
    let for_unknown: Value = app
        .get_as(&b, &format!("/v1/wallets/{unknown}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(for_a["detail"], for_unknown["detail"]);
    assert!(!for_a.to_string().contains(&wallet));

    assert_problem(
        app.get_as(&b, &format!("/v1/transactions/{transaction}"))
            .await,
        404,
        "transaction_not_found",
    )
    .await;
    assert_problem(
        app.get_as(&b, &format!("/v1/transactions/{unknown}")).await,
        404,
        "transaction_not_found",
    )
    .await;

    // A sees everything as before.
    assert_eq!(app.wallet(&wallet).await, before);
    assert_eq!(app.ledger(&wallet).await, ledger_before);
    assert_eq!(
        app.get(&format!("/v1/transactions/{transaction}"))
            .await
            .status(),
        StatusCode::OK
    );
    app.assert_invariants(&wallet).await;
}

/// The same Idempotency-Key string used by two tenants: two independent executions, neither a
/// replay of the other, each on its own wallet. Even B sending A's exact request (same key,
/// path and body) does not get A's stored answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_scoped_to_the_tenant() {
    let app = TestApp::spawn().await;
    let (_, b) = app.new_tenant(&Scope::ALL).await;
    let wallet_a = app.create_wallet("EUR").await;
    app.fund(&wallet_a, "100.00").await;

    // Wallet creation with a shared key: two wallets.
    let shared_create = new_key();
    let response = app
        .post("/v1/wallets", &shared_create, &json!({"currency": "EUR"}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created_a: Value = response.json().await.unwrap();
    let response = app
        .post_as(
            &b,
            "/v1/wallets",
            &shared_create,
            &json!({"currency": "EUR"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(!response.headers().contains_key("idempotent-replayed"));
    let created_b: Value = response.json().await.unwrap();
    assert_ne!(created_a["id"], created_b["id"]);
    let wallet_b = created_b["id"].as_str().unwrap().to_owned();
    let credit = app
        .post_as(
            &b,
            &format!("/v1/wallets/{wallet_b}/credit"),
            &new_key(),
            &json!({"amount": "50.00", "currency": "EUR"}),
        )
        .await;
    assert_eq!(credit.status(), StatusCode::CREATED);

    // A debit with one key string in both tenants: both execute, on their own wallets.
    let key = "booking-123-payment";
    let body = json!({"amount": "10.00", "currency": "EUR"});
    let response = app
        .post(&format!("/v1/wallets/{wallet_a}/debit"), key, &body)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let entry_a: Value = response.json().await.unwrap();
    let response = app
        .post_as(&b, &format!("/v1/wallets/{wallet_b}/debit"), key, &body)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(!response.headers().contains_key("idempotent-replayed"));
    let entry_b: Value = response.json().await.unwrap();
    assert_ne!(entry_a["id"], entry_b["id"]);
    assert_eq!(entry_a["wallet_id"], wallet_a.as_str());
    assert_eq!(entry_b["wallet_id"], wallet_b.as_str());
    assert_eq!(entry_b["idempotency_key"], key);
    assert_eq!(entry_b["balance_before"], "50.00");
    assert_eq!(entry_b["balance_after"], "40.00");

    // Each tenant's retry replays its own answer.
    let replay_a = app
        .post(&format!("/v1/wallets/{wallet_a}/debit"), key, &body)
        .await;
    assert_eq!(replay_a.headers()["idempotent-replayed"], "true");
    assert_eq!(replay_a.json::<Value>().await.unwrap(), entry_a);
    let replay_b = app
        .post_as(&b, &format!("/v1/wallets/{wallet_b}/debit"), key, &body)
        .await;
    assert_eq!(replay_b.headers()["idempotent-replayed"], "true");
    assert_eq!(replay_b.json::<Value>().await.unwrap(), entry_b);

    // B replaying A's exact request (A's key, A's wallet, A's body) is not A's replay.
    let a_only_key = new_key();
    let response = app
        .post(&format!("/v1/wallets/{wallet_a}/debit"), &a_only_key, &body)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let a_wallet_now = app.wallet(&wallet_a).await;
    let a_ledger_now = app.ledger(&wallet_a).await;
    let response = app
        .post_as(
            &b,
            &format!("/v1/wallets/{wallet_a}/debit"),
            &a_only_key,
            &body,
        )
        .await;
    assert!(!response.headers().contains_key("idempotent-replayed"));
    assert_problem(response, 404, "wallet_not_found").await;

    assert_eq!(app.wallet(&wallet_a).await, a_wallet_now);
    assert_eq!(app.ledger(&wallet_a).await, a_ledger_now);
    assert_eq!(a_wallet_now["balance"], "80.00");
    let ledger_a = app.assert_invariants(&wallet_a).await;
    assert_eq!(
        ledger_a
            .iter()
            .filter(|e| e["idempotency_key"] == key)
            .count(),
        1
    );
    let b_wallet: Value = app
        .get_as(&b, &format!("/v1/wallets/{wallet_b}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b_wallet["balance"], "40.00");
    // A cannot see B's wallet either.
    assert_problem(
        app.get(&format!("/v1/wallets/{wallet_b}")).await,
        404,
        "wallet_not_found",
    )
    .await;
    assert_problem(
        app.get(&format!(
            "/v1/transactions/{}",
            entry_b["id"].as_str().unwrap()
        ))
        .await,
        404,
        "transaction_not_found",
    )
    .await;
}

/// The wallet lock is scoped by tenant: while the owner's lock is held, another tenant naming
/// the same wallet id is answered 404 at once instead of queueing behind the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_never_contends_on_the_owners_wallet_lock() {
    let app = TestApp::spawn_with(|s| s.lock.wait_ms_max = 3000).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let lock = app.hold_wallet_lock(&wallet, 5000).await;

    let (_, other_key) = app.new_tenant(&walletd::domain::Scope::ALL).await;
    let started = std::time::Instant::now();
    let response = app
        .post_as(
            &other_key,
            &format!("/v1/wallets/{wallet}/debit"),
            &new_key(),
            &json!({"amount": "1.00", "currency": "EUR"}),
        )
        .await;
    assert_problem(response, 404, "wallet_not_found").await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
    lock.release().await;
}
