//! The guard these tests prove: the Postgres row lock (`SELECT … FOR UPDATE` on the wallet row
//! in the debit transaction, layer 3), and nothing above it.
//!
//! Inside one walletd process the local FIFO queue in front of Redlock already serialises a
//! wallet's requests, even with Redis down, so a one-process concurrency test would still pass
//! with the row lock deleted. Here two walletd processes serve the same tenant on the same
//! database, each with its own private Redis: their Redlocks never see each other, and each
//! process's local queue orders only its own requests. At most one transaction per process is
//! in flight on the wallet at a time, so what keeps the two processes' transactions apart is
//! the row lock alone.
//!
//! Timing is not left to chance: the test holds the wallet row itself until both processes
//! have a debit transaction blocked on it, then lets go, so the first transaction of each
//! process runs at the same moment. With the row lock, the second one waits in its
//! `SELECT … FOR UPDATE` and then reads the balance the first committed. Without it, both
//! read the old balance and decide on it, and the second one's write is refused (by the
//! `debug_assert!` in `write_entry` in a debug build, by the database's ledger chain trigger
//! otherwise): the client gets a 500, and these tests fail on the first 500.

use std::time::{Duration, Instant};

use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use walletd::config::Settings;

use crate::helpers::{Decided, POLL_INTERVAL, PrivateRedis, TestApp, new_key};

/// Debits raced in the double-charge test, split evenly over the two processes.
const RACERS: usize = 64;
/// Entries sent in the mixed test.
const MIXED_ENTRIES: usize = 200;
/// How long the test waits for both processes to block on the held row.
const BARRIER_WAIT_MAX: Duration = Duration::from_secs(20);

/// Two walletd processes on one database and tenant, each with its own private Redis.
struct TwoProcesses {
    first: TestApp,
    second: TestApp,
    _redis: (PrivateRedis, PrivateRedis),
}

impl TwoProcesses {
    async fn start() -> Self {
        let (a, b) = tokio::join!(PrivateRedis::start(), PrivateRedis::start());
        let first = TestApp::spawn_with(own_redis(&a)).await;
        let second = first.spawn_replica(own_redis(&b)).await;
        Self {
            first,
            second,
            _redis: (a, b),
        }
    }

    /// Request `i` goes to the first process when even, to the second when odd.
    fn process(&self, i: usize) -> &TestApp {
        if i.is_multiple_of(2) {
            &self.first
        } else {
            &self.second
        }
    }
}

/// Only `node` for Redlock (quorum 1), the replay cache and the rate limit; room for a queue
/// of contended requests.
fn own_redis(node: &PrivateRedis) -> impl FnOnce(&mut Settings) + use<> {
    let url = node.url();
    move |s| {
        s.redis.urls = vec![url];
        s.database.pool_max_size = 16;
        s.lock.wait_ms_max = 8_000;
        // Replicas on separate Redis nodes cannot share a balance cache (one replica's writes
        // would never reach the other's entries): a deployment gives them one first node.
        s.cache.enabled = false;
    }
}

/// The wallet row held by the test's own session, as a barrier.
struct HeldRow {
    holder: AsyncPgConnection,
    probe: AsyncPgConnection,
}

impl HeldRow {
    /// `FOR NO KEY UPDATE`: what a debit's `UPDATE wallets` needs, and what its
    /// `SELECT … FOR UPDATE` conflicts with, while the foreign-key checks of its inserts
    /// (`FOR KEY SHARE`) pass, so a debit blocks at its first touch of the wallet row whether
    /// or not the row lock is there.
    async fn hold(app: &TestApp, wallet: &str) -> Self {
        let mut holder = app.db().await;
        holder
            .batch_execute(&format!(
                "BEGIN; SELECT 1 FROM wallets WHERE id = '{wallet}' FOR NO KEY UPDATE"
            ))
            .await
            .unwrap();
        Self {
            holder,
            probe: app.db().await,
        }
    }

    /// Waits until `waiters` sessions of this database wait on a lock (at most one debit
    /// transaction per process is on the wallet at a time), then releases the row.
    async fn release_once_waited_on(mut self, waiters: i64) {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let deadline = Instant::now() + BARRIER_WAIT_MAX;
        loop {
            let blocked = diesel::sql_query(
                "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .get_result::<Count>(&mut self.probe)
            .await
            .unwrap()
            .n;
            if blocked >= waiters {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {blocked} of {waiters} transactions blocked on the held wallet row \
                 within {BARRIER_WAIT_MAX:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        self.holder.batch_execute("COMMIT").await.unwrap();
    }
}

/// Sends `entries` (kind, amount) at once, request `i` to process `i % 2`, while the wallet
/// row is held until both processes block on it; every shed answer is retried with its key.
/// Every decision must be a 201 or a 422 `insufficient_funds`: the first 500 (an entry decided
/// on a stale balance, refused by the database) or other answer fails the test at once.
async fn race(processes: &TwoProcesses, wallet: &str, entries: &[(&str, String)]) -> Vec<Decided> {
    let held = HeldRow::hold(&processes.first, wallet).await;
    let answers = join_all(entries.iter().enumerate().map(|(i, (kind, amount))| {
        let app = processes.process(i);
        async move {
            let answer = app
                .post_until_decided(
                    &format!("/v1/wallets/{wallet}/{kind}"),
                    &new_key(),
                    &json!({"amount": amount, "currency": "EUR"}),
                )
                .await;
            let declined = answer.status == StatusCode::UNPROCESSABLE_ENTITY
                && answer.body["code"] == "insufficient_funds";
            assert!(
                answer.status == StatusCode::CREATED || declined,
                "{kind} {amount} through process {}: unexpected answer {} {}",
                i % 2 + 1,
                answer.status,
                answer.text
            );
            answer
        }
    }));
    let (answers, ()) = tokio::join!(answers, held.release_once_waited_on(2));
    answers
}

/// The Postgres row lock alone prevents a double charge: 64 debits of 800.00 on 1000.00, 32
/// through each of two walletd processes whose Redlocks and local queues cannot see each other,
/// both processes' first debits released onto the wallet row at the same instant. After
/// retrying shed answers with their keys: exactly one 201, 63 declines 422
/// `insufficient_funds`, balance 200.00, one debit in the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_row_lock_alone_stops_a_double_charge_across_two_processes() {
    let processes = TwoProcesses::start().await;
    let wallet = processes.first.create_wallet("EUR").await;
    processes.first.fund(&wallet, "1000.00").await;
    let debits: Vec<(&str, String)> = (0..RACERS).map(|_| ("debit", "800.00".into())).collect();

    let answers = race(&processes, &wallet, &debits).await;

    let created: Vec<&Decided> = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(
        answers.iter().all(|a| !a.replayed),
        "distinct keys replay nothing"
    );
    let sheds: u32 = answers.iter().map(|a| a.sheds).sum();
    println!(
        "row lock: 1 created, {} declined, {sheds} shed answers retried",
        RACERS - 1
    );
    for app in [&processes.first, &processes.second] {
        assert_eq!(app.wallet(&wallet).await["balance"], "200.00");
    }
    let entries = processes.first.assert_invariants(&wallet).await;
    let debits: Vec<&Value> = entries.iter().filter(|e| e["type"] == "debit").collect();
    assert_eq!(debits.len(), 1, "{entries:?}");
    assert_eq!(debits[0]["id"], created[0].body["id"]);
}

/// The Postgres row lock alone keeps every ledger invariant: 200 debits and credits of varied
/// amounts on one wallet (overdraft 5.00), alternating between two walletd processes with
/// separate Redis, both first entries released onto the row at once. Every request ends in a
/// 201 or a 422 `insufficient_funds` (shed answers retried with their keys); balance = ledger
/// sum, seq gapless, each entry chained onto the previous one, never below the floor, one ledger
/// entry per 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_row_lock_alone_keeps_every_invariant_under_mixed_load_across_two_processes() {
    let processes = TwoProcesses::start().await;
    let wallet = processes
        .first
        .create_wallet_with(json!({"currency": "EUR", "overdraft_limit": "5.00"}))
        .await;
    processes.first.fund(&wallet, "20.00").await;
    let entries: Vec<(&str, String)> = (0..MIXED_ENTRIES)
        .map(|i| {
            let kind = if i % 3 == 0 { "credit" } else { "debit" };
            (kind, format!("{}.{:02}", 1 + i % 7, i % 100))
        })
        .collect();

    let answers = race(&processes, &wallet, &entries).await;

    let created = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .count();
    let sheds: u32 = answers.iter().map(|a| a.sheds).sum();
    println!(
        "row lock, mixed: {created} created, {} declined, {sheds} shed answers retried",
        MIXED_ENTRIES - created
    );
    let ledger = processes.first.assert_invariants(&wallet).await;
    assert_eq!(ledger.len(), created + 1);
    assert_eq!(
        processes.second.wallet(&wallet).await,
        processes.first.wallet(&wallet).await
    );
}
