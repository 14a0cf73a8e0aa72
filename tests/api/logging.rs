//! The logs of the real `walletd serve` binary: JSON in production, one line per request with
//! what an operator searches by (never the idempotency key itself), and nothing a client does
//! logged at ERROR.

use std::io::Write as _;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{TestApp, free_port, isolation_env, new_key, poll_until};

/// A `walletd serve` child on a free port with `WALLETD_ENV=production`, its stderr piped.
struct Served {
    child: tokio::process::Child,
    base: String,
}

impl Served {
    async fn start(app: &TestApp) -> Self {
        Self::start_with(app, &[]).await
    }

    /// As [`Served::start`], with extra environment (settings overrides).
    async fn start_with(app: &TestApp, env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_walletd"))
            .arg("serve")
            .env("WALLETD_ENV", "production")
            .env("DATABASE_URL", &app.database_url)
            .env("WALLETD_BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .env_remove("WALLETD_CONFIG_DIR")
            .env_remove("WALLETD__LOG__FORMAT")
            .envs(isolation_env(&app.database_url))
            .envs(env.iter().copied())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        poll_until("walletd serve answers", Duration::from_secs(20), || async {
            app.client
                .get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok()
        })
        .await;
        Self { child, base }
    }

    /// Stops the process (SIGTERM: it drains and exits) and returns everything it logged.
    async fn logs(self) -> String {
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let output = tokio::time::timeout(Duration::from_secs(20), self.child.wait_with_output())
            .await
            .expect("walletd exits within 20 s of SIGTERM")
            .unwrap();
        String::from_utf8(output.stderr).unwrap()
    }
}

/// Every line parsed as JSON (a line that is not JSON fails the test).
fn json_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

fn request_line<'a>(lines: &'a [Value], request_id: &str) -> &'a Value {
    let found: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "request" && l["request_id"] == request_id)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one request line for {request_id}: {found:?}"
    );
    found[0]
}

/// `WALLETD_ENV=production` logs one JSON object per line; each request has one line with its
/// request id, tenant, wallet, operation, outcome, the first 16 hex digits of the SHA-256 of
/// its idempotency key, and its latency in whole microseconds. The key itself appears nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_logs_one_json_line_per_request_without_the_idempotency_key() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "10.00").await;
    let served = Served::start(&app).await;
    let key = format!("booking-secret-{}", new_key());
    let post = |request_id: &'static str, amount: &str| {
        app.client
            .post(format!("{}/v1/wallets/{wallet}/debit", served.base))
            .bearer_auth(&app.api_key)
            .header("Idempotency-Key", &key)
            .header("X-Request-Id", request_id)
            .json(&json!({"amount": amount, "currency": "EUR"}))
            .send()
    };
    assert_eq!(
        post("log-test-debit", "4.00").await.unwrap().status(),
        StatusCode::CREATED
    );
    let replay = post("log-test-replay", "4.00").await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let declined = app
        .client
        .post(format!("{}/v1/wallets/{wallet}/debit", served.base))
        .bearer_auth(&app.api_key)
        .header("Idempotency-Key", new_key())
        .header("X-Request-Id", "log-test-decline")
        .json(&json!({"amount": "400.00", "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(declined.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let logs = served.logs().await;

    assert!(
        !logs.contains(&key),
        "the idempotency key was logged:\n{logs}"
    );
    let lines = json_lines(&logs);
    let hash = &hex::encode(Sha256::digest(key.as_bytes()))[..16];
    let line = request_line(&lines, "log-test-debit");
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["route"], "/v1/wallets/{id}/debit");
    assert_eq!(line["status"], 201);
    assert_eq!(line["operation"], "debit");
    assert_eq!(line["outcome"], "applied");
    assert_eq!(line["tenant"], app.tenant_id.as_str());
    assert_eq!(line["wallet"], wallet.as_str());
    assert_eq!(line["idempotency_key_sha256"], hash);
    assert!(line["latency_us"].is_u64(), "an integer: {line}");
    assert!(line.get("elapsed_ms").is_none(), "{line}");

    let replay = request_line(&lines, "log-test-replay");
    assert_eq!(replay["outcome"], "replayed", "{replay}");
    assert_eq!(replay["idempotency_key_sha256"], hash);
    let decline = request_line(&lines, "log-test-decline");
    assert_eq!(decline["outcome"], "insufficient_funds", "{decline}");
    assert_eq!(
        decline["level"], "INFO",
        "a decline is not a failure: {decline}"
    );
}

/// A request refused by the rate limit is still attributed to its tenant: the key was
/// verified before admission refused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_request_line_names_its_tenant() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    let served =
        Served::start_with(&app, &[("WALLETD__RATE_LIMIT__REQUESTS_PER_SECOND", "1")]).await;
    let mut limited = Vec::new();
    for i in 0..5 {
        let request_id = format!("log-test-limited-{i}");
        let response = app
            .client
            .get(format!("{}/v1/wallets/{wallet}", served.base))
            .bearer_auth(&app.api_key)
            .header("X-Request-Id", &request_id)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited.push(request_id);
        }
    }
    assert!(!limited.is_empty(), "5 requests at once within 1/s");
    let lines = json_lines(&served.logs().await);
    for request_id in &limited {
        let line = request_line(&lines, request_id);
        assert_eq!(line["outcome"], "rate_limited", "{line}");
        assert_eq!(line["tenant"], app.tenant_id.as_str(), "{line}");
    }
}

/// What clients get wrong is not walletd's failure: a malformed request line or header, a bad
/// `Content-Length`, a 4xx of any kind is logged at WARN or below, never ERROR; a connection
/// that never became a request says so at WARN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_never_logged_at_error() {
    let app = TestApp::spawn().await;
    let served = Served::start(&app).await;
    let address = served.base.trim_start_matches("http://").to_owned();
    let garbage: [&[u8]; 4] = [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: \x01\xff\r\n\r\n",
        b"POST /v1/wallets HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    ];
    let raw = tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        garbage
            .iter()
            .map(|request| {
                let mut stream = std::net::TcpStream::connect(&address).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                stream.write_all(request).unwrap();
                let mut answer = [0u8; 12];
                let _ = stream.read(&mut answer);
                String::from_utf8_lossy(&answer).into_owned()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    for answer in &raw {
        assert_eq!(answer, "HTTP/1.1 400", "{raw:?}");
    }
    let client = &app.client;
    let url = |path: &str| format!("{}{path}", served.base);
    let answers = [
        client.get(url("/v1/wallets/nope")).send().await.unwrap(),
        client
            .get(url("/v1/wallets/nope"))
            .bearer_auth("wd_garbage")
            .send()
            .await
            .unwrap(),
        client
            .post(url("/v1/wallets"))
            .bearer_auth(&app.api_key)
            .header("Idempotency-Key", "")
            .json(&json!({"currency": "EUR"}))
            .send()
            .await
            .unwrap(),
        client
            .post(url("/v1/wallets"))
            .bearer_auth(&app.api_key)
            .header("Idempotency-Key", new_key())
            .header("Content-Type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
        client.get(url("/nothing/here")).send().await.unwrap(),
    ];
    for answer in &answers {
        assert!(answer.status().is_client_error(), "{answer:?}");
    }
    let logs = served.logs().await;
    let lines = json_lines(&logs);
    let errors: Vec<&Value> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(
        errors.is_empty(),
        "client errors logged at ERROR: {errors:#?}"
    );
    let dropped = lines
        .iter()
        .filter(|l| l["level"] == "WARN" && l["target"] == "walletd::http")
        .count();
    assert_eq!(
        dropped,
        raw.len(),
        "one WARN per malformed connection:\n{logs}"
    );
    let requests = lines
        .iter()
        .filter(|l| l["message"] == "request" && l["status"].as_u64().is_some_and(|s| s >= 400))
        .count();
    assert_eq!(requests, answers.len(), "{logs}");
}
