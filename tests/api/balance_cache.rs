//! The balance read cache (API.md Part 3): `GET /v1/wallets/{id}` from Redis, never older
//! than a commit that finished before the read began; Postgres when Redis is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};
use walletd::balance_cache::{BalanceCache, Lookup};
use walletd::db::models::WalletRow;
use walletd::db::schema::wallets;
use walletd::domain::{TenantId, WalletId};
use walletd::metrics::Metrics;
use walletd::redis_nodes::RedisNodes;
use walletd::representation::Wallet;

use crate::helpers::{POLL_INTERVAL, PrivateRedis, TestApp, new_key, poll_until};

const HITS: (&str, &str) = ("walletd_balance_cache_reads_total", "result=\"hit\"");

/// The cache as the service builds it, for a test that plays a reader step by step.
fn cache_of(app: &TestApp) -> BalanceCache {
    BalanceCache::new(
        RedisNodes::connect(&app.settings.redis).unwrap(),
        app.settings.cache.clone(),
        Arc::new(Metrics::new().unwrap()),
    )
}

fn entry_key(app: &TestApp, wallet: &str) -> String {
    format!(
        "{}:{}:{wallet}",
        app.settings.cache.namespace, app.tenant_id
    )
}

/// The wallet's entry in Redis: (version, state).
async fn entry(app: &TestApp, wallet: &str) -> (Option<String>, Option<String>) {
    let mut redis = app.redis().await;
    redis::cmd("HMGET")
        .arg(entry_key(app, wallet))
        .arg("v")
        .arg("s")
        .query_async(&mut redis)
        .await
        .unwrap()
}

async fn row(app: &TestApp, wallet: &str) -> WalletRow {
    wallets::table
        .find(uuid::Uuid::parse_str(wallet).unwrap())
        .select(WalletRow::as_select())
        .first(&mut app.db().await)
        .await
        .unwrap()
}

fn ids(app: &TestApp, wallet: &str) -> (TenantId, WalletId) {
    (
        TenantId::parse(&app.tenant_id).unwrap(),
        WalletId::parse(wallet).unwrap(),
    )
}

/// Guard: the version compare-and-set. A reader misses, reads the old row, and writes it to
/// the cache only after a debit committed and stored the newer wallet: the late write is
/// refused, and the next read (from the cache) shows the debit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_cannot_put_an_old_balance_back() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let cache = cache_of(&app);
    let (tenant, id) = ids(&app, &wallet);

    // The reader misses (the entry was evicted) and reads the row: version 2, 100.00.
    let mut redis = app.redis().await;
    let _: () = redis::cmd("DEL")
        .arg(entry_key(&app, &wallet))
        .query_async(&mut redis)
        .await
        .unwrap();
    let Lookup::Miss(seen) = cache.lookup(tenant, id).await else {
        panic!("expected a miss");
    };
    let old = row(&app, &wallet).await;
    assert_eq!(old.version, 2);
    let old_body = serde_json::to_vec(&Wallet::from_row(&old).unwrap()).unwrap();

    // A debit commits and stores version 3; then the reader writes what it read.
    assert_eq!(
        app.debit(&wallet, &new_key(), "30.00").await.status(),
        StatusCode::CREATED
    );
    cache.offer(tenant, id, &seen, old.version, &old_body).await;

    assert_eq!(
        entry(&app, &wallet).await,
        (Some("3".into()), Some("r".into()))
    );
    let hits = app.metric(HITS.0, HITS.1).await;
    let shown = app.wallet(&wallet).await;
    assert_eq!(
        (shown["balance"].clone(), shown["version"].clone()),
        (json!("70.00"), json!(3))
    );
    assert_eq!(
        app.metric(HITS.0, HITS.1).await,
        hits + 1.0,
        "served from the cache"
    );
}

/// Guard: the pending mark before COMMIT. While a debit is committing (a deferred trigger of
/// this test's database makes its COMMIT take a second), its wallet's entry is already marked
/// pending with the version being committed, so no reader is served the older cached balance
/// once the commit finishes; reads meanwhile go to Postgres. After the commit the entry holds
/// the new wallet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_marks_its_entry_pending_before_it_commits() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    app.wallet(&wallet).await;
    assert_eq!(
        entry(&app, &wallet).await,
        (Some("2".into()), Some("r".into()))
    );
    app.slow_commits(1.0, Some("slow-commit")).await;
    let cache = cache_of(&app);
    let (tenant, id) = ids(&app, &wallet);

    let (path, key) = (format!("/v1/wallets/{wallet}/debit"), new_key());
    let body = json!({"amount": "30.00", "currency": "EUR", "reference": "slow-commit"});
    let debit = app.post(&path, &key, &body);
    let observe = async {
        poll_until(
            "the entry is marked pending",
            Duration::from_secs(5),
            || async { entry(&app, &wallet).await == (Some("3".into()), Some("p".into())) },
        )
        .await;
        // Marked, and not yet committed: Postgres still has version 2.
        assert_eq!(row(&app, &wallet).await.version, 2);
        assert!(matches!(cache.lookup(tenant, id).await, Lookup::Miss(_)));
        let during = app.wallet(&wallet).await;
        assert!(during["version"] == 2 || during["version"] == 3);
    };
    let started = Instant::now();
    let (response, ()) = tokio::join!(debit, observe);
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(
        entry(&app, &wallet).await,
        (Some("3".into()), Some("r".into()))
    );
    assert_eq!(app.wallet(&wallet).await["balance"], "70.00");
}

/// Read-your-writes across replicas: each debit through one replica is seen by the next read
/// through the other, while readers hammer the same wallet (misses and fills racing the
/// writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_write_on_another_replica_sees_the_write() {
    const ROUNDS: usize = 40;
    // The hammer reads as fast as the cache answers, well past the per-key rate limit (a 429
    // is not what this test is about), so the limit is off on both replicas.
    let unlimited = |s: &mut walletd::config::Settings| s.rate_limit.requests_per_second = 0;
    let app = TestApp::spawn_with(unlimited).await;
    let replica = app.spawn_replica(unlimited).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "1000.00").await;
    let done = std::sync::atomic::AtomicBool::new(false);
    let hammer = futures_util::future::join_all((0..4).map(|_| async {
        while !std::sync::atomic::AtomicBool::load(&done, std::sync::atomic::Ordering::Relaxed) {
            replica.wallet(&wallet).await;
        }
    }));
    let writes = async {
        for i in 0..ROUNDS {
            let (writer, reader) = if i % 2 == 0 {
                (&app, &replica)
            } else {
                (&replica, &app)
            };
            let entry: Value = writer
                .debit(&wallet, &new_key(), "1.00")
                .await
                .json()
                .await
                .unwrap();
            let shown = reader.wallet(&wallet).await;
            assert_eq!(shown["balance"], entry["balance_after"], "round {i}");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    tokio::join!(hammer, writes);
    let hits = replica.metric(HITS.0, HITS.1).await + app.metric(HITS.0, HITS.1).await;
    println!("cache hits during the run: {hits}");
    assert!(hits > 0.0);
}

/// With Redis down, reads go to Postgres (and writes go on under the row lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_reads_go_to_postgres() {
    let mut node = PrivateRedis::start().await;
    let url = node.url();
    let app = TestApp::spawn_with(move |s| s.redis.urls = vec![url]).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let cached = app.wallet(&wallet).await;
    assert!(app.metric(HITS.0, HITS.1).await >= 1.0);

    node.kill().await;
    assert_eq!(app.wallet(&wallet).await, cached);
    assert_eq!(
        app.debit(&wallet, &new_key(), "30.00").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(app.wallet(&wallet).await["balance"], "70.00");
    // The first read found Redis failing; the debit could neither mark nor update the entry,
    // so the reads after it do not even try the cache until the epoch is bumped.
    let reads = |result: &'static str| {
        let app = &app;
        async move {
            app.metric(
                "walletd_balance_cache_reads_total",
                &format!("result=\"{result}\""),
            )
            .await
        }
    };
    assert!(reads("error").await >= 1.0);
    assert!(reads("bypass").await >= 1.0);
}

/// Guard: the epoch. A debit commits while the cache node does not answer (paused), so it
/// can neither mark nor update the wallet's entry, which still holds the old balance when the
/// node answers again. The service stops trusting the cache until it has bumped the epoch, so
/// the old entry is never served; afterwards the cache is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_could_not_reach_the_cache_never_lets_it_serve_the_old_balance() {
    let node = PrivateRedis::start().await;
    let url = node.url();
    let app = TestApp::spawn_with(move |s| s.redis.urls = vec![url]).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    app.wallet(&wallet).await;
    assert_eq!(
        entry(&app, &wallet).await,
        (Some("2".into()), Some("r".into()))
    );

    let key = entry_key(&app, &wallet);
    let mut redis = node.connection().await;
    let old_entry: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();

    const PAUSE_MS: u64 = 1500;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(PAUSE_MS)
        .arg("ALL")
        .query_async(&mut redis)
        .await
        .unwrap();
    let paused = Instant::now();
    assert_eq!(
        app.debit(&wallet, &new_key(), "30.00").await.status(),
        StatusCode::CREATED
    );
    assert!(
        paused.elapsed() < Duration::from_millis(PAUSE_MS),
        "the debit ran while paused"
    );
    tokio::time::sleep(Duration::from_millis(PAUSE_MS) - paused.elapsed()).await;
    // The writes the service sent while the node was paused run when it resumes (they were
    // queued on the connection). A write lost in the network would not: put the old entry
    // back, as if these had been lost (once the queued ones ran, if they do within 1 s).
    let resumed = Instant::now();
    while entry(&app, &wallet).await.0 == Some("2".into())
        && resumed.elapsed() < Duration::from_secs(1)
    {
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let mut restore = redis::pipe();
    restore.atomic().del(&key).hset_multiple(&key, &old_entry);
    let _: () = restore.query_async(&mut redis).await.unwrap();

    // The old entry is there, but never served.
    assert_eq!(entry(&app, &wallet).await.0, Some("2".into()));
    for _ in 0..5 {
        assert_eq!(app.wallet(&wallet).await["balance"], "70.00");
    }
    poll_until("the epoch is bumped", Duration::from_secs(5), || async {
        let mut redis = node.connection().await;
        let epoch: Option<i64> = redis::cmd("GET")
            .arg(format!("{}:epoch", app.settings.cache.namespace))
            .query_async(&mut redis)
            .await
            .unwrap();
        epoch.is_some_and(|epoch| epoch >= 1)
    })
    .await;
    // Trusted again: a miss fills the entry under the new epoch, and the next read hits it.
    poll_until("the cache serves again", Duration::from_secs(5), || async {
        let hits = app.metric(HITS.0, HITS.1).await;
        let shown = app.wallet(&wallet).await;
        assert_eq!(shown["balance"], "70.00");
        app.metric(HITS.0, HITS.1).await > hits
    })
    .await;
}
