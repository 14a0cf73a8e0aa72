//! Coalescing a hot wallet's debits (issue 9): the debits queued behind a busy wallet commit
//! together in one transaction, each decided in order with its own entry, answer and event; a
//! decline touches no other; a batch that cannot commit is run again one request at a time.
//!
//! Each test makes the interleaving certain: a first debit's COMMIT is slowed by a deferred
//! trigger, and the others are sent and seen claimed (queued behind the wallet) before it ends.

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, count_answers, new_key};

/// Sends a debit of 1.00 with reference `first` whose COMMIT takes 1 s, waits until it holds
/// the wallet, then sends one debit per body in `bodies` and waits until each has claimed its
/// key (so each is queued behind the first). Returns the first's answer and the others' answers
/// (status, body, key), in order.
async fn queue_behind_a_slow_debit(
    app: &TestApp,
    wallet: &str,
    bodies: Vec<Value>,
) -> ((StatusCode, Value), Vec<(StatusCode, Value, String)>) {
    app.slow_commits(1.0, Some("first")).await;
    let path = format!("/v1/wallets/{wallet}/debit");
    let first_key = new_key();
    let first = async {
        let response = app
            .post(
                &path,
                &first_key,
                &json!({"amount": "1.00", "currency": "EUR", "reference": "first"}),
            )
            .await;
        (response.status(), response.json::<Value>().await.unwrap())
    };
    let keys: Vec<String> = bodies.iter().map(|_| new_key()).collect();
    let rest = async {
        app.wait_for_claim(&first_key).await;
        let sent = join_all(bodies.iter().zip(&keys).map(|(body, key)| async {
            let response = app.post(&path, key, body).await;
            (
                response.status(),
                response.json::<Value>().await.unwrap(),
                key.clone(),
            )
        }));
        let claimed = async {
            for key in &keys {
                app.wait_for_claim(key).await;
            }
        };
        let (answers, ()) = tokio::join!(sent, claimed);
        answers
    };
    tokio::join!(first, rest)
}

fn debit_body(amount: &str) -> Value {
    json!({"amount": amount, "currency": "EUR"})
}

/// The batch-size histogram: (batches, requests in them) so far.
async fn batches(app: &TestApp) -> (f64, f64) {
    (
        app.metric("walletd_pipeline_batch_size_count", "").await,
        app.metric("walletd_pipeline_batch_size_sum", "").await,
    )
}

/// The batches since `before`: (batches, requests in them).
async fn batches_since(app: &TestApp, before: (f64, f64)) -> (f64, f64) {
    let now = batches(app).await;
    (now.0 - before.0, now.1 - before.1)
}

/// Guard: the batch's in-order decisions — twelve debits of 1.00 queued behind a busy wallet
/// holding 10.00 commit as one batch: the first nine that fit succeed with consecutive seqs and
/// balances, the other three are stored `insufficient_funds` declines, each answer replays byte
/// for byte, and every entry has its own event in version order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_debits_commit_as_one_batch_each_decided_in_order() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let before = batches(&app).await;
    let (first, rest) =
        queue_behind_a_slow_debit(&app, &wallet, (0..12).map(|_| debit_body("1.00")).collect())
            .await;
    assert_eq!(first.0, StatusCode::CREATED);
    let answers: Vec<(StatusCode, Value)> = rest.iter().map(|(s, b, _)| (*s, b.clone())).collect();
    assert_eq!(count_answers(&answers, StatusCode::CREATED, None), 9);
    assert_eq!(
        count_answers(
            &answers,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("insufficient_funds")
        ),
        3
    );
    assert_eq!(
        batches_since(&app, before).await,
        (2.0, 13.0),
        "the first alone, then the twelve queued behind it together"
    );

    let mut seqs: Vec<i64> = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .map(|(_, entry)| entry["seq"].as_i64().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (3..=11).collect::<Vec<_>>(), "one seq each, no gaps");
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(entries.len(), 11);
    assert_eq!(app.wallet(&wallet).await["balance"], "0.00");

    for (status, body, key) in &rest {
        let again = app
            .post(
                &format!("/v1/wallets/{wallet}/debit"),
                key,
                &debit_body("1.00"),
            )
            .await;
        assert_eq!(again.status(), *status);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        assert_eq!(&again.json::<Value>().await.unwrap(), body);
    }

    // created, funded, and one event per entry, in version order.
    let events = app.wait_for_events(12).await;
    let versions: Vec<i64> = events
        .iter()
        .map(|(_, e)| e["data"]["wallet"]["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=12).collect::<Vec<_>>());
    for (_, event) in &events[3..] {
        assert_eq!(event["type"], "wallet.debited");
        let entry = entries
            .iter()
            .find(|e| e["id"] == event["data"]["id"])
            .expect("the event's entry is in the ledger");
        assert_eq!(
            event["data"]["wallet"]["balance"], entry["balance_after"],
            "each event's snapshot is the wallet right after its own entry"
        );
    }
}

/// Guard: `pipeline.batch_max` — with a bound of 4, twelve queued debits go in at least three
/// batches (each at most the bound plus its leader's own job), not one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_never_holds_more_than_batch_max() {
    let app = TestApp::spawn_with(|s| s.pipeline.batch_max = 4).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let bucket = |le: &'static str| {
        let app = &app;
        async move {
            app.metric(
                "walletd_pipeline_batch_size_bucket",
                &format!("le=\"{le}\""),
            )
            .await
        }
    };
    let before = (batches(&app).await, bucket("8").await);
    let (first, rest) =
        queue_behind_a_slow_debit(&app, &wallet, (0..12).map(|_| debit_body("1.00")).collect())
            .await;
    assert_eq!(first.0, StatusCode::CREATED);
    assert!(rest.iter().all(|(s, _, _)| *s == StatusCode::CREATED));
    let (count, sum) = batches_since(&app, before.0).await;
    assert_eq!(sum, 13.0);
    // At most 4 + the leader's own job per batch: the first alone, then the twelve in at
    // least three batches; and coalesced, not one by one.
    assert!(
        (4.0..13.0).contains(&count),
        "{count} batches for 13 debits with batch_max 4"
    );
    assert_eq!(bucket("8").await - before.1, count, "no batch above 8");
    app.assert_invariants(&wallet).await;
    assert_eq!(app.wallet(&wallet).await["balance"], "87.00");
}

/// Guard: a failed batch is run again one request at a time — one queued debit's row is
/// refused at COMMIT, so the batch cannot commit; run alone, the other five commit and the
/// refused one fails alone with nothing charged and its key freed: once the refusal is gone,
/// its retry executes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_commit_fails_only_the_request_that_caused_it() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    app.refuse_commits("ledger_entries", "NEW.reference = 'doomed'")
        .await;
    let mut bodies: Vec<Value> = (0..5).map(|_| debit_body("2.00")).collect();
    bodies.insert(
        2,
        json!({"amount": "2.00", "currency": "EUR", "reference": "doomed"}),
    );
    let before = batches(&app).await;
    let (first, rest) = queue_behind_a_slow_debit(&app, &wallet, bodies.clone()).await;
    assert_eq!(first.0, StatusCode::CREATED);
    for (i, (status, body, _)) in rest.iter().enumerate() {
        if i == 2 {
            assert!(status.is_server_error(), "{status} {body}");
        } else {
            assert_eq!(*status, StatusCode::CREATED, "{body}");
        }
    }
    assert_eq!(batches_since(&app, before).await, (2.0, 7.0));
    assert_eq!(app.wallet(&wallet).await["balance"], "89.00");

    app.stop_refusing_commits("ledger_entries").await;
    let (_, _, doomed_key) = &rest[2];
    let path = format!("/v1/wallets/{wallet}/debit");
    let retried = app.post_until_decided(&path, doomed_key, &bodies[2]).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.text);
    assert!(!retried.replayed, "the failure stored no answer");
    for ((_, _, key), body) in rest.iter().zip(&bodies) {
        let replay = app.post(&path, key, body).await;
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
    }
    app.assert_invariants(&wallet).await;
    assert_eq!(app.wallet(&wallet).await["balance"], "87.00");
}
