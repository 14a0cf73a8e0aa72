//! `walletd events tail` (issue 8): the example consumer prints each event once, acks what it
//! handled, skips entries that are not events, and takes over what a dead consumer left pending.
//! Each test runs the real binary against this app's own stream.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, isolation_env, new_key};

/// Runs `walletd events tail <args>` on this app's stream, bounded to 30 s.
async fn tail(app: &TestApp, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(["events", "tail"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", &app.database_url)
        .envs(isolation_env(&app.database_url))
        .env_remove("WALLETD_ENV")
        .env_remove("WALLETD_CONFIG_DIR")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| panic!("events tail {args:?} did not finish within 30 s"))
        .unwrap();
    assert!(
        output.status.success(),
        "exit {:?}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The JSON lines tail printed.
fn printed(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A wallet with `debits` debits after its funding: 2 + `debits` events, all published.
async fn wallet_with_events(app: &TestApp, debits: usize) -> Vec<(String, Value)> {
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    for _ in 0..debits {
        assert_eq!(app.debit(&wallet, &new_key(), "1.00").await.status(), 201);
    }
    app.wait_for_events(2 + debits).await
}

async fn xadd(app: &TestApp, event: &str) -> String {
    redis::cmd("XADD")
        .arg(&app.settings.events.stream)
        .arg("*")
        .arg("event")
        .arg(event)
        .query_async(&mut app.redis().await)
        .await
        .unwrap()
}

/// How many entries of `group` are delivered and not acknowledged.
async fn pending(app: &TestApp, group: &str) -> i64 {
    // The summary form: [count, smallest id, largest id, per-consumer counts].
    let (count, _, _, _): (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg(&app.settings.events.stream)
        .arg(group)
        .query_async(&mut app.redis().await)
        .await
        .unwrap();
    count
}

/// Guard: the dedupe by `event_id` and the ack after printing — a republished copy of an event
/// and a poison entry in the middle of the stream: a group consumer prints every event exactly
/// once, in stream order, and leaves nothing pending; the next run of the group prints only what
/// came after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_consumer_prints_each_event_once_and_acks_everything() {
    let app = TestApp::spawn().await;
    let first = wallet_with_events(&app, 2).await;
    // What a relay crash between XADD and marking gives: the same event again.
    xadd(&app, &first[1].1.to_string()).await;
    // JSON (the test helper parses every entry) but no event_id: poison to tail.
    xadd(&app, r#"{"note":"not an event"}"#).await;
    let second = app.wait_for_events(6).await;
    let wallet = first[0].1["wallet_id"].as_str().unwrap().to_owned();
    assert_eq!(app.debit(&wallet, &new_key(), "1.00").await.status(), 201);
    let stream = app.wait_for_events(7).await;
    assert_eq!(stream.len(), second.len() + 1);

    let output = tail(&app, &["--from", "0", "--group", "billing", "--count", "5"]).await;
    let events = printed(&output);
    let expected: Vec<Value> = stream
        .iter()
        .enumerate()
        .filter(|(i, _)| ![4, 5].contains(i))
        .map(|(_, (_, event))| event.clone())
        .collect();
    assert_eq!(events, expected, "each event once, in stream order");
    assert_eq!(
        pending(&app, "billing").await,
        0,
        "the duplicate and poison were acked too"
    );

    // The group resumes after what it acked: only the next event is printed.
    assert_eq!(app.debit(&wallet, &new_key(), "1.00").await.status(), 201);
    let stream = app.wait_for_events(8).await;
    let output = tail(&app, &["--group", "billing", "--count", "1"]).await;
    assert_eq!(printed(&output), [stream[7].1.clone()]);
    assert_eq!(pending(&app, "billing").await, 0);
}

/// Guard: the XAUTOCLAIM of stale pending entries — a consumer that read two entries and died
/// before acking: another consumer of the group takes them over and prints them, then the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_dead_consumer_left_pending_are_taken_over() {
    let app = TestApp::spawn().await;
    let stream = wallet_with_events(&app, 3).await;
    let mut redis = app.redis().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&app.settings.events.stream)
        .arg("ledger-sync")
        .arg("0")
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("ledger-sync")
        .arg("dead")
        .arg("COUNT")
        .arg(2)
        .arg("STREAMS")
        .arg(&app.settings.events.stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(pending(&app, "ledger-sync").await, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let output = tail(
        &app,
        &[
            "--group",
            "ledger-sync",
            "--consumer",
            "live",
            "--claim-idle-ms",
            "200",
            "--count",
            "5",
        ],
    )
    .await;
    let mut events = printed(&output);
    let mut expected: Vec<Value> = stream.into_iter().map(|(_, event)| event).collect();
    let by_id = |event: &Value| event["event_id"].as_str().unwrap().to_owned();
    events.sort_by_key(by_id);
    expected.sort_by_key(by_id);
    assert_eq!(
        events, expected,
        "the two taken over and the three never read"
    );
    assert_eq!(pending(&app, "ledger-sync").await, 0);
}

/// Guard: `--from` without a group — a plain XREAD after that id, nothing acked, no group made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_group_tail_reads_after_from() {
    let app = TestApp::spawn().await;
    let stream = wallet_with_events(&app, 2).await;
    let output = tail(&app, &["--from", &stream[1].0, "--count", "2"]).await;
    assert_eq!(
        printed(&output),
        [stream[2].1.clone(), stream[3].1.clone()],
        "the two after --from"
    );
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&app.settings.events.stream)
        .query_async(&mut app.redis().await)
        .await
        .unwrap();
    assert!(groups.is_empty(), "no group was created");
}
