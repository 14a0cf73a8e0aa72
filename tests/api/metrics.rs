//! `/metrics` as an SRE reads it (docs/metrics.md): decisions by operation and outcome code,
//! bounded labels, Redis node health and the lock's fallbacks, the pool, build and process
//! metrics.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, assert_problem, base_settings, new_key, poll_until, sample};

async fn scrape(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

fn decisions(text: &str, operation: &str, code: &str) -> f64 {
    sample(
        text,
        "walletd_decisions_total",
        &[("operation", operation), ("code", code)],
    )
    .unwrap_or(0.0)
}

/// Every decision is counted under its operation and the code the client got: a fresh 201 is
/// `applied`, a stored decline its own code (`insufficient_funds`, `currency_mismatch`), a
/// retry `replayed`, a refused body `validation_failed`, a busy wallet `lock_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_counted_by_operation_and_outcome_code() {
    let app = TestApp::spawn_with(|settings| settings.lock.wait_ms_max = 200).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let declined = app.debit(&wallet, "short", "100.00").await;
    assert_problem(declined, 422, "insufficient_funds").await;
    let replayed = app.debit(&wallet, "short", "100.00").await;
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    let path = format!("/v1/wallets/{wallet}/debit");
    let mismatch = app
        .post(
            &path,
            &new_key(),
            &json!({"amount": "1.00", "currency": "USD"}),
        )
        .await;
    assert_problem(mismatch, 422, "currency_mismatch").await;
    let invalid = app
        .post(
            &path,
            &new_key(),
            &json!({"amount": "-1", "currency": "EUR"}),
        )
        .await;
    assert_problem(invalid, 400, "validation_failed").await;
    assert_eq!(
        app.debit(&wallet, &new_key(), "1.00").await.status(),
        StatusCode::CREATED
    );
    let held = app.hold_wallet_lock(&wallet, 5_000).await;
    let busy = app.debit(&wallet, &new_key(), "1.00").await;
    assert_problem(busy, 503, "lock_timeout").await;
    held.release().await;

    let text = scrape(&app).await;
    assert!(
        text.contains("# TYPE walletd_decisions_total counter"),
        "{text}"
    );
    assert_eq!(decisions(&text, "create_wallet", "applied"), 1.0, "{text}");
    assert_eq!(decisions(&text, "credit", "applied"), 1.0, "{text}");
    assert_eq!(decisions(&text, "debit", "applied"), 1.0, "{text}");
    assert_eq!(
        decisions(&text, "debit", "insufficient_funds"),
        1.0,
        "{text}"
    );
    assert_eq!(decisions(&text, "debit", "replayed"), 1.0, "{text}");
    assert_eq!(
        decisions(&text, "debit", "currency_mismatch"),
        1.0,
        "{text}"
    );
    assert_eq!(
        decisions(&text, "debit", "validation_failed"),
        1.0,
        "{text}"
    );
    assert_eq!(decisions(&text, "debit", "lock_timeout"), 1.0, "{text}");
    // The codes that alerts watch exist before they first happen.
    assert_eq!(
        sample(
            &text,
            "walletd_decisions_total",
            &[("operation", "reverse"), ("code", "unavailable")]
        ),
        Some(0.0),
        "{text}"
    );
    // Reads are not decisions.
    assert!(!text.contains("operation=\"get_wallet\""), "{text}");
}

/// A per-key rate limit answer is counted as a decision (`rate_limited`) and in
/// `walletd_rate_limited_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_requests_are_counted() {
    let app = TestApp::spawn_with(|settings| settings.rate_limit.requests_per_second = 2).await;
    let before = sample(&scrape(&app).await, "walletd_rate_limited_total", &[]).unwrap_or(0.0);
    let answers = futures_util::future::join_all((0..8).map(|_| async {
        app.post("/v1/wallets", &new_key(), &json!({"currency": "EUR"}))
            .await
    }))
    .await;
    let limited = answers
        .iter()
        .filter(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(
        limited >= 2,
        "8 requests in about a second, 2 allowed per second: {limited} refused"
    );

    let text = scrape(&app).await;
    assert_eq!(
        decisions(&text, "create_wallet", "rate_limited"),
        limited as f64,
        "{text}"
    );
    let after = sample(&text, "walletd_rate_limited_total", &[]).unwrap();
    assert!(after >= before + limited as f64, "{before} -> {after}");
}

/// A method a client invents is labelled `OTHER`: it adds no series of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invented_method_is_labelled_other() {
    let app = TestApp::spawn().await;
    for _ in 0..2 {
        let response = app
            .client
            .request(
                Method::from_bytes(b"XLROAWQ").unwrap(),
                app.url("/v1/wallets"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
    let text = scrape(&app).await;
    assert_eq!(
        sample(
            &text,
            "walletd_http_requests_total",
            &[
                ("method", "OTHER"),
                ("route", "/v1/wallets"),
                ("status", "405")
            ]
        ),
        Some(2.0),
        "{text}"
    );
    assert!(!text.contains("XLROAWQ"), "{text}");
}

/// Each configured Redis node has an up/down gauge by index (and its address once, in
/// `walletd_redis_node_info`). With a quorum out of reach, the lock falls back to the row lock
/// alone: counted as a quorum failure and a database-only request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_nodes_report_up_and_down_and_the_database_only_fallback_is_counted() {
    let real = base_settings().redis.urls[0].clone();
    let app = TestApp::spawn_with(move |settings| {
        settings.redis.urls = vec![real, "redis://:s3cret@127.0.0.1:1".into()];
    })
    .await;
    let before = scrape(&app).await;
    let counter = |text: &str, name: &str| sample(text, name, &[]).unwrap_or(0.0);
    poll_until("node 0 is seen up", Duration::from_secs(5), || async {
        sample(
            &scrape(&app).await,
            "walletd_redis_node_up",
            &[("node", "0")],
        ) == Some(1.0)
    })
    .await;

    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    assert_eq!(
        app.debit(&wallet, &new_key(), "1.00").await.status(),
        StatusCode::CREATED
    );

    let text = scrape(&app).await;
    assert_eq!(
        sample(&text, "walletd_redis_node_up", &[("node", "1")]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "walletd_redis_node_info",
            &[("node", "1"), ("address", "127.0.0.1:1")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "walletd_redis_quorum", &[]), Some(2.0));
    assert!(!text.contains("s3cret"), "{text}");
    // The credit and the debit each went on under the row lock alone.
    for name in [
        "walletd_redlock_quorum_failures_total",
        "walletd_lock_database_only_total",
    ] {
        assert!(
            counter(&text, name) >= counter(&before, name) + 2.0,
            "{name}: {} -> {}",
            counter(&before, name),
            counter(&text, name)
        );
    }
    let refused = |text: &str| {
        ["connect", "backoff", "timeout"]
            .iter()
            .map(|kind| {
                sample(
                    text,
                    "walletd_redis_command_errors_total",
                    &[("node", "1"), ("kind", kind)],
                )
                .unwrap_or(0.0)
            })
            .sum::<f64>()
    };
    assert!(refused(&text) > refused(&before), "{text}");
}

/// The pool's in-use and waiting gauges, the pipeline's pool waits, the build and the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_build_and_process_metrics_are_exported() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let text = scrape(&app).await;
    for state in ["max", "open", "idle", "in_use", "waiting"] {
        assert!(
            sample(&text, "walletd_db_pool_connections", &[("state", state)]).is_some(),
            "{state}: {text}"
        );
    }
    assert!(
        sample(
            &text,
            "walletd_db_pool_wait_seconds_count",
            &[("result", "ok")]
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE walletd_transaction_retries_total counter"),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "walletd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0),
        "{text}"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
    ] {
        assert!(
            sample(&text, name, &[]).is_some_and(|v| v > 0.0),
            "{name}: {text}"
        );
    }
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter"),
        "{text}"
    );
}

/// The names `docs/metrics.md` documents: the first cell of each table row, in backticks.
fn documented_families() -> Vec<String> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("| `")?.split_once("` |"))
        .map(|(name, _)| name.to_owned())
        .filter(|name| name.starts_with("walletd_") || name.starts_with("process_"))
        .collect();
    names.sort();
    names
}

/// `docs/metrics.md` lists exactly the families walletd registers (with or without a series
/// yet), and a real scrape shows nothing else; the deploy checks rely on that list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_family_is_documented_and_every_documented_one_exported() {
    let documented = documented_families();
    let registered = walletd::metrics::Metrics::new()
        .unwrap()
        .family_names()
        .to_vec();
    assert_eq!(documented, registered);

    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let _ = app.get(&format!("/v1/wallets/{wallet}")).await;
    let text = scrape(&app).await;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(
                documented.iter().any(|d| d == name),
                "{name} is exported but not in docs/metrics.md"
            );
        }
    }
}

/// A transaction conflict that is retried counts once in `walletd_transaction_retries_total`;
/// one that is not (no attempts left) does not.
#[test]
fn a_retried_transaction_is_counted() {
    use diesel::result::{DatabaseErrorKind, Error};
    use walletd::pipeline::deadline::Deadline;
    use walletd::pipeline::transaction::{TRANSACTION_ATTEMPTS_MAX, TxError};
    let metrics = walletd::metrics::Metrics::new().unwrap();
    let pool = deadpool::Status {
        max_size: 1,
        size: 0,
        available: 0,
        waiting: 0,
    };
    let retries = |metrics: &walletd::metrics::Metrics| {
        sample(
            &metrics.render(pool, 0).unwrap(),
            "walletd_transaction_retries_total",
            &[],
        )
        .unwrap()
    };
    let conflict = TxError::Db(Error::DatabaseError(
        DatabaseErrorKind::SerializationFailure,
        Box::new("could not serialize access".to_owned()),
    ));
    let deadline = Deadline::after(Duration::from_secs(10));
    let before = retries(&metrics);
    assert!(conflict.retry_after_attempt(1, &deadline));
    // Other tests may retry at the same time (the counter is process-wide): at least one more.
    assert!(retries(&metrics) >= before + 1.0);
    assert!(!conflict.retry_after_attempt(TRANSACTION_ATTEMPTS_MAX, &deadline));
}
