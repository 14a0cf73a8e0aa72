//! Real parallel requests against one wallet; the ledger invariants are checked afterwards.

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, count_answers, new_key};

/// Settings for tests whose point is contention on one wallet: a generous lock wait, so that a
/// loaded CI machine queues requests instead of shedding them with 503 `lock_timeout`.
fn contended(settings: &mut walletd::config::Settings) {
    settings.database.pool_max_size = 16;
    settings.lock.wait_ms_max = 8_000;
}

/// 64 concurrent debits of 800.00 on 1000.00, distinct keys, shed answers retried with their
/// keys: exactly one 201, 63 declines. One process, so its local queue and Redlock order the
/// debits before the row lock sees them: this proves the whole pipeline, not the row lock
/// alone (that is `row_lock.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_double_charge_is_impossible() {
    let app = TestApp::spawn_with(contended).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "1000.00").await;

    let responses = app.concurrent_debits(&wallet, 64, "800.00").await;

    let created = count_answers(&responses, StatusCode::CREATED, None);
    let declined = count_answers(
        &responses,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("insufficient_funds"),
    );
    assert_eq!(created, 1, "{responses:?}");
    assert_eq!(declined, 63, "{responses:?}");
    assert_eq!(app.wallet(&wallet).await["balance"], "200.00");
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(entries.iter().filter(|e| e["type"] == "debit").count(), 1);
}

/// 50 concurrent identical debits with one key, each retried while the key is in progress
/// (409): every one ends with the same 201 body, exactly one of them executed and the others
/// are replays, and there is one ledger entry (the idempotency claim guards it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_storm_charges_once() {
    let app = TestApp::spawn_with(contended).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let key = new_key();
    let path = format!("/v1/wallets/{wallet}/debit");
    let body = json!({"amount": "10.00", "currency": "EUR"});

    let answers = join_all((0..50).map(|_| app.post_until_decided(&path, &key, &body))).await;

    for answer in &answers {
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
        assert_eq!(answer.text, answers[0].text, "201 bodies differ");
    }
    let executed = answers.iter().filter(|a| !a.replayed).count();
    assert_eq!(executed, 1, "{answers:?}");
    let sheds: u32 = answers.iter().map(|a| a.sheds).sum();
    println!("retry storm: {sheds} in-progress answers retried");
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["idempotency_key"] == key.as_str())
            .count(),
        1
    );
    assert_eq!(app.wallet(&wallet).await["balance"], "90.00");
    // After the storm, a retry gets the original answer.
    let replay = app.debit(&wallet, &key, "10.00").await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.text().await.unwrap(), answers[0].text);
}

/// 200 concurrent debits and credits on one wallet: balance = ledger sum, seq gapless,
/// chained, never below the floor. Under this much contention some requests are shed (503
/// `lock_timeout`); like a real client they retry with the same key, and every request ends
/// with exactly one decision: 201 or 422 `insufficient_funds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_keeps_every_invariant() {
    let app = TestApp::spawn_with(contended).await;
    let wallet = app
        .create_wallet_with(json!({"currency": "EUR", "overdraft_limit": "5.00"}))
        .await;
    app.fund(&wallet, "20.00").await;

    let outcomes = join_all((0..200).map(|i| {
        let (app, wallet) = (&app, &wallet);
        async move {
            let kind = if i % 3 == 0 { "credit" } else { "debit" };
            let amount = format!("{}.{:02}", 1 + i % 7, i % 100);
            app.post_until_decided(
                &format!("/v1/wallets/{wallet}/{kind}"),
                &new_key(),
                &json!({"amount": amount, "currency": "EUR"}),
            )
            .await
        }
    }))
    .await;

    for outcome in &outcomes {
        assert!(
            outcome.status == StatusCode::CREATED
                || (outcome.status == StatusCode::UNPROCESSABLE_ENTITY
                    && outcome.body["code"] == "insufficient_funds"),
            "unexpected {outcome:?}"
        );
    }
    let created = outcomes
        .iter()
        .filter(|o| o.status == StatusCode::CREATED)
        .count();
    let retried: u32 = outcomes.iter().map(|o| o.sheds).sum();
    println!(
        "mixed load: {created} created, {} declined, {retried} shed answers retried",
        200 - created
    );
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(entries.len(), created + 1);
}

/// Lock safety beyond Redlock: two replicas (each with its own in-process queue) share the
/// wallet, and with a 10 ms TTL a Redis lock usually expires while its holder is still working,
/// so the other replica can enter too. The row lock and the in-lock re-read still allow exactly
/// one of the competing debits (shed answers retried with their keys). Whether the two
/// replicas' transactions overlap here is left to timing; `row_lock.rs` forces the overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_redis_lock_cannot_double_charge() {
    let short_lock = |s: &mut walletd::config::Settings| {
        s.database.pool_max_size = 12;
        s.lock.ttl_ms = 10;
    };
    let first = TestApp::spawn_with(short_lock).await;
    let second = first.spawn_replica(short_lock).await;
    let wallet = first.create_wallet("EUR").await;
    first.fund(&wallet, "1000.00").await;
    let path = format!("/v1/wallets/{wallet}/debit");
    let body = json!({"amount": "800.00", "currency": "EUR"});

    let answers = join_all((0..32).map(|i| {
        let replica = if i % 2 == 0 { &first } else { &second };
        let (path, body) = (&path, &body);
        async move { replica.post_until_decided(path, &new_key(), body).await }
    }))
    .await;

    for answer in &answers {
        assert!(
            answer.status == StatusCode::CREATED
                || (answer.status == StatusCode::UNPROCESSABLE_ENTITY
                    && answer.body["code"] == "insufficient_funds"),
            "unexpected {answer:?}"
        );
    }
    let created = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "{answers:?}");
    assert_eq!(first.wallet(&wallet).await["balance"], "200.00");
    first.assert_invariants(&wallet).await;
}

/// Double-clicks: two identical requests at the same instant, many times over. Each pair gets
/// one execution and the other a replay or a 409; never a 500 (the racing INSERTs of the key
/// may collide on either of its unique keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_twins_never_get_a_server_error() {
    let app = TestApp::spawn_with(contended).await;
    let wallet = app.create_wallet("EUR").await;
    let path = format!("/v1/wallets/{wallet}/credit");
    let body = json!({"amount": "1.00", "currency": "EUR"});
    let mut executed = 0;
    for _ in 0..150 {
        let key = new_key();
        let (a, b) = tokio::join!(app.post(&path, &key, &body), app.post(&path, &key, &body));
        for response in [a, b] {
            let status = response.status();
            assert!(
                status == StatusCode::CREATED || status == StatusCode::CONFLICT,
                "twin got {status}"
            );
            if status == StatusCode::CREATED
                && response.headers().get("idempotent-replayed").is_none()
            {
                executed += 1;
            }
        }
    }
    assert_eq!(executed, 150, "each pair executes exactly once");
    assert_eq!(app.wallet(&wallet).await["balance"], "150.00");
    app.assert_invariants(&wallet).await;
}
