//! The Redlock wallet lock against three private Redis nodes that the tests start, hold and
//! kill: quorum behaviour, a dead minority, a dead majority under both
//! `lock.redis_unavailable` policies.

use std::time::{Duration, Instant};

use diesel_async::RunQueryDsl;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use walletd::config::RedisUnavailablePolicy;
use walletd::domain::{TenantId, WalletId};
use walletd::pipeline::lock::wallet_lock_key;

use crate::helpers::{PrivateRedis, TestApp, assert_problem, count_answers, new_key};

async fn three_nodes() -> Vec<PrivateRedis> {
    let nodes = join_all((0..3).map(|_| PrivateRedis::start())).await;
    let mut ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "three distinct ports");
    nodes
}

/// A walletd whose lock runs over `nodes`, with a short Redis command timeout.
async fn spawn_on(
    nodes: &[PrivateRedis],
    wait_ms_max: u64,
    policy: RedisUnavailablePolicy,
) -> TestApp {
    let urls: Vec<String> = nodes.iter().map(PrivateRedis::url).collect();
    TestApp::spawn_with(move |s| {
        s.redis.urls = urls;
        s.redis.command_timeout_ms = 100;
        s.lock.wait_ms_max = wait_ms_max;
        s.lock.redis_unavailable = policy;
        s.database.pool_max_size = 16;
    })
    .await
}

fn lock_key(app: &TestApp, wallet: &str) -> String {
    wallet_lock_key(
        TenantId::parse(&app.tenant_id).unwrap(),
        WalletId::parse(wallet).unwrap(),
    )
}

/// Batches of debits and credits so far: (batches, requests in them).
async fn batches(app: &TestApp) -> (f64, f64) {
    (
        app.metric("walletd_pipeline_batch_size_count", "").await,
        app.metric("walletd_pipeline_batch_size_sum", "").await,
    )
}

/// `walletd_lock_wait_seconds_count{outcome="…"}` from /metrics (0 when absent).
async fn lock_outcomes(app: &TestApp, outcome: &str) -> u64 {
    app.metric(
        "walletd_lock_wait_seconds_count",
        &format!("outcome=\"{outcome}\""),
    )
    .await as u64
}

/// Debits `amount` with a fresh key, retrying shed answers (409 in progress, 503
/// `lock_timeout` / `unavailable`) with the same key as a real client would (bounded);
/// returns the decision's status and body.
async fn debit_retrying(app: &TestApp, wallet: &str, amount: &str) -> (StatusCode, Value) {
    let decided = app
        .post_until_decided(
            &format!("/v1/wallets/{wallet}/debit"),
            &new_key(),
            &json!({"amount": amount, "currency": "EUR"}),
        )
        .await;
    (decided.status, decided.body)
}

/// Rows in `idempotency_keys` for one key (any tenant).
async fn stored_keys(app: &TestApp, key: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT count(*) AS n FROM idempotency_keys WHERE idempotency_key = $1")
        .bind::<diesel::sql_types::Text, _>(key)
        .get_result::<Count>(&mut app.db().await)
        .await
        .unwrap()
        .n
}

async fn readyz(app: &TestApp) -> (StatusCode, Value) {
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    (response.status(), response.json().await.unwrap())
}

/// All three nodes up: 30 concurrent debits all go through the Redlock (never the
/// database-only fallback), the ledger is consistent, and no lock key is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_up_concurrent_debits_go_through_the_redlock() {
    let nodes = three_nodes().await;
    let app = spawn_on(&nodes, 2000, RedisUnavailablePolicy::DatabaseOnly).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "300.00").await;

    let results = join_all((0..30).map(|_| debit_retrying(&app, &wallet, "10.00"))).await;
    for (status, body) in &results {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
    }
    assert_eq!(app.wallet(&wallet).await["balance"], "0.00");
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(entries.len(), 31);
    assert_problem(
        app.debit(&wallet, &new_key(), "0.01").await,
        422,
        "insufficient_funds",
    )
    .await;

    // Every debit went in a batch (coalescing), and every batch took the Redlock.
    let (batches, batched) = batches(&app).await;
    assert!(batched >= 32.0, "{batched} debits and credits in batches");
    assert!(lock_outcomes(&app, "acquired").await >= batches as u64);
    assert_eq!(lock_outcomes(&app, "database_only").await, 0);
    let key = lock_key(&app, &wallet);
    for node in &nodes {
        assert_eq!(node.get(&key).await, None, "lock left on {}", node.label());
    }
    let (status, body) = readyz(&app).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ready", "{body}");
}

/// The lock is really taken on a quorum: held by someone else on 2 of 3 nodes, a debit waits
/// `lock.wait_ms_max` and gets 503 `lock_timeout` (nothing written, key free for a retry);
/// held on only 1 of 3, the debit gets the other two and succeeds, and the foreign holder's
/// key is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_on_a_quorum_blocks_debits_and_a_minority_does_not() {
    let nodes = three_nodes().await;
    let app = spawn_on(&nodes, 500, RedisUnavailablePolicy::DatabaseOnly).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let before = app.wallet(&wallet).await;
    let key = lock_key(&app, &wallet);
    nodes[0].hold(&key, "someone-else").await;
    nodes[1].hold(&key, "someone-else").await;

    let idempotency_key = new_key();
    let started = Instant::now();
    let response = app.debit(&wallet, &idempotency_key, "10.00").await;
    let waited = started.elapsed();
    assert!(response.headers().contains_key("retry-after"));
    assert!(!response.headers().contains_key("idempotent-replayed"));
    assert_problem(response, 503, "lock_timeout").await;
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "waited {waited:?} for a 500 ms lock wait"
    );
    assert_eq!(app.wallet(&wallet).await, before);
    assert_eq!(stored_keys(&app, &idempotency_key).await, 0);
    // The holder's keys are untouched, and the debit's partial grant (node 3) was released.
    assert_eq!(nodes[0].get(&key).await.as_deref(), Some("someone-else"));
    assert_eq!(nodes[1].get(&key).await.as_deref(), Some("someone-else"));
    assert_eq!(nodes[2].get(&key).await, None);

    // Held on a minority only: the same key now executes (the 503 was not stored).
    nodes[1].del(&key).await;
    let response = app.debit(&wallet, &idempotency_key, "10.00").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(!response.headers().contains_key("idempotent-replayed"));
    assert_eq!(app.wallet(&wallet).await["balance"], "90.00");
    assert_eq!(app.assert_invariants(&wallet).await.len(), 2);
    assert_eq!(nodes[0].get(&key).await.as_deref(), Some("someone-else"));
    assert_eq!(nodes[1].get(&key).await, None, "released after the commit");
    assert_eq!(nodes[2].get(&key).await, None, "released after the commit");
    assert_eq!(lock_outcomes(&app, "database_only").await, 0);
}

/// One node of three dead: the remaining two still form a quorum, ~30 concurrent debits
/// succeed and every invariant holds; the service does not fall back to database-only, so a
/// foreign holder on one live node still blocks debits; /readyz reports the dead node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_down_debits_still_succeed_under_the_remaining_quorum() {
    let mut nodes = three_nodes().await;
    let app = spawn_on(&nodes, 1000, RedisUnavailablePolicy::DatabaseOnly).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "300.00").await;
    nodes[2].kill().await;

    let results = join_all((0..30).map(|_| debit_retrying(&app, &wallet, "10.00"))).await;
    for (status, body) in &results {
        assert_eq!(*status, StatusCode::CREATED, "{body}");
    }
    assert_eq!(app.wallet(&wallet).await["balance"], "0.00");
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(entries.len(), 31);
    assert_eq!(lock_outcomes(&app, "database_only").await, 0);

    // With one node dead, a foreign holder on one live node leaves no quorum: 503.
    app.fund(&wallet, "10.00").await;
    let key = lock_key(&app, &wallet);
    nodes[0].hold(&key, "someone-else").await;
    assert_problem(
        app.debit(&wallet, &new_key(), "10.00").await,
        503,
        "lock_timeout",
    )
    .await;
    nodes[0].del(&key).await;
    assert_eq!(
        app.debit(&wallet, &new_key(), "10.00").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(app.wallet(&wallet).await["balance"], "0.00");
    app.assert_invariants(&wallet).await;

    let (status, body) = readyz(&app).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["postgres"], "up");
    let redis = body["redis"].as_array().unwrap();
    assert_eq!(redis.len(), 3);
    for (node, expected) in nodes.iter().zip(["up", "up", "down"]) {
        assert_eq!(
            redis
                .iter()
                .find(|n| n["node"] == node.label().as_str())
                .unwrap_or_else(|| panic!("{} missing from {body}", node.label()))["status"],
            expected
        );
    }
}

/// Every node dead, default policy (database_only): 32 concurrent debits of 800.00 on
/// 1000.00 with distinct keys, shed answers retried with their keys, still charge exactly once,
/// and every one of them proceeded without a Redlock (`database_only`). Within this one process
/// the local queue still orders them; that the Postgres row lock alone keeps two processes
/// apart is proved in `row_lock.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_down_database_only_still_charges_exactly_once() {
    let mut nodes = three_nodes().await;
    let app = spawn_on(&nodes, 2000, RedisUnavailablePolicy::DatabaseOnly).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "1000.00").await;
    for node in &mut nodes {
        node.kill().await;
    }
    let redlock_grants = lock_outcomes(&app, "acquired").await;
    let (batches_before, _) = batches(&app).await;

    let responses = app.concurrent_debits(&wallet, 32, "800.00").await;
    let created = count_answers(&responses, StatusCode::CREATED, None);
    let declined = count_answers(
        &responses,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("insufficient_funds"),
    );
    assert_eq!(created, 1, "{responses:?}");
    assert_eq!(declined, 31, "{responses:?}");
    assert_eq!(app.wallet(&wallet).await["balance"], "200.00");
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(entries.iter().filter(|e| e["type"] == "debit").count(), 1);
    // One database_only grant per batch of debits (more if a request was shed after its
    // grant, and retried); never a Redlock grant.
    let (batches_after, _) = batches(&app).await;
    assert!(batches_after > batches_before);
    assert!(lock_outcomes(&app, "database_only").await >= (batches_after - batches_before) as u64);
    assert_eq!(lock_outcomes(&app, "acquired").await, redlock_grants);

    let (status, body) = readyz(&app).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["postgres"], "up");
    let redis = body["redis"].as_array().unwrap();
    assert_eq!(redis.len(), 3, "{body}");
    for node in &nodes {
        let entry = redis
            .iter()
            .find(|n| n["node"] == node.label().as_str())
            .unwrap_or_else(|| panic!("{} missing from {body}", node.label()));
        assert_eq!(entry["status"], "down", "{body}");
    }
}

/// Policy `reject`: one dead node of three is tolerated; once a quorum is unreachable a debit
/// (and a credit) answers 503 `unavailable` with Retry-After, writes nothing and stores
/// nothing, so the same key executes afresh later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_down_with_policy_reject_answers_unavailable_and_writes_nothing() {
    let mut nodes = three_nodes().await;
    let app = spawn_on(&nodes, 2000, RedisUnavailablePolicy::Reject).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;

    nodes[0].kill().await;
    let response = app.debit(&wallet, &new_key(), "10.00").await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "one dead node is fine"
    );

    nodes[1].kill().await;
    let before = app.wallet(&wallet).await;
    let ledger_before = app.ledger(&wallet).await;
    let key = new_key();
    for _ in 0..2 {
        let response = app.debit(&wallet, &key, "10.00").await;
        assert!(response.headers().contains_key("retry-after"));
        assert!(!response.headers().contains_key("idempotent-replayed"));
        assert_problem(response, 503, "unavailable").await;
    }
    nodes[2].kill().await;
    let response = app.debit(&wallet, &key, "10.00").await;
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 503, "unavailable").await;
    let credit_key = new_key();
    let response = app
        .post(
            &format!("/v1/wallets/{wallet}/credit"),
            &credit_key,
            &json!({"amount": "5.00", "currency": "EUR"}),
        )
        .await;
    assert!(response.headers().contains_key("retry-after"));
    assert_problem(response, 503, "unavailable").await;

    assert_eq!(app.wallet(&wallet).await, before);
    assert_eq!(app.ledger(&wallet).await, ledger_before);
    assert_eq!(stored_keys(&app, &key).await, 0);
    assert_eq!(stored_keys(&app, &credit_key).await, 0);
    assert_eq!(app.wallet(&wallet).await["balance"], "90.00");
    app.assert_invariants(&wallet).await;
    assert_eq!(lock_outcomes(&app, "database_only").await, 0);
    assert!(lock_outcomes(&app, "unavailable").await >= 4);

    let (status, body) = readyz(&app).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "degraded", "{body}");
}
