//! Hostile clients and the service's own edge cases (issue 6): bounded metadata, no
//! unauthenticated path to the pool, bounded queues and waits, crash-safe keys, retention.
//! Each test names the guard it proves.

use std::time::{Duration, Instant};

use chrono::Utc;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;
use walletd::config::Settings;
use walletd::domain::{IdempotencyKey, TenantId, WalletId};
use walletd::pipeline::deadline::Deadline;
use walletd::pipeline::idempotency::{self, Begin, Fingerprint, IdempotentRequest};
use walletd::pipeline::replay_cache::ReplayCache;

use crate::helpers::{
    POLL_INTERVAL, PrivateRedis, TestApp, assert_problem, base_settings, new_key,
};

fn debit_body(metadata: &str) -> String {
    format!(r#"{{"amount":"1.00","currency":"EUR","metadata":{metadata}}}"#)
}

async fn post_raw(app: &TestApp, path: &str, key: &str, body: String) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(&app.api_key)
        .header("Idempotency-Key", key)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn metrics_text(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one metric line (`name{labels} value`), 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<Count>(&mut app.db().await)
        .await
        .unwrap()
        .n
}

/// Guard: `Metadata::parse` (API.md Conventions). Out-of-bounds metadata is 400 before any
/// database or Redis work, nothing is stored, and the key stays free for a valid retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_out_of_bounds_is_refused_and_the_key_stays_free() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let path = format!("/v1/wallets/{wallet}/debit");
    let members: Vec<String> = (0..51).map(|i| format!(r#""k{i}":1"#)).collect();
    let hostile = [
        r#"{"n":1e100000}"#.to_owned(),
        r#"{"n":1e200000}"#.to_owned(),
        r#"{"n":1234567890123456}"#.to_owned(),
        r#"{"n":1e15}"#.to_owned(),
        r#"{"n":1e-7}"#.to_owned(),
        format!("{{{}}}", members.join(",")),
        r#"{"a":{"b":[{"c":[[1]]}]}}"#.to_owned(),
        format!(r#"{{"s":"{}"}}"#, "x".repeat(16_384)),
    ];
    for metadata in &hostile {
        let key = new_key();
        let response = post_raw(&app, &path, &key, debit_body(metadata)).await;
        let shown: String = metadata.chars().take(60).collect();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{shown}");
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "validation_failed", "{shown}");
        assert!(problem.to_string().len() < 1024, "the refusal stays small");
        // Nothing stored: the same key then executes a valid request.
        let retry = post_raw(&app, &path, &key, debit_body("{}")).await;
        assert_eq!(retry.status(), StatusCode::CREATED, "{shown}");
    }
    assert_eq!(
        count(&app, "SELECT count(*) AS n FROM ledger_entries").await,
        1 + hostile.len() as i64,
        "one funding credit plus one valid debit per key"
    );
}

/// Guard: `Metadata::parse` stores numbers in their RFC 8785 form, so what comes back is never
/// larger than what was sent and reads back as the same value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_within_bounds_reads_back_as_the_same_value_and_no_larger() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let sent = r#"{"price":1.50,"big":1E14,"tiny":0.000001,"zero":-0,"deep":{"a":[{"b":[true,null,"é"]}]}}"#;
    let response = post_raw(
        &app,
        &format!("/v1/wallets/{wallet}/debit"),
        &new_key(),
        debit_body(sent),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let entry: Value = response.json().await.unwrap();
    let expected: Value = serde_json::from_str(
        r#"{"price":1.5,"big":100000000000000,"tiny":0.000001,"zero":0,"deep":{"a":[{"b":[true,null,"é"]}]}}"#,
    )
    .unwrap();
    assert_eq!(entry["metadata"], expected);
    let ledger = app.ledger(&wallet).await;
    assert_eq!(
        ledger[1]["metadata"], expected,
        "the ledger shows the same value"
    );
}

/// Guard: the negative key cache. A made-up but well-formed key id costs one Postgres lookup
/// per TTL, not one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_id_is_looked_up_once_then_refused_from_memory() {
    let app = TestApp::spawn().await;
    let made_up = format!("wd_{}_{}", Uuid::now_v7().simple(), "ab".repeat(32));
    let path = format!("/v1/wallets/{}", Uuid::now_v7());
    for _ in 0..40 {
        assert_problem(app.get_as(&made_up, &path).await, 401, "unauthorized").await;
    }
    let text = metrics_text(&app).await;
    assert_eq!(
        metric(
            &text,
            r#"walletd_auth_unknown_key_cache_total{event="insert"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"walletd_auth_unknown_key_cache_total{event="hit"}"#
        ),
        39.0
    );
    assert_eq!(metric(&text, "walletd_auth_unknown_key_cache_entries"), 1.0);
}

/// Guard: `method_label`. Invented HTTP methods never become label values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_do_not_grow_metrics() {
    let app = TestApp::spawn().await;
    for i in 0..30 {
        let method = reqwest::Method::from_bytes(format!("XLROAW{i}").as_bytes()).unwrap();
        let response = app
            .client
            .request(method, app.url("/v1/wallets"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
    let text = metrics_text(&app).await;
    assert!(!text.contains("XLROAW"), "{text}");
    assert_eq!(
        metric(
            &text,
            r#"walletd_http_requests_total{method="OTHER",route="/v1/wallets",status="405"}"#
        ),
        30.0
    );
}

/// Guard: `ReadinessProbe`. `/readyz` serves a probe result at most 1 s old: a Redis node that
/// died is reported down within about a second, not on every call's own probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_served_from_a_recent_probe() {
    let redis = PrivateRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(move |s| {
        s.redis.urls = vec![url];
        s.redis.command_timeout_ms = 100;
    })
    .await;
    let readyz = async || -> Value {
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    assert_eq!(readyz().await["status"], "ready");
    // Many concurrent calls share the one probe.
    let answers = join_all((0..50).map(|_| readyz())).await;
    assert!(answers.iter().all(|a| a["status"] == "ready"));
    drop(redis);
    let stopped = Instant::now();
    loop {
        if readyz().await["status"] == "degraded" {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_millis(2500),
            "a dead node must show within the probe age"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Guard: the per-wallet queue cap, checked before the in-flight marker is written. With the
/// wallet held elsewhere, requests beyond the cap are shed at once with 503 `lock_timeout`
/// and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_wallet_queue_sheds_before_writing_anything() {
    const DEPTH_MAX: usize = 2;
    let app = TestApp::spawn_with(|s| {
        s.pipeline.wallet_queue_depth_max = DEPTH_MAX;
        s.lock.wait_ms_max = 3000;
    })
    .await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let markers_before = count(&app, "SELECT count(*) AS n FROM idempotency_keys").await;
    let held = app.hold_wallet_lock(&wallet, 2000).await;
    let started = Instant::now();
    let debits = join_all((0..6).map(|_| async {
        let response = app.debit(&wallet, &new_key(), "1.00").await;
        let status = response.status();
        let retry_after = response.headers().get("retry-after").cloned();
        let problem: Value = response.json().await.unwrap();
        (status, retry_after, problem, started.elapsed())
    }));
    // While they queue, at most DEPTH_MAX markers exist.
    let observed = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        count(&app, "SELECT count(*) AS n FROM idempotency_keys").await - markers_before
    };
    let (answers, markers) = tokio::join!(debits, observed);
    assert!(markers <= DEPTH_MAX as i64, "{markers} markers written");
    let shed: Vec<_> = answers
        .iter()
        .filter(|(_, _, _, took)| *took < Duration::from_millis(400))
        .collect();
    assert_eq!(shed.len(), 6 - DEPTH_MAX, "{answers:?}");
    for (status, retry_after, problem, _) in shed {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(problem["code"], "lock_timeout");
        assert!(retry_after.is_some());
    }
    held.release().await;
}

/// Guard: `answer_without_claiming` before a shed. A retry whose answer is stored is replayed
/// even when its wallet's queue is full (layer 1 replays at once), here with the Redis replay
/// cache forgotten so the answer comes from Postgres; a new key is still shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_wallet_queue_still_replays_stored_answers() {
    let app = TestApp::spawn_with(|s| {
        s.pipeline.wallet_queue_depth_max = 1;
        s.lock.wait_ms_max = 3000;
    })
    .await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let key = new_key();
    let first = app.debit(&wallet, &key, "1.00").await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = first.bytes().await.unwrap();
    crate::helpers::forget_replay_cache(&app, &key).await;

    let held = app.hold_wallet_lock(&wallet, 2000).await;
    let queued_key = new_key();
    let queued = app.debit(&wallet, &queued_key, "1.00");
    let while_full = async {
        // The queued request has taken the only place once its marker exists.
        app.wait_for_claim(&queued_key).await;
        let replay = app.debit(&wallet, &key, "1.00").await;
        let fresh = app.debit(&wallet, &new_key(), "1.00").await;
        (replay, fresh)
    };
    let (queued, (replay, fresh)) = tokio::join!(queued, while_full);
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.bytes().await.unwrap(), first);
    assert_problem(fresh, 503, "lock_timeout").await;
    held.release().await;
    assert_eq!(queued.status(), StatusCode::CREATED);
}

/// Guard: the request deadline bounds row-lock waits (`SET LOCAL lock_timeout` to the time
/// left), here shorter than `database.lock_timeout_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_bounds_a_row_lock_wait() {
    let app = TestApp::spawn_with(|s| {
        s.pipeline.deadline_ms = 1500;
        s.lock.wait_ms_max = 1000;
        s.database.lock_timeout_ms = 4000;
        s.database.statement_timeout_ms = 4000;
    })
    .await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let mut holder = app.db().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT * FROM wallets WHERE id = '{wallet}' FOR UPDATE"
        ))
        .await
        .unwrap();
    let started = Instant::now();
    let response = app.debit(&wallet, &new_key(), "1.00").await;
    let took = started.elapsed();
    assert_problem(response, 503, "lock_timeout").await;
    assert!(
        took < Duration::from_millis(2500),
        "bounded by the 1.5 s deadline, not the 4 s lock_timeout: {took:?}"
    );
    holder.batch_execute("ROLLBACK").await.unwrap();
}

/// Guard: `Settings::validate`. A deadline that could outlast the in-flight lease is refused at
/// start.
#[test]
fn settings_that_break_deadline_below_lease_are_refused() {
    let mut settings: Settings = base_settings();
    settings.pipeline.deadline_ms = settings.idempotency.lease_ms;
    assert!(settings.validate().is_err());
    let mut settings = base_settings();
    settings.idempotency.retention_hours = 23;
    assert!(settings.validate().is_err());
    assert!(base_settings().validate().is_ok());
}

/// Guard: `server.body_read_timeout_ms`. A client that stops sending its body gets a 408
/// problem document, and nothing is stored: the same key then executes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_a_408_problem_and_stores_nothing() {
    let app = TestApp::spawn_with(|s| s.server.body_read_timeout_ms = 300).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let key = new_key();
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/wallets/{wallet}/debit HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Idempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"amount\":",
        app.api_key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buffer = [0u8; 4096];
        loop {
            let n = stream.read(&mut buffer).await.unwrap();
            answer.extend_from_slice(&buffer[..n]);
            if n == 0 || String::from_utf8_lossy(&answer).contains("request_timeout") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server must answer a stalled body");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains(r#""code":"request_timeout""#), "{text}");
    let retry = app.debit(&wallet, &key, "1.00").await;
    assert_eq!(retry.status(), StatusCode::CREATED);
}

fn request_for(app: &TestApp, key: &str, wallet: &str, body: &Value) -> IdempotentRequest {
    let canonical = walletd::api::extract::canonical_json(body);
    IdempotentRequest {
        tenant: TenantId::parse(&app.tenant_id).unwrap(),
        key: IdempotencyKey::parse(key.as_bytes()).unwrap(),
        fingerprint: Fingerprint::of("POST", &format!("/v1/wallets/{wallet}/debit"), &canonical),
        wallet: WalletId::parse(wallet),
    }
}

async fn key_rows(app: &TestApp, key: &str) -> i64 {
    count(
        app,
        &format!("SELECT count(*) AS n FROM idempotency_keys WHERE idempotency_key = '{key}'"),
    )
    .await
}

async fn entries_with_key(app: &TestApp, key: &str) -> i64 {
    count(
        app,
        &format!("SELECT count(*) AS n FROM ledger_entries WHERE idempotency_key = '{key}'"),
    )
    .await
}

/// Guard: `Claim`'s `Drop`. A claim dropped without an answer (as on a panic or a cancelled
/// task) clears its in-flight marker at once instead of holding the key for the whole lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_dropped_without_an_answer_frees_its_key() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let body = json!({"amount": "1.00", "currency": "EUR"});
    let key = new_key();
    let pool = walletd::db::build_pool(&{
        let mut settings = base_settings().database;
        settings.url = app.database_url.clone();
        settings
    })
    .unwrap();
    let redis = walletd::redis_nodes::RedisNodes::connect(&app.settings.redis).unwrap();
    let cache = ReplayCache::new(redis, Duration::from_secs(60));
    let request = request_for(&app, &key, &wallet, &body);
    let lease = Duration::from_secs(60);
    let deadline = Deadline::after(Duration::from_secs(5));
    let Begin::Claimed(claim) = idempotency::begin(&pool, &cache, &request, lease, deadline)
        .await
        .unwrap()
    else {
        panic!("a fresh key is claimed");
    };
    assert!(crate::helpers::in_flight_marker_set(&app, &key).await);
    assert_eq!(
        key_rows(&app, &key).await,
        0,
        "nothing is written before the transaction"
    );
    assert_problem(
        app.post(&format!("/v1/wallets/{wallet}/debit"), &key, &body)
            .await,
        409,
        "idempotency_key_in_progress",
    )
    .await;
    let panicked = tokio::spawn(async move {
        let _claim = claim;
        panic!("a pipeline bug");
    })
    .await;
    assert!(panicked.is_err());
    let dropped = Instant::now();
    while crate::helpers::in_flight_marker_set(&app, &key).await {
        assert!(dropped.elapsed() < Duration::from_secs(3), "key still held");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let retry = app
        .post(&format!("/v1/wallets/{wallet}/debit"), &key, &body)
        .await;
    assert_eq!(retry.status(), StatusCode::CREATED);
}

/// Guard: the read of Postgres before a 409. A marker left behind by a request that already
/// committed (its answer not cached yet, or the cache lost) never hides the stored answer; a
/// marker with no stored answer behind it is a twin in flight: 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_answers_409_only_while_nothing_is_stored() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let path = format!("/v1/wallets/{wallet}/debit");
    let body = json!({"amount": "1.00", "currency": "EUR"});
    let mut redis = app.redis().await;
    let set_marker = |key: &str| {
        redis::cmd("SET")
            .arg(crate::helpers::idempotency_redis_key(&app, "inflight", key))
            .arg("someone-else")
            .arg("PX")
            .arg(60_000)
            .to_owned()
    };

    // Committed, then its cached copy lost and a stale marker in its place: replayed.
    let key = new_key();
    let first = app.post(&path, &key, &body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_body = first.bytes().await.unwrap();
    crate::helpers::forget_replay_cache(&app, &key).await;
    let _: () = set_marker(&key).query_async(&mut redis).await.unwrap();
    let replay = app.post(&path, &key, &body).await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.bytes().await.unwrap(), first_body);

    // A marker and nothing stored: a twin in flight.
    let twin = new_key();
    let _: () = set_marker(&twin).query_async(&mut redis).await.unwrap();
    assert_problem(
        app.post(&path, &twin, &body).await,
        409,
        "idempotency_key_in_progress",
    )
    .await;
    assert_eq!(entries_with_key(&app, &twin).await, 0);
}

/// Guard: the key table's primary key, not the Redis marker. A request whose key has its row
/// already (stored long ago, its cached copy and marker gone) runs into the row inside its
/// transaction, rolls back everything it wrote, and answers what the row stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_row_exists_is_answered_from_it_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let path = format!("/v1/wallets/{wallet}/debit");
    let body = json!({"amount": "1.00", "currency": "EUR"});
    let key = new_key();
    let first = app.post(&path, &key, &body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_body = first.bytes().await.unwrap();
    crate::helpers::forget_replay_cache(&app, &key).await;

    let replay = app.post(&path, &key, &body).await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.bytes().await.unwrap(), first_body);
    assert_eq!(entries_with_key(&app, &key).await, 1);
    assert_eq!(key_rows(&app, &key).await, 1);
    let balance = app.wallet(&wallet).await["balance"].clone();
    assert_eq!(balance, "9.00", "the rolled-back attempt moved nothing");
    assert!(!crate::helpers::in_flight_marker_set(&app, &key).await);

    // The same key for another request: refused, from the row.
    let other = json!({"amount": "2.00", "currency": "EUR"});
    crate::helpers::forget_replay_cache(&app, &key).await;
    assert_problem(
        app.post(&path, &key, &other).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(entries_with_key(&app, &key).await, 1);
}

/// Guard: the retention job and the `expired` state. After retention the stored answer is
/// dropped, the key row stays, and every request with the key gets 410 and executes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_past_retention_answers_410_and_never_executes_again() {
    let app = TestApp::spawn_with(|s| s.idempotency.purge_interval_s = 1).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let key = new_key();
    let path = format!("/v1/wallets/{wallet}/debit");
    let body = json!({"amount": "1.00", "currency": "EUR"});
    assert_eq!(
        app.post(&path, &key, &body).await.status(),
        StatusCode::CREATED
    );
    // Make the answer 169 hours old (bypassing the only-forward trigger, as an operator
    // could not), and drop its Redis replay-cache copy.
    let aged = (Utc::now() - chrono::Duration::hours(169)).to_rfc3339();
    app.db()
        .await
        .batch_execute(&format!(
            "SET session_replication_role = replica; \
             UPDATE idempotency_keys SET completed_at = '{aged}' WHERE idempotency_key = '{key}'"
        ))
        .await
        .unwrap();
    crate::helpers::forget_replay_cache(&app, &key).await;
    let aged_at = Instant::now();
    loop {
        let response = app.post(&path, &key, &body).await;
        if response.status() == StatusCode::GONE {
            assert_problem(response, 410, "idempotency_key_expired").await;
            break;
        }
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "a replay until purged"
        );
        assert!(
            aged_at.elapsed() < Duration::from_secs(5),
            "not purged in time"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    // Whatever the fingerprint: 410, nothing executes.
    let other = json!({"amount": "2.00", "currency": "EUR"});
    assert_problem(
        app.post(&path, &key, &other).await,
        410,
        "idempotency_key_expired",
    )
    .await;
    assert_eq!(
        count(&app, &format!("SELECT count(*) AS n FROM idempotency_keys WHERE idempotency_key = '{key}' AND state = 'expired' AND response_body IS NULL")).await,
        1,
        "the key row is kept"
    );
    assert_eq!(app.ledger(&wallet).await.len(), 2, "still one debit");
    // The database refuses to forget the key.
    let deleted = app
        .db()
        .await
        .batch_execute(&format!(
            "DELETE FROM idempotency_keys WHERE idempotency_key = '{key}'"
        ))
        .await;
    assert!(deleted.is_err(), "an expired key cannot be deleted");
}

/// Guard: `revoke_key` is idempotent, so a revocation whose publish failed can be repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_twice_succeeds_and_republishes() {
    use walletd::auth::keys::{Revoked, revoke_key};
    let app = TestApp::spawn().await;
    let (_, key) = app.new_tenant(&walletd::domain::Scope::ALL).await;
    let key_id = walletd::domain::KeyId::parse(&key[3..35]).unwrap();
    let mut conn = diesel_async::AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap();
    assert_eq!(revoke_key(&mut conn, key_id).await.unwrap(), Revoked::Now);
    assert_eq!(
        revoke_key(&mut conn, key_id).await.unwrap(),
        Revoked::Already
    );
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(["key", "revoke", &key_id.to_string()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", &app.database_url)
        .env_remove("WALLETD_ENV")
        .env_remove("WALLETD_CONFIG_DIR")
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_problem(
        app.get_as(&key, &format!("/v1/wallets/{}", Uuid::now_v7()))
            .await,
        401,
        "unauthorized",
    )
    .await;
}
