//! The transactional outbox (API.md Part 3): every change publishes one self-contained event,
//! only after its transaction committed, in per-wallet version order, at least once, even
//! across a crash and with two replicas relaying at once.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, free_port, isolation_env, new_key, poll_until};

/// One stream entry as XREAD returns it: its id and its fields.
type StreamEntry = (String, Vec<(String, String)>);

/// The event `data.wallet` snapshot's version, for ordering checks.
fn version(event: &Value) -> i64 {
    event["data"]["wallet"]["version"].as_i64().unwrap()
}

/// Per wallet, the versions in the order the stream delivered them (duplicates included).
fn versions_by_wallet(events: &[(String, Value)]) -> HashMap<String, Vec<i64>> {
    let mut by_wallet: HashMap<String, Vec<i64>> = HashMap::new();
    for (_, event) in events {
        by_wallet
            .entry(event["wallet_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(version(event));
    }
    by_wallet
}

/// Each event_id's payload is the same every time it appears; returns the distinct events in
/// first-delivery order.
fn distinct(events: &[(String, Value)]) -> Vec<Value> {
    let mut seen: HashMap<String, Value> = HashMap::new();
    let mut first = Vec::new();
    for (_, event) in events {
        let id = event["event_id"].as_str().unwrap().to_owned();
        match seen.get(&id) {
            Some(earlier) => assert_eq!(earlier, event, "a duplicate differs from its original"),
            None => {
                seen.insert(id, event.clone());
                first.push(event.clone());
            }
        }
    }
    first
}

/// First deliveries of each wallet's events are its versions 1, 2, 3, … in order.
fn assert_gapless_in_order(events: &[Value]) {
    let mut next: HashMap<&str, i64> = HashMap::new();
    for event in events {
        let wallet = event["wallet_id"].as_str().unwrap();
        let expected = next.entry(wallet).or_insert(1);
        assert_eq!(version(event), *expected, "wallet {wallet}: out of order");
        *expected += 1;
    }
}

/// Every kind of change, in order, one event each, carrying everything a consumer needs: the
/// full transaction or hold (equal to what the API answers) and the wallet right after it.
/// Declines and replays publish nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_publishes_one_self_contained_event_in_version_order() {
    // The writer does not relay; a relay starts only once the changes wait in
    // the outbox, so it reads a backlog of one wallet's events in one batch.
    let app = TestApp::spawn_with(|s| {
        s.holds.sweep_interval_s = 1;
        s.events.relay_enabled = false;
    })
    .await;
    let wallet = app.create_wallet("EUR").await;
    let credit = app
        .post(
            &format!("/v1/wallets/{wallet}/credit"),
            &new_key(),
            &json!({"amount": "100.00", "currency": "EUR", "metadata": {"order": [1, 2]}}),
        )
        .await;
    let credit: Value = credit.json().await.unwrap();
    let debit_key = new_key();
    let debit: Value = app
        .debit(&wallet, &debit_key, "30.00")
        .await
        .json()
        .await
        .unwrap();
    // A decline and a replay: nothing to publish.
    assert_eq!(
        app.debit(&wallet, &new_key(), "1000.00").await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        app.debit(&wallet, &debit_key, "30.00").await.headers()["idempotent-replayed"],
        "true"
    );
    let hold_body = json!({"amount": "20.00", "currency": "EUR", "reference": "booking-9"});
    let hold: Value = app
        .post(
            &format!("/v1/wallets/{wallet}/holds"),
            &new_key(),
            &hold_body,
        )
        .await
        .json()
        .await
        .unwrap();
    let hold_id = hold["id"].as_str().unwrap();
    let capture: Value = app
        .post(
            &format!("/v1/holds/{hold_id}/capture"),
            &new_key(),
            &json!({"amount": "15.00"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let second: Value = app
        .post(
            &format!("/v1/wallets/{wallet}/holds"),
            &new_key(),
            &hold_body,
        )
        .await
        .json()
        .await
        .unwrap();
    let second_id = second["id"].as_str().unwrap();
    let voided = app
        .post(
            &format!("/v1/holds/{second_id}/void"),
            &new_key(),
            &json!({}),
        )
        .await;
    assert_eq!(voided.status(), StatusCode::OK);
    let debit_id = debit["id"].as_str().unwrap();
    let reversal: Value = app
        .post(
            &format!("/v1/transactions/{debit_id}/reverse"),
            &new_key(),
            &json!({"amount": "5.00"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let expiring = app
        .post(
            &format!("/v1/wallets/{wallet}/holds"),
            &new_key(),
            &json!({"amount": "1.00", "currency": "EUR", "expires_in_seconds": 1}),
        )
        .await;
    assert_eq!(expiring.status(), StatusCode::CREATED);

    let _relay = app.spawn_replica(|_| {}).await;
    // The sweeper expires the last hold within about two seconds: ten changes in all.
    let events = app.wait_for_events(10).await;
    let events: Vec<Value> = events.into_iter().map(|(_, event)| event).collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "wallet.created",
            "wallet.credited",
            "wallet.debited",
            "hold.created",
            "hold.captured",
            "hold.created",
            "hold.voided",
            "wallet.reversed",
            "hold.created",
            "hold.expired",
        ]
    );
    assert_gapless_in_order(&events);
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");
    for event in &events {
        assert_eq!(event["wallet_id"], wallet.as_str());
        assert_eq!(event["tenant_id"], app.tenant_id.as_str());
        assert!(event["occurred_at"].as_str().unwrap().ends_with('Z'));
        let members: HashSet<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            members,
            HashSet::from([
                "event_id",
                "type",
                "tenant_id",
                "wallet_id",
                "occurred_at",
                "data"
            ])
        );
        let snapshot = event["data"]["wallet"].as_object().unwrap();
        assert_eq!(snapshot.len(), 4, "balance, held, available, version");
    }

    // `data` is what the API answered, plus the wallet right after the change.
    let without_wallet = |event: &Value| {
        let mut data = event["data"].clone();
        data.as_object_mut().unwrap().remove("wallet");
        data
    };
    assert_eq!(events[0]["data"]["id"], wallet.as_str());
    assert_eq!(events[0]["data"]["balance"], "0.00");
    assert_eq!(without_wallet(&events[1]), credit);
    assert_eq!(events[1]["data"]["wallet"]["balance"], "100.00");
    assert_eq!(without_wallet(&events[2]), debit);
    assert_eq!(
        events[2]["data"]["wallet"],
        json!({"balance": "70.00", "held": "0.00", "available": "70.00", "version": 3})
    );
    assert_eq!(without_wallet(&events[3]), hold);
    assert_eq!(events[3]["data"]["wallet"]["held"], "20.00");
    assert_eq!(events[3]["data"]["wallet"]["available"], "50.00");
    let mut captured = without_wallet(&events[4]);
    let captured_hold = captured.as_object_mut().unwrap().remove("hold").unwrap();
    assert_eq!(captured, capture);
    assert_eq!(captured_hold["status"], "captured");
    assert_eq!(captured_hold["captured_amount"], "15.00");
    assert_eq!(
        events[4]["data"]["wallet"],
        json!({"balance": "55.00", "held": "0.00", "available": "55.00", "version": 5})
    );
    assert_eq!(events[6]["data"]["status"], "voided");
    assert_eq!(without_wallet(&events[7]), reversal);
    assert_eq!(events[7]["data"]["wallet"]["balance"], "60.00");
    assert_eq!(events[9]["data"]["status"], "expired");
    assert_eq!(events[9]["data"]["wallet"]["held"], "0.00");
    // The last event's snapshot is the wallet as it is now.
    let now = app.wallet(&wallet).await;
    assert_eq!(now["version"], 10);
    assert_eq!(events[9]["data"]["wallet"]["balance"], now["balance"]);
}

/// Guard: events leave only from committed rows. A debit whose transaction rolls back at
/// COMMIT (a deferred trigger of this test's database refuses it, after the event row was
/// written) publishes nothing; the next debit's event follows the last committed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_of_a_transaction_that_rolls_back_is_never_published() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    app.refuse_commits("outbox_events", "NEW.payload LIKE '%roll-me-back%'")
        .await;
    let body = json!({"amount": "10.00", "currency": "EUR", "reference": "roll-me-back"});
    let refused = app
        .post(&format!("/v1/wallets/{wallet}/debit"), &new_key(), &body)
        .await;
    assert!(refused.status().is_server_error(), "{}", refused.status());
    assert_eq!(
        app.debit(&wallet, &new_key(), "1.00").await.status(),
        StatusCode::CREATED
    );

    app.wait_for_events(3).await;
    // Give a wrongly published event time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events: Vec<Value> = app
        .stream_events()
        .await
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e["data"]["reference"] != "roll-me-back")
    );
    assert_gapless_in_order(&events);
    let wallet_now = app.wallet(&wallet).await;
    assert_eq!(wallet_now["balance"], "99.00");
    assert_eq!(events[2]["data"]["wallet"]["balance"], "99.00");
}

/// Guard: publish after commit. A consumer that reads each event as it arrives and at once
/// asks the API for the entry it names always finds it, and the wallet at least as new as the
/// event's snapshot — on the replica that did not write it, too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_can_always_read_the_committed_entry_an_event_names() {
    const WALLETS: usize = 4;
    const DEBITS_PER_WALLET: usize = 15;
    let app = TestApp::spawn().await;
    let replica = app.spawn_replica(|_| {}).await;
    let mut wallets = Vec::new();
    for _ in 0..WALLETS {
        let wallet = app.create_wallet("EUR").await;
        app.fund(&wallet, "1000.00").await;
        wallets.push(wallet);
    }
    // Every commit from here on takes 50 ms (a deferred trigger), so an event
    // published before its COMMIT is visible to the consumer long before the commit lands.
    app.slow_commits(0.05, None).await;
    let expected = WALLETS * (2 + DEBITS_PER_WALLET);
    let start_after = app.stream_events().await.last().map(|(id, _)| id.clone());

    let consumer = {
        let stream = app.settings.events.stream.clone();
        let mut redis = app.redis().await;
        let replica = &replica;
        async move {
            let mut last = start_after.unwrap_or_else(|| "0".into());
            let mut checked = 0;
            while checked < WALLETS * DEBITS_PER_WALLET {
                let reply: Option<Vec<(String, Vec<StreamEntry>)>> = redis::cmd("XREAD")
                    .arg("BLOCK")
                    .arg(5000)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&last)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                let entries = reply.expect("events arrive while debits run").remove(0).1;
                for (id, fields) in entries {
                    last = id;
                    let event: Value = serde_json::from_str(&fields[0].1).unwrap();
                    if event["type"] != "wallet.debited" {
                        continue;
                    }
                    let entry = replica
                        .get(&format!(
                            "/v1/transactions/{}",
                            event["data"]["id"].as_str().unwrap()
                        ))
                        .await;
                    assert_eq!(
                        entry.status(),
                        StatusCode::OK,
                        "the event came before its commit"
                    );
                    let shown = replica.wallet(event["wallet_id"].as_str().unwrap()).await;
                    assert!(
                        shown["version"].as_i64().unwrap() >= version(&event),
                        "the wallet read after the event is older than the event"
                    );
                    checked += 1;
                }
            }
            checked
        }
    };
    let writers = futures_util::future::join_all(wallets.iter().enumerate().map(|(w, wallet)| {
        let app = &app;
        let replica = &replica;
        async move {
            for i in 0..DEBITS_PER_WALLET {
                let via = if (i + w) % 2 == 0 { app } else { replica };
                let response = via.debit(wallet, &new_key(), "1.00").await;
                assert_eq!(response.status(), StatusCode::CREATED);
            }
        }
    }));
    let (checked, _) = tokio::join!(consumer, writers);
    assert_eq!(checked, WALLETS * DEBITS_PER_WALLET);
    assert!(app.stream_events().await.len() >= expected);
}

/// Guards: the version order of the relay's read and the partition leases. Two replicas
/// relay at once, each from its own share of the partitions; every wallet's events reach the
/// stream once each, in version order, and both replicas published some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_relaying_at_once_publish_each_event_once_in_version_order() {
    const WALLETS: usize = 12;
    const DEBITS_PER_WALLET: usize = 20;
    let app = TestApp::spawn().await;
    let replica = app.spawn_replica(|_| {}).await;
    // Both relays have registered and split the partitions before any event is written.
    poll_until(
        "the replicas split the partitions",
        Duration::from_secs(10),
        || async {
            app.metric("walletd_outbox_relay_partitions", "").await == 8.0
                && replica.metric("walletd_outbox_relay_partitions", "").await == 8.0
        },
    )
    .await;
    let mut wallets = Vec::new();
    for _ in 0..WALLETS {
        let wallet = app.create_wallet("EUR").await;
        app.fund(&wallet, "1000.00").await;
        wallets.push(wallet);
    }
    futures_util::future::join_all(wallets.iter().enumerate().map(|(w, wallet)| {
        let (app, replica) = (&app, &replica);
        async move {
            for i in 0..DEBITS_PER_WALLET {
                let via = if (i + w) % 2 == 0 { app } else { replica };
                assert_eq!(
                    via.debit(wallet, &new_key(), "1.00").await.status(),
                    StatusCode::CREATED
                );
            }
        }
    }))
    .await;

    let expected = WALLETS * (2 + DEBITS_PER_WALLET);
    app.wait_for_events(expected).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = app.stream_events().await;
    let first = distinct(&events);
    assert_eq!(first.len(), expected);
    assert_gapless_in_order(&first);
    assert_eq!(events.len(), expected, "no event was published twice");
    for (wallet, versions) in versions_by_wallet(&events) {
        let want: Vec<i64> = (1..=i64::try_from(2 + DEBITS_PER_WALLET).unwrap()).collect();
        assert_eq!(versions, want, "wallet {wallet}");
    }
    let published = (
        app.metric("walletd_outbox_events_published_total", "")
            .await,
        replica
            .metric("walletd_outbox_events_published_total", "")
            .await,
    );
    println!("published by each replica: {published:?}");
    assert!(
        published.0 > 0.0 && published.1 > 0.0,
        "both relays published"
    );
    assert_eq!(published.0 + published.1, expected as f64);
}

/// A `walletd serve` child process of this app's database, its event stream and cache keys.
async fn serve(app: &TestApp, relay: bool) -> (tokio::process::Child, TestApp) {
    let port = free_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_walletd"))
        .arg("serve")
        .env("DATABASE_URL", &app.database_url)
        .env("WALLETD_BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .env("WALLETD__EVENTS__RELAY_ENABLED", relay.to_string())
        .env("WALLETD__RATE_LIMIT__REQUESTS_PER_SECOND", "0")
        .envs(isolation_env(&app.database_url))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let process = TestApp {
        address: format!("http://127.0.0.1:{port}"),
        database_url: app.database_url.clone(),
        tenant_id: app.tenant_id.clone(),
        api_key: app.api_key.clone(),
        client: app.client.clone(),
        settings: app.settings.clone(),
    };
    poll_until("walletd serve answers", Duration::from_secs(20), || async {
        process
            .client
            .get(process.url("/healthz"))
            .send()
            .await
            .is_ok()
    })
    .await;
    (child, process)
}

async fn kill_9(child: &mut tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    child.wait().await.unwrap();
}

/// How many committed events the database holds, and how many of them are unpublished.
async fn outbox_counts(app: &TestApp) -> (i64, i64) {
    use diesel::sql_types::BigInt;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Counts {
        #[diesel(sql_type = BigInt)]
        total: i64,
        #[diesel(sql_type = BigInt)]
        waiting: i64,
    }
    let counts: Counts = diesel::sql_query(
        "SELECT count(*) AS total, count(*) FILTER (WHERE published_at IS NULL) AS waiting \
         FROM outbox_events",
    )
    .get_result(&mut app.db().await)
    .await
    .unwrap();
    (counts.total, counts.waiting)
}

/// A crash after the commit loses no event: a process killed with -9 after committing changes
/// it never published (its relay is off, the widest possible gap between commit and XADD);
/// the next process publishes them. Then a process killed -9 in the middle of a load, relay on:
/// after a restart every committed event is on the stream, duplicates only ever the same event
/// (same `event_id`, same bytes), first deliveries in version order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_publish_loses_no_event() {
    // The in-process app only set up the database and tenant: it publishes nothing.
    let app = TestApp::spawn_with(|s| s.events.relay_enabled = false).await;
    let (mut silent, process) = serve(&app, false).await;
    let wallet = process.create_wallet("EUR").await;
    for _ in 0..10 {
        process.fund(&wallet, "1.00").await;
    }
    kill_9(&mut silent).await;
    assert_eq!(outbox_counts(&app).await, (11, 11));
    assert!(app.stream_events().await.is_empty());

    let (mut relaying, process) = serve(&app, true).await;
    let events = app.wait_for_events(11).await;
    assert_eq!(events.len(), 11);
    assert_gapless_in_order(&distinct(&events));
    poll_until("the events are marked", Duration::from_secs(10), || async {
        outbox_counts(&app).await.1 == 0
    })
    .await;

    // Killed mid-load: some requests never get an answer; whatever committed is published.
    let load = {
        let process = &process;
        let wallet = &wallet;
        futures_util::future::join_all((0..8).map(|_| async move {
            for _ in 0..25 {
                if process
                    .client
                    .get(process.url("/healthz"))
                    .send()
                    .await
                    .is_err()
                {
                    return;
                }
                let _ = process
                    .client
                    .post(process.url(&format!("/v1/wallets/{wallet}/credit")))
                    .bearer_auth(&process.api_key)
                    .header("Idempotency-Key", new_key())
                    .json(&json!({"amount": "1.00", "currency": "EUR"}))
                    .send()
                    .await;
            }
        }))
    };
    let started = Instant::now();
    let killer = async {
        poll_until(
            "some credits committed",
            Duration::from_secs(20),
            || async { outbox_counts(&app).await.0 >= 60 },
        )
        .await;
        kill_9(&mut relaying).await;
    };
    tokio::join!(load, killer);
    println!("killed after {:?}", started.elapsed());
    let (committed, _) = outbox_counts(&app).await;

    let (_restarted, _) = serve(&app, true).await;
    poll_until(
        "every committed event is published",
        Duration::from_secs(20),
        || async { outbox_counts(&app).await.1 == 0 },
    )
    .await;
    let events = app.stream_events().await;
    let first = distinct(&events);
    assert_eq!(i64::try_from(first.len()).unwrap(), committed);
    assert_gapless_in_order(&first);
    assert_eq!(
        app.wallet(&wallet).await["version"],
        json!(committed),
        "the last event is the wallet's current version"
    );
    println!(
        "{committed} events committed, {} stream entries ({} duplicates)",
        events.len(),
        events.len() - first.len()
    );
}
