//! Dependency faults with defined behaviour: a row held by another session, Postgres down and
//! back, a client that hangs up mid-request, SIGTERM with a request in flight.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use diesel_async::SimpleAsyncConnection;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, assert_problem, free_port, isolation_env, new_key, poll_until};

/// A private Postgres cluster in a temp dir on a free port, for tests that stop and restart
/// it (the shared server is never touched). Runs as `postgres` when the tests run as root.
struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
    bindir: PathBuf,
}

fn postgres_bindir() -> PathBuf {
    let output = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output();
    if let Ok(output) = output
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").exists() && dir.join("postgres").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Postgres binaries under /usr/lib/postgresql")
        .map(|e| e.unwrap().path().join("bin"))
        .filter(|d| d.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect("an initdb")
}

fn as_cluster_owner(program: &Path) -> std::process::Command {
    let running_as_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if running_as_root {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        std::process::Command::new(program)
    }
}

impl PrivatePostgres {
    fn start() -> Self {
        let bindir = postgres_bindir();
        let dir =
            std::env::temp_dir().join(format!("walletd-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::process::Command::new("chown")
            .args(["postgres"])
            .arg(&dir)
            .status();
        let status = as_cluster_owner(&bindir.join("initdb"))
            .args(["-D"])
            .arg(dir.join("data"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        let cluster = Self {
            dir,
            port: free_port(),
            bindir,
        };
        cluster.pg_ctl_start();
        cluster
    }

    fn pg_ctl_start(&self) {
        let status = as_cluster_owner(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "30", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl start failed");
    }

    fn stop(&self) {
        let _ = as_cluster_owner(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the real `walletd serve` binary against the app's database on a free port and waits
/// until it answers; `capture_output` pipes its stdout and stderr instead of discarding them.
async fn serve_binary(
    app: &TestApp,
    rust_log: &str,
    capture_output: bool,
) -> (tokio::process::Child, String) {
    let port = free_port();
    let output = || {
        if capture_output {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let server = tokio::process::Command::new(env!("CARGO_BIN_EXE_walletd"))
        .arg("serve")
        .env("DATABASE_URL", &app.database_url)
        .env("WALLETD_BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", rust_log)
        .envs(isolation_env(&app.database_url))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(output())
        .stderr(output())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while app
        .client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "walletd did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (server, base)
}

/// A row lock held by another session makes a debit wait at most `database.lock_timeout_ms`,
/// then answer 503 `lock_timeout`; nothing is stored, so the same key executes once the row
/// is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_held_by_another_session_gives_a_bounded_503() {
    let app = TestApp::spawn_with(|s| s.database.lock_timeout_ms = 300).await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;

    let mut blocker = app.db().await;
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM wallets WHERE id = '{wallet}' FOR UPDATE"
        ))
        .await
        .unwrap();
    let started = Instant::now();
    let response = app.debit(&wallet, "blocked", "10.00").await;
    let waited = started.elapsed();
    assert_eq!(response.headers()["retry-after"], "1");
    assert_problem(response, 503, "lock_timeout").await;
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    blocker.batch_execute("COMMIT").await.unwrap();

    let retry = app.debit(&wallet, "blocked", "10.00").await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.wallet(&wallet).await["balance"], "90.00");
}

/// Postgres stops: requests answer 503 `unavailable` with Retry-After within a bounded time,
/// nothing half-written. Postgres comes back: the pool recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_answers_503_quickly_and_the_pool_recovers() {
    let cluster = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .unwrap();
    let url = cluster.url("walletd");
    walletd::db::create_database_if_missing(&url).await.unwrap();
    let mut migrated = walletd::db::run_migrations(&url).await.unwrap();
    walletd::pipeline::chain::backfill(&mut migrated)
        .await
        .unwrap();
    drop(migrated);
    let app = TestApp::spawn_on(url, |s| {
        s.database.connect_timeout_ms = 500;
        s.database.pool_wait_timeout_ms = 500;
    })
    .await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    assert_eq!(
        app.debit(&wallet, &new_key(), "1.00").await.status(),
        StatusCode::CREATED
    );

    tokio::task::block_in_place(|| cluster.stop());
    let key = new_key();
    for _ in 0..3 {
        let started = Instant::now();
        let response = app.debit(&wallet, &key, "10.00").await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(response.headers()["retry-after"], "1");
        assert_problem(response, 503, "unavailable").await;
    }
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    tokio::task::block_in_place(|| cluster.pg_ctl_start());
    // The same key executes once Postgres is back (503s were not stored), exactly once.
    let deadline = Instant::now() + Duration::from_secs(15);
    let response = loop {
        let response = app.debit(&wallet, &key, "10.00").await;
        if response.status() != StatusCode::SERVICE_UNAVAILABLE {
            break response;
        }
        assert!(Instant::now() < deadline, "the pool did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        app.debit(&wallet, &key, "10.00").await.headers()["idempotent-replayed"],
        "true"
    );
    assert_eq!(app.wallet(&wallet).await["balance"], "89.00");
    app.assert_invariants(&wallet).await;
}

/// A client that sends a debit and hangs up while it waits for the wallet lock: the request
/// still completes on its own task, its answer is stored, the key is not left in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_request_leaves_no_stuck_key() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let lock = app.hold_wallet_lock(&wallet, 5000).await;

    let body = r#"{"amount":"25.00","currency":"EUR"}"#;
    let request = format!(
        "POST /v1/wallets/{wallet}/debit HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Idempotency-Key: hang-up\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        app.api_key,
        body.len()
    );
    let address = app.address.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    // Hang up once the request has claimed its key: it is then waiting for the lock we hold.
    app.wait_for_claim("hang-up").await;
    drop(socket);
    lock.release().await;

    // The detached pipeline finishes by itself; a retry is answered from the store.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = app.debit(&wallet, "hang-up", "25.00").await;
        if response.status() == StatusCode::CREATED {
            assert_eq!(response.headers()["idempotent-replayed"], "true");
            break;
        }
        assert_eq!(
            response.status(),
            StatusCode::CONFLICT,
            "only in-flight is acceptable meanwhile"
        );
        assert!(Instant::now() < deadline, "the key stayed in flight");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.wallet(&wallet).await["balance"], "75.00");
    let entries = app.assert_invariants(&wallet).await;
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["idempotency_key"] == "hang-up")
            .count(),
        1
    );
}

/// SIGTERM: the server stops accepting, finishes the request in flight, exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let app = TestApp::spawn().await;
    let wallet = app.create_wallet("EUR").await;
    app.fund(&wallet, "100.00").await;
    let (mut server, base) = serve_binary(&app, "warn", false).await;

    // A request that will be in flight when SIGTERM arrives: it waits for a lock we hold
    // until the server has stopped accepting connections.
    let held = app.hold_wallet_lock(&wallet, 5000).await;
    let in_flight = {
        let client = app.client.clone();
        let (url, key) = (
            format!("{base}/v1/wallets/{wallet}/debit"),
            app.api_key.clone(),
        );
        tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(key)
                .header("Idempotency-Key", "in-flight-at-sigterm")
                .json(&json!({"amount": "5.00", "currency": "EUR"}))
                .send()
                .await
        })
    };
    app.wait_for_claim("in-flight-at-sigterm").await;
    let pid = server.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Draining has begun once the listener is closed; only then may the request proceed.
    let address = base.trim_start_matches("http://").to_owned();
    poll_until(
        "the server stops accepting connections",
        Duration::from_secs(4),
        || {
            let address = address.clone();
            async move { tokio::net::TcpStream::connect(address).await.is_err() }
        },
    )
    .await;
    held.release().await;

    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(response.status(), StatusCode::CREATED);
    let status = tokio::time::timeout(Duration::from_secs(15), server.wait())
        .await
        .expect("exits in time")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let mut probe = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await;
    if let Ok(socket) = probe.as_mut() {
        // Accepting a connection after exit would be a bug; a reset is fine.
        let mut buffer = [0u8; 1];
        let _ = socket.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert_eq!(socket.read(&mut buffer).await.unwrap_or(0), 0);
    }
    let entries: Vec<Value> = app.assert_invariants(&wallet).await;
    assert_eq!(entries.len(), 2);
}

/// Logs never carry an API key's secret, even at debug level and for a refused key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_an_api_key_secret() {
    let app = TestApp::spawn().await;
    let (mut server, base) = serve_binary(&app, "debug", true).await;
    let secret = app.api_key.rsplit('_').next().unwrap().to_owned();
    let mut wrong = app.api_key.clone();
    wrong.replace_range(wrong.len() - 8.., "00000000");
    for key in [app.api_key.as_str(), wrong.as_str()] {
        let _ = app
            .client
            .post(format!("{base}/v1/wallets"))
            .bearer_auth(key)
            .header("Idempotency-Key", new_key())
            .json(&json!({"currency": "EUR"}))
            .send()
            .await
            .unwrap();
    }
    let pid = server.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(15), async {
        let mut stderr = String::new();
        server
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .await
            .unwrap();
        let mut stdout = String::new();
        server
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .await
            .unwrap();
        server.wait().await.unwrap();
        stderr + &stdout
    })
    .await
    .unwrap();
    assert!(
        output.contains("request"),
        "debug logs were captured: {output}"
    );
    assert!(
        !output.contains(&secret),
        "the API key secret appeared in the logs"
    );
    assert!(
        !output.contains(&wrong),
        "a presented key appeared in the logs"
    );
}
