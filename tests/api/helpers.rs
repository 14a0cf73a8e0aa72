//! Test harness: a real walletd on port 0, its own Postgres database cloned from a migrated
//! template, the shared Redis (keys are namespaced by random ids, so tests never collide), or
//! private Redis nodes that a test starts and kills ([`PrivateRedis`]).

use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use reqwest::{Response, StatusCode};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use uuid::Uuid;
use walletd::auth::keys;
use walletd::config::Settings;
use walletd::domain::Scope;
use walletd::startup::Application;

/// The server that holds the test databases (the same one as in config/default.toml unless
/// `DATABASE_URL` points elsewhere).
pub fn server_url() -> String {
    let settings = base_settings();
    let mut url = url::Url::parse(&settings.database.url).unwrap();
    url.set_path("");
    url.to_string().trim_end_matches('/').to_owned()
}

pub fn base_settings() -> Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS
        .get_or_init(|| Settings::load(Path::new("config")).expect("config/default.toml loads"))
        .clone()
}

static TEMPLATE: OnceCell<String> = OnceCell::const_new();

/// A migrated template database, named after a hash of the migrations, built once per schema
/// version (under an advisory lock, so parallel test binaries do not race).
async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let mut hasher = Sha256::new();
            let mut dirs: Vec<_> = std::fs::read_dir("migrations")
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            dirs.sort();
            for dir in dirs {
                hasher.update(dir.to_string_lossy().as_bytes());
                hasher.update(std::fs::read(dir.join("up.sql")).unwrap());
            }
            let name = format!("walletd_tpl_{}", &hex::encode(hasher.finalize())[..16]);
            let mut admin = admin_connection().await;
            admin
                .batch_execute("SELECT pg_advisory_lock(424242)")
                .await
                .unwrap();
            let state: Option<bool> = database_is_template(&mut admin, &name).await;
            if state != Some(true) {
                if state.is_some() {
                    admin
                        .batch_execute(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
                        .await
                        .unwrap();
                }
                admin
                    .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                    .await
                    .unwrap();
                // As `walletd migrate` does: the migrations, then the chain step (which
                // validates the chain constraint that /readyz checks).
                let mut migrated = walletd::db::run_migrations(&format!("{}/{name}", server_url()))
                    .await
                    .unwrap();
                walletd::pipeline::chain::backfill(&mut migrated)
                    .await
                    .unwrap();
                drop(migrated);
                admin
                    .batch_execute(&format!(
                        "ALTER DATABASE \"{name}\" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
                    ))
                    .await
                    .unwrap();
            }
            admin
                .batch_execute("SELECT pg_advisory_unlock(424242)")
                .await
                .unwrap();
            name
        })
        .await
}

async fn database_is_template(conn: &mut AsyncPgConnection, name: &str) -> Option<bool> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        datistemplate: bool,
    }
    diesel::sql_query("SELECT datistemplate FROM pg_database WHERE datname = $1")
        .bind::<diesel::sql_types::Text, _>(name)
        .get_results::<Row>(conn)
        .await
        .unwrap()
        .into_iter()
        .next()
        .map(|r: Row| r.datistemplate)
}

async fn admin_connection() -> AsyncPgConnection {
    AsyncPgConnection::establish(&format!("{}/postgres", server_url()))
        .await
        .unwrap()
}

/// A fresh database cloned from the template. Named `walletd_t_*`; `scripts/test.sh` drops
/// them after the run.
pub async fn fresh_database() -> String {
    let template = template().await;
    let name = format!("walletd_t_{}", Uuid::new_v4().simple());
    let mut admin = admin_connection().await;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match admin
            .batch_execute(&format!(
                "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
            ))
            .await
        {
            Ok(()) => break,
            Err(error) if attempts < 10 => {
                eprintln!("CREATE DATABASE failed ({error}), retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempts)).await;
            }
            Err(error) => panic!("could not create a test database: {error}"),
        }
    }
    format!("{}/{name}", server_url())
}

pub struct TestApp {
    pub address: String,
    pub database_url: String,
    pub tenant_id: String,
    pub api_key: String,
    pub client: reqwest::Client,
    /// The settings it runs with (its stream, cache namespace, Redis nodes).
    pub settings: Settings,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Spawns walletd with test settings, adjusted by `adjust` (e.g. other Redis nodes).
    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_on(fresh_database().await, adjust).await
    }

    /// Spawns walletd against a database the caller prepared (migrated, e.g. a private cluster),
    /// with a new tenant of its own.
    pub async fn spawn_on(database_url: String, adjust: impl FnOnce(&mut Settings)) -> Self {
        let settings = test_settings(&database_url, adjust);
        let mut conn = AsyncPgConnection::establish(&database_url).await.unwrap();
        let issued = keys::create_tenant(&mut conn, "test-tenant", &Scope::ALL)
            .await
            .unwrap();
        Self::start(settings, database_url, issued.tenant_id, issued.api_key)
    }

    /// Another walletd process (a replica) on this app's database, serving this app's tenant
    /// with this app's API key, with its own settings (e.g. its own Redis nodes).
    pub async fn spawn_replica(&self, adjust: impl FnOnce(&mut Settings)) -> Self {
        let settings = test_settings(&self.database_url, adjust);
        Self::start(
            settings,
            self.database_url.clone(),
            self.tenant_id.clone(),
            self.api_key.clone(),
        )
    }

    fn start(settings: Settings, database_url: String, tenant_id: String, api_key: String) -> Self {
        let application = Application::build(&settings).expect("walletd builds");
        let settings_kept = settings.clone();
        let address = format!("http://127.0.0.1:{}", application.port());
        tokio::spawn(application.run_until_stopped());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build()
            .unwrap();
        Self {
            address,
            database_url,
            tenant_id,
            api_key,
            client,
            settings: settings_kept,
        }
    }

    /// From now on, every COMMIT that wrote a ledger entry (with `reference`, if given) takes
    /// `seconds` longer: a deferred trigger of this app's database sleeps at commit time.
    pub async fn slow_commits(&self, seconds: f64, reference: Option<&str>) {
        let when = reference
            .map(|r| format!("WHEN (NEW.reference = '{r}')"))
            .unwrap_or_default();
        self.db()
            .await
            .batch_execute(&format!(
                "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN PERFORM pg_sleep({seconds}); RETURN NULL; END $$;
                 CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON ledger_entries
                     DEFERRABLE INITIALLY DEFERRED FOR EACH ROW {when}
                     EXECUTE FUNCTION slow_commit();"
            ))
            .await
            .unwrap();
    }

    /// From now on, every COMMIT that inserted a row of `table` matching `condition` (SQL over
    /// `NEW`) is refused by a deferred trigger of this app's database, after every statement of
    /// the transaction succeeded. Undo with [`TestApp::stop_refusing_commits`].
    pub async fn refuse_commits(&self, table: &str, condition: &str) {
        self.db()
            .await
            .batch_execute(&format!(
                "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN RAISE EXCEPTION 'refused at commit by the test'; END $$;
                 CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON {table}
                     DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN ({condition})
                     EXECUTE FUNCTION refuse_at_commit();"
            ))
            .await
            .unwrap();
    }

    pub async fn stop_refusing_commits(&self, table: &str) {
        self.db()
            .await
            .batch_execute(&format!("DROP TRIGGER refuse_at_commit ON {table}"))
            .await
            .unwrap();
    }

    /// A connection to this app's first Redis node (its stream and cache live there).
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.settings.redis.urls[0].as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Every entry of this app's event stream, in stream order: (entry id, event).
    pub async fn stream_events(&self) -> Vec<(String, Value)> {
        let mut redis = self.redis().await;
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&self.settings.events.stream)
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .unwrap();
        entries
            .into_iter()
            .map(|(id, fields)| {
                assert_eq!(fields.len(), 1, "one field per entry");
                assert_eq!(fields[0].0, "event");
                (id, serde_json::from_str(&fields[0].1).unwrap())
            })
            .collect()
    }

    /// The stream once it holds at least `count` entries (within 20 s).
    pub async fn wait_for_events(&self, count: usize) -> Vec<(String, Value)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let events = self.stream_events().await;
            if events.len() >= count {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} events published after 20 s",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A counter or gauge from `/metrics` (the sum over its series matching `labels`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|line| {
                line.starts_with(name)
                    && line[name.len()..].starts_with(['{', ' '])
                    && line.contains(labels)
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn db(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.database_url)
            .await
            .unwrap()
    }

    /// Another tenant with its own key, in the same database.
    pub async fn new_tenant(&self, scopes: &[Scope]) -> (String, String) {
        let issued = keys::create_tenant(&mut self.db().await, "other-tenant", scopes)
            .await
            .unwrap();
        (issued.tenant_id, issued.api_key)
    }

    /// An authenticated POST with an idempotency key and a JSON body.
    pub async fn post_as(
        &self,
        api_key: &str,
        path: &str,
        idempotency_key: &str,
        body: &Value,
    ) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(api_key)
            .header("Idempotency-Key", idempotency_key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, idempotency_key: &str, body: &Value) -> Response {
        self.post_as(&self.api_key, path, idempotency_key, body)
            .await
    }

    pub async fn get_as(&self, api_key: &str, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(api_key)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.get_as(&self.api_key, path).await
    }

    /// Holds a wallet's Redis lock as another request would, for at most `ttl_ms`; the lock is
    /// released when the returned guard's `release` is awaited (or the TTL lapses).
    pub async fn hold_wallet_lock(&self, wallet: &str, ttl_ms: u64) -> HeldLock {
        let key = walletd::pipeline::lock::wallet_lock_key(
            walletd::domain::TenantId::parse(&self.tenant_id).unwrap(),
            walletd::domain::WalletId::parse(wallet).unwrap(),
        );
        let mut redis = redis::Client::open(base_settings().redis.urls[0].as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("someone-else")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut redis)
            .await
            .unwrap();
        HeldLock { key, redis }
    }

    pub async fn create_wallet(&self, currency: &str) -> String {
        self.create_wallet_with(json!({ "currency": currency }))
            .await
    }

    pub async fn create_wallet_with(&self, body: Value) -> String {
        let response = self.post("/v1/wallets", &new_key(), &body).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Credits `amount` (EUR unless the wallet says otherwise) and asserts 201.
    pub async fn fund(&self, wallet: &str, amount: &str) {
        let currency = self.wallet(wallet).await["currency"]
            .as_str()
            .unwrap()
            .to_owned();
        let response = self
            .post(
                &format!("/v1/wallets/{wallet}/credit"),
                &new_key(),
                &json!({ "amount": amount, "currency": currency }),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    pub async fn debit(&self, wallet: &str, key: &str, amount: &str) -> Response {
        self.post(
            &format!("/v1/wallets/{wallet}/debit"),
            key,
            &json!({ "amount": amount, "currency": "EUR" }),
        )
        .await
    }

    /// POSTs `body` with `idempotency_key` until the answer is a decision: a shed answer (see
    /// [`is_shed`]) is retried with the same key and body, as a client would, for at most
    /// [`SHED_RETRIES_DEADLINE`].
    pub async fn post_until_decided(
        &self,
        path: &str,
        idempotency_key: &str,
        body: &Value,
    ) -> Decided {
        let deadline = Instant::now() + SHED_RETRIES_DEADLINE;
        let mut sheds = 0;
        loop {
            let response = self.post(path, idempotency_key, body).await;
            let status = response.status();
            let replayed = response.headers().get("idempotent-replayed").is_some();
            let text = response.text().await.unwrap();
            let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if !is_shed(status, &json) {
                return Decided {
                    status,
                    body: json,
                    text,
                    replayed,
                    sheds,
                };
            }
            sheds += 1;
            assert!(
                Instant::now() < deadline,
                "{path} with key {idempotency_key} still shed after {sheds} tries: {status} {text}"
            );
            tokio::time::sleep(shed_retry_delay(sheds)).await;
        }
    }

    /// `count` debits of `amount` (EUR) sent at once, each with its own key, shed answers
    /// retried until decided: (status, body) of each decision.
    pub async fn concurrent_debits(
        &self,
        wallet: &str,
        count: usize,
        amount: &str,
    ) -> Vec<(StatusCode, Value)> {
        let path = format!("/v1/wallets/{wallet}/debit");
        let body = json!({ "amount": amount, "currency": "EUR" });
        futures_util::future::join_all((0..count).map(|_| {
            let (path, body) = (&path, &body);
            async move {
                let decided = self.post_until_decided(path, &new_key(), body).await;
                (decided.status, decided.body)
            }
        }))
        .await
    }

    /// Waits until a request with `idempotency_key` has claimed it (its in-flight marker is
    /// set in Redis): the request is then past layer 1, waiting for the lock or in its
    /// transaction.
    pub async fn wait_for_claim(&self, idempotency_key: &str) {
        let deadline = Instant::now() + CLAIM_WAIT_MAX;
        while !in_flight_marker_set(self, idempotency_key).await {
            assert!(
                Instant::now() < deadline,
                "no request claimed {idempotency_key} within {CLAIM_WAIT_MAX:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    pub async fn wallet(&self, wallet: &str) -> Value {
        let response = self.get(&format!("/v1/wallets/{wallet}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Every ledger entry of a wallet, following cursors.
    pub async fn ledger(&self, wallet: &str) -> Vec<Value> {
        let mut entries = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/wallets/{wallet}/ledger?limit=1000&after={c}"),
                None => format!("/v1/wallets/{wallet}/ledger?limit=1000"),
            };
            let response = self.get(&path).await;
            assert_eq!(response.status(), StatusCode::OK);
            let page: Value = response.json().await.unwrap();
            entries.extend(page["entries"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return entries,
            }
        }
    }

    /// The invariants of API.md, checked from the API alone: balance = credits - debits;
    /// seq 1, 2, 3… without gaps; each balance_before = previous balance_after (0 first);
    /// balance_after = balance_before ∓ amount; available never below 0.
    pub async fn assert_invariants(&self, wallet: &str) -> Vec<Value> {
        let state = self.wallet(wallet).await;
        let entries = self.ledger(wallet).await;
        let overdraft = dec(&state["overdraft_limit"]);
        let mut previous_after = Decimal::ZERO;
        let mut sum = Decimal::ZERO;
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry["seq"].as_i64().unwrap(),
                i as i64 + 1,
                "seq gap at {entry}"
            );
            let (before, after, amount) = (
                dec(&entry["balance_before"]),
                dec(&entry["balance_after"]),
                dec(&entry["amount"]),
            );
            assert_eq!(before, previous_after, "chain broken at {entry}");
            let signed = match entry["type"].as_str().unwrap() {
                "credit" => amount,
                "debit" => -amount,
                "reversal" => reversal_effect(entry, &entries[..i], amount),
                other => panic!("unexpected type {other}"),
            };
            assert_eq!(after, before + signed, "arithmetic broken at {entry}");
            assert!(after >= -overdraft, "floor broken at {entry}");
            sum += signed;
            previous_after = after;
        }
        assert_eq!(dec(&state["balance"]), sum, "balance is not the ledger sum");
        assert!(dec(&state["available"]) >= Decimal::ZERO);
        entries
    }
}

/// A wallet lock held by a test (see [`TestApp::hold_wallet_lock`]).
pub struct HeldLock {
    pub key: String,
    redis: redis::aio::MultiplexedConnection,
}

impl HeldLock {
    pub async fn release(mut self) {
        let _: () = redis::cmd("DEL")
            .arg(&self.key)
            .query_async(&mut self.redis)
            .await
            .unwrap();
    }
}

/// How long [`TestApp::post_until_decided`] keeps retrying shed answers.
pub const SHED_RETRIES_DEADLINE: Duration = Duration::from_secs(60);

/// Pause before the first retry of a shed answer; it doubles with every further shed answer
/// up to [`SHED_RETRY_DELAY_MAX`] (its `Retry-After: 1`), with jitter, so that hundreds of
/// retrying clients do not spin on a busy wallet.
const SHED_RETRY_DELAY_MIN: Duration = Duration::from_millis(20);
const SHED_RETRY_DELAY_MAX: Duration = Duration::from_secs(1);

/// The pause before retry number `sheds` (1 for the first): exponential, capped, and drawn
/// uniformly from its upper half.
fn shed_retry_delay(sheds: u32) -> Duration {
    use rand::Rng;
    let ceiling = SHED_RETRY_DELAY_MIN
        .saturating_mul(1 << sheds.saturating_sub(1).min(16))
        .min(SHED_RETRY_DELAY_MAX);
    rand::rng().random_range(ceiling / 2..=ceiling)
}

/// An answer the server gave without deciding the request (nothing executed, nothing stored):
/// 409 `idempotency_key_in_progress`, 503 `lock_timeout`, 503 `unavailable`. A client retries
/// it with the same key and body.
pub fn is_shed(status: StatusCode, body: &Value) -> bool {
    match status {
        StatusCode::CONFLICT => body["code"] == "idempotency_key_in_progress",
        StatusCode::SERVICE_UNAVAILABLE => {
            body["code"] == "lock_timeout" || body["code"] == "unavailable"
        }
        _ => false,
    }
}

/// The decision a request finally got (see [`TestApp::post_until_decided`]).
#[derive(Debug)]
pub struct Decided {
    pub status: StatusCode,
    /// The body parsed as JSON (`null` if it is not JSON).
    pub body: Value,
    /// The body exactly as sent.
    pub text: String,
    /// Whether `Idempotent-Replayed` was set.
    pub replayed: bool,
    /// How many shed answers came before the decision.
    pub sheds: u32,
}

/// How long [`TestApp::wait_for_claim`] waits for a request to claim its key.
const CLAIM_WAIT_MAX: Duration = Duration::from_secs(10);

/// Pause between two looks at a state a test waits for.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` every [`POLL_INTERVAL`] until it holds; fails the test with `what` after
/// `timeout`.
pub async fn poll_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// How many answers have this status (and, if given, this problem `code`).
pub fn count_answers(
    answers: &[(StatusCode, Value)],
    status: StatusCode,
    code: Option<&str>,
) -> usize {
    answers
        .iter()
        .filter(|(s, body)| *s == status && code.is_none_or(|c| body["code"] == c))
        .count()
}

pub fn dec(value: &Value) -> Decimal {
    Decimal::from_str(
        value
            .as_str()
            .unwrap_or_else(|| panic!("{value} is not a string")),
    )
    .unwrap()
}

/// The environment a `walletd` child process of this database needs to keep to its own
/// stream and cache keys on the shared Redis (as [`test_settings`] does in process).
pub fn isolation_env(database_url: &str) -> Vec<(String, String)> {
    let settings = test_settings(database_url, |_| {});
    vec![
        ("WALLETD__EVENTS__STREAM".into(), settings.events.stream),
        ("WALLETD__CACHE__NAMESPACE".into(), settings.cache.namespace),
    ]
}

/// Test settings: port 0, a small pool, two workers, a quick shutdown; then `adjust`.
fn test_settings(database_url: &str, adjust: impl FnOnce(&mut Settings)) -> Settings {
    let mut settings = base_settings();
    settings.database.url = database_url.to_owned();
    settings.database.pool_max_size = 8;
    settings.server.bind = "127.0.0.1:0".into();
    settings.server.workers = 2;
    settings.server.shutdown_timeout_s = 1;
    // Tests share one Redis: each database gets its own stream, relay leases and cache keys
    // (replicas of one app share them, as replicas of one deployment do).
    let database = database_url.rsplit('/').next().unwrap_or("walletd");
    settings.events.stream = format!("walletd:test:{database}:events");
    settings.cache.namespace = format!("walletd:test:{database}:wallet");
    adjust(&mut settings);
    settings
}

/// A loopback port that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub fn new_key() -> String {
    format!("key-{}", Uuid::new_v4())
}

/// Asserts a problem+json response with the given status and code; returns the body.
pub async fn assert_problem(response: Response, status: u16, code: &str) -> Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "expected {status} {code}"
    );
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "body: {body}");
    assert_eq!(body["status"], status);
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
    body
}

/// How long a node may take to answer its first PING.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(10);

/// One private `redis-server` child on a free loopback port. Killed when dropped.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        for _ in 0..5 {
            let port = free_port();
            let mut child = tokio::process::Command::new("redis-server")
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server is on PATH");
            let deadline = Instant::now() + NODE_START_TIMEOUT;
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    // Lost the port to someone else between probe and bind: pick another.
                    break;
                }
                if ping(port).await {
                    return Self {
                        port,
                        child: Some(child),
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "redis-server on port {port} did not answer PING"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("could not start a private redis-server");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn label(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the node and waits until it is gone (its port no longer answers).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("redis-server killed");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while ping(self.port).await {
            assert!(
                Instant::now() < deadline,
                "node {} still answers",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Holds `key` on this node as another lock owner would (`SET NX PX`).
    pub async fn hold(&self, key: &str, token: &str) {
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(60_000)
            .query_async(&mut self.connection().await)
            .await
            .unwrap();
        assert_eq!(set.as_deref(), Some("OK"), "{key} was already held");
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.connection().await)
            .await
            .unwrap()
    }

    pub async fn del(&self, key: &str) {
        let _: i64 = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut self.connection().await)
            .await
            .unwrap();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Whether a Redis server on `port` answers PING within 500 ms.
pub async fn ping(port: u16) -> bool {
    let attempt = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Some(pong)) if pong == "PONG"
    )
}

/// The signed effect of a reversal entry on its wallet's balance (for
/// [`TestApp::assert_invariants`]): the opposite of its original's type, the original found by
/// `reverses` among the wallet's earlier entries (a reversal names an entry of its own wallet,
/// never another reversal). A reversal of a debit adds, of a credit subtracts.
pub fn reversal_effect(entry: &Value, earlier: &[Value], amount: Decimal) -> Decimal {
    let original = entry["reverses"]
        .as_str()
        .unwrap_or_else(|| panic!("reversal without `reverses`: {entry}"));
    let original = earlier
        .iter()
        .find(|e| e["id"] == original)
        .unwrap_or_else(|| panic!("reversal of {original}, not an earlier entry: {entry}"));
    assert_eq!(
        entry["hold_id"],
        Value::Null,
        "a reversal names no hold: {entry}"
    );
    match original["type"].as_str().unwrap() {
        "debit" => amount,
        "credit" => -amount,
        other => panic!("a reversal of a {other}: {entry}"),
    }
}

/// Deletes this key's entry in the Redis replay cache (only this test's tenant's key).
pub async fn forget_replay_cache(app: &TestApp, key: &str) {
    let cache_key = idempotency_redis_key(app, "idem", key);
    let mut redis = redis::Client::open(base_settings().redis.urls[0].as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deleted: i64 = redis::cmd("DEL")
        .arg(&cache_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(deleted, 1, "no replay-cache entry for key {key}");
}

/// The Redis key of an idempotency key's cached answer (`kind` "idem") or in-flight marker
/// ("inflight"), as `pipeline::replay_cache` names them.
pub fn idempotency_redis_key(app: &TestApp, kind: &str, key: &str) -> String {
    use sha2::Digest;
    format!(
        "walletd:{kind}:{{{}:{}}}",
        app.tenant_id,
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    )
}

/// Whether an idempotency key's in-flight marker is set in Redis.
pub async fn in_flight_marker_set(app: &TestApp, key: &str) -> bool {
    let mut redis = app.redis().await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(idempotency_redis_key(app, "inflight", key))
        .query_async(&mut redis)
        .await
        .unwrap();
    exists == 1
}

/// The value of the Prometheus sample `name{…}` whose labels include every one of `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = metric == name
                && labels.iter().all(|(k, v)| {
                    label_text
                        .split(',')
                        .any(|pair| pair == format!("{k}=\"{v}\""))
                });
            matches.then(|| value.parse::<f64>().unwrap())
        })
}
