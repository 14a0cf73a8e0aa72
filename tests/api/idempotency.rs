//! Layer 1: stored answers replayed byte for byte, keys bound to one request, leases.

use diesel_async::SimpleAsyncConnection;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

use crate::helpers::{TestApp, assert_problem, base_settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_returns_the_same_status_and_bytes_with_the_new_request_id() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let path = format!("/v1/wallets/{wallet}/debit");
    let body = json!({"amount": "12.50", "currency": "EUR", "metadata": {"b": 2, "a": 1}});

    let first = app
        .client
        .post(app.url(&path))
        .bearer_auth(&app.api_key)
        .header("Idempotency-Key", "k-1")
        .header("X-Request-Id", "req-first")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.bytes().await.unwrap();

    // Same request, members in another order and other spacing: the same fingerprint.
    let replay = app
        .client
        .post(app.url(&path))
        .bearer_auth(&app.api_key)
        .header("Idempotency-Key", "k-1")
        .header("X-Request-Id", "req-second")
        .header("Content-Type", "application/json")
        .body(r#"{ "metadata": {"a": 1, "b": 2}, "currency": "EUR", "amount": "12.50" }"#)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.headers()["x-request-id"], "req-second");
    assert_eq!(replay.bytes().await.unwrap(), first_body);
    assert_eq!(app.wallet(&wallet).await["balance"], "87.50");
    assert_eq!(app.ledger(&wallet).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_request_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    assert_eq!(
        app.debit(&wallet, "k", "10.00").await.status(),
        StatusCode::CREATED
    );
    assert_problem(
        app.debit(&wallet, "k", "11.00").await,
        422,
        "idempotency_key_reused",
    )
    .await;
    // Same key on another route or wallet is also another request.
    let other = app.create_wallet("EUR").await;
    assert_problem(
        app.debit(&other, "k", "10.00").await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_problem(
        app.post(
            &format!("/v1/wallets/{wallet}/credit"),
            "k",
            &json!({"amount": "10.00", "currency": "EUR"}),
        )
        .await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.wallet(&wallet).await["balance"], "90.00");
    assert_eq!(app.ledger(&other).await.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declines_are_stored_and_replayed_even_after_the_wallet_changes() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    let first = app.debit(&wallet, "poor", "10.00").await;
    let first_body = assert_problem(first, 422, "insufficient_funds").await;
    app.fund(&wallet, "100.00").await;
    let replay = app.debit(&wallet, "poor", "10.00").await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(
        assert_problem(replay, 422, "insufficient_funds").await,
        first_body
    );
    assert_eq!(app.wallet(&wallet).await["balance"], "100.00");

    // An unknown wallet is a decline too.
    let missing = format!("/v1/wallets/{}/debit", uuid::Uuid::now_v7());
    let body = json!({"amount": "1.00", "currency": "EUR"});
    assert_problem(
        app.post(&missing, "ghost", &body).await,
        404,
        "wallet_not_found",
    )
    .await;
    let replay = app.post(&missing, "ghost", &body).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_problem(replay, 404, "wallet_not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_errors_are_not_stored_so_a_corrected_retry_executes() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let path = format!("/v1/wallets/{wallet}/debit");
    assert_problem(
        app.post(
            &path,
            "fix-me",
            &json!({"amount": "1.001", "currency": "EUR"}),
        )
        .await,
        400,
        "validation_failed",
    )
    .await;
    let other_key = app
        .new_tenant(&[walletd::domain::Scope::WalletsRead])
        .await
        .1;
    assert_problem(
        app.post_as(
            &other_key,
            &path,
            "fix-me",
            &json!({"amount": "1.00", "currency": "EUR"}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    let response = app
        .post(
            &path,
            "fix-me",
            &json!({"amount": "1.00", "currency": "EUR"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().get("idempotent-replayed").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_creation_is_idempotent() {
    let app = TestApp::spawn().await;
    let body = json!({"currency": "EUR"});
    let first: Value = app
        .post("/v1/wallets", "create-1", &body)
        .await
        .json()
        .await
        .unwrap();
    let replay = app.post("/v1/wallets", "create-1", &body).await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), first);
    assert_problem(
        app.post("/v1/wallets", "create-1", &json!({"currency": "USD"}))
            .await,
        422,
        "idempotency_key_reused",
    )
    .await;
}

/// A request that crashed leaves its in-flight marker behind: twins get 409 until the marker's
/// lease lapses, then the key executes, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_lease_lapsed_is_taken_over_and_executes_once() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    // The marker as a crashed request leaves it, with a short lease left.
    let mut redis = app.redis().await;
    let _: () = redis::cmd("SET")
        .arg(crate::helpers::idempotency_redis_key(
            &app, "inflight", "crashed",
        ))
        .arg("a-crashed-request")
        .arg("PX")
        .arg(1_500)
        .query_async(&mut redis)
        .await
        .unwrap();
    let in_flight = app.debit(&wallet, "crashed", "5.00").await;
    assert_eq!(in_flight.headers()["retry-after"], "1");
    assert_problem(in_flight, 409, "idempotency_key_in_progress").await;
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let lapsed = app.debit(&wallet, "crashed", "5.00").await;
    assert_eq!(lapsed.status(), StatusCode::CREATED);
    let replay = app.debit(&wallet, "crashed", "5.00").await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(app.wallet(&wallet).await["balance"], "95.00");
    app.assert_invariants(&wallet).await;
}

/// Metadata numbers are bounded (API.md Conventions: at most 15 significant digits): a number
/// beyond what a double holds exactly is refused before anything is stored, so two requests
/// can never differ only in digits that a reader would lose; the key stays free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_beyond_float_precision_are_refused_and_the_key_stays_free() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    let url = app.url(&format!("/v1/wallets/{wallet}/credit"));
    let send = |n: &'static str| {
        app.client
            .post(url.clone())
            .bearer_auth(&app.api_key)
            .header("Idempotency-Key", "big-number")
            .header("Content-Type", "application/json")
            .body(format!(
                r#"{{"amount":"1.00","currency":"EUR","metadata":{{"n":{n}}}}}"#
            ))
            .send()
    };
    assert_problem(
        send("123456789012345678901").await.unwrap(),
        400,
        "validation_failed",
    )
    .await;
    let first = send("123456789012345").await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let text = first.text().await.unwrap();
    assert!(
        text.contains(r#""metadata":{"n":123456789012345}"#),
        "{text}"
    );
    assert_problem(
        send("123456789012346").await.unwrap(),
        422,
        "idempotency_key_reused",
    )
    .await;
    let replay = send("123456789012345").await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.text().await.unwrap(), text);
}

/// The replay cache's keys of one tenant: `walletd:idem:<tenant>:<sha256(key)>`
/// (`src/pipeline/replay_cache.rs`), on the first Redis node.
fn replay_cache_pattern(app: &TestApp) -> String {
    format!("walletd:idem:{{{}:*", app.tenant_id)
}

fn replay_cache_key(app: &TestApp, idempotency_key: &str) -> String {
    crate::helpers::idempotency_redis_key(app, "idem", idempotency_key)
}

/// Deletes this tenant's replay-cache entries (SCAN + DEL: nothing of other tests is
/// touched) and returns the deleted keys.
async fn drop_replay_cache(app: &TestApp) -> Vec<String> {
    let mut redis = redis::Client::open(base_settings().redis.urls[0].as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut found: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(replay_cache_pattern(app))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await
            .unwrap();
        found.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    for key in &found {
        let _: i64 = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    found
}

/// Layer 1 without its Redis fast path: once the replay cache has forgotten a completed
/// debit and a completed decline, a retry is answered from Postgres, the source of truth,
/// with the same status, the same bytes and `Idempotent-Replayed: true`, and nothing executes
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_served_from_postgres_when_the_replay_cache_has_forgotten_it() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;

    let first = app.debit(&wallet, "from-postgres", "30.00").await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.bytes().await.unwrap();
    let decline = app.debit(&wallet, "declined-from-postgres", "500.00").await;
    assert_eq!(decline.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let decline_body = decline.bytes().await.unwrap();
    let before = (app.wallet(&wallet).await, app.ledger(&wallet).await);

    // Both answers were cached, and now they are not (else the replays below would prove
    // nothing about Postgres).
    let dropped = drop_replay_cache(&app).await;
    for key in ["from-postgres", "declined-from-postgres"] {
        assert!(
            dropped.contains(&replay_cache_key(&app, key)),
            "{key} was not in the replay cache: {dropped:?}"
        );
    }
    assert!(drop_replay_cache(&app).await.is_empty());

    let replay = app.debit(&wallet, "from-postgres", "30.00").await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.bytes().await.unwrap(), first_body);
    let replay = app.debit(&wallet, "declined-from-postgres", "500.00").await;
    assert_eq!(replay.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.bytes().await.unwrap(), decline_body);

    assert_eq!(
        (app.wallet(&wallet).await, app.ledger(&wallet).await),
        before
    );
    assert_eq!(before.0["balance"], "70.00");
}

/// Layer 1 claims a key on Redis alone when Redis has no answer for it. A late retry whose
/// answer only Postgres still holds (the cached copy lapsed), arriving while the wallet is busy
/// (its row held by another session, so the transaction times out on the row lock), is owed
/// the stored answer, or the key's refusal for another body: never a `lock_timeout` of the
/// moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_retry_gets_its_stored_answer_even_when_the_wallet_is_busy() {
    let app = TestApp::spawn_with(|s| s.database.lock_timeout_ms = 300).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let first = app.debit(&wallet, "late-retry", "30.00").await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_body = first.bytes().await.unwrap();

    let mut blocker = app.db().await;
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM wallets WHERE id = '{wallet}' FOR UPDATE"
        ))
        .await
        .unwrap();
    // The wallet is busy: a new key meets the row lock and is refused for now.
    assert_problem(
        app.debit(&wallet, "new-key", "1.00").await,
        503,
        "lock_timeout",
    )
    .await;

    assert!(!drop_replay_cache(&app).await.is_empty());
    let reused = app.debit(&wallet, "late-retry", "31.00").await;
    assert_problem(reused, 422, "idempotency_key_reused").await;
    drop_replay_cache(&app).await;
    let replay = app.debit(&wallet, "late-retry", "30.00").await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.bytes().await.unwrap(), first_body);

    blocker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(app.wallet(&wallet).await["balance"], "70.00");
}
