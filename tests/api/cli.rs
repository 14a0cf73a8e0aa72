//! The real `walletd` binary's operator commands, against a running test app's database.

use std::process::Output;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{POLL_INTERVAL, TestApp, assert_problem, base_settings, new_key, server_url};

/// Runs `walletd <args>` from the crate root with `DATABASE_URL`, bounded to 60 s.
async fn walletd(database_url: &str, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", database_url)
        .env_remove("WALLETD_ENV")
        .env_remove("WALLETD_CONFIG_DIR")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("walletd {args:?} did not finish within 60 s"))
        .unwrap()
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The one JSON line `tenant create` / `key create` print: {"tenant_id","key_id","api_key"}.
fn issued_key(output: &Output) -> Value {
    assert!(output.status.success(), "{}", describe(output));
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout:?}");
    let issued: Value = serde_json::from_str(lines[0]).unwrap();
    let object = issued.as_object().unwrap();
    let mut fields: Vec<&str> = object.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["api_key", "key_id", "tenant_id"]);
    for id in ["tenant_id", "key_id"] {
        let text = issued[id].as_str().unwrap();
        assert_eq!(Uuid::parse_str(text).unwrap().to_string(), text);
    }
    assert!(issued["api_key"].as_str().unwrap().starts_with("wd_"));
    issued
}

async fn tenants_named(app: &TestApp, name: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT count(*) AS n FROM tenants WHERE name = $1")
        .bind::<diesel::sql_types::Text, _>(name)
        .get_result::<Count>(&mut app.db().await)
        .await
        .unwrap()
        .n
}

/// How many of the five core tables exist in `conn`'s database.
async fn core_tables(conn: &mut AsyncPgConnection) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Tables {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(
        "SELECT count(*) AS n FROM information_schema.tables \
         WHERE table_schema = 'public' \
           AND table_name IN ('tenants', 'api_keys', 'wallets', 'idempotency_keys', \
                              'ledger_entries')",
    )
    .get_result::<Tables>(conn)
    .await
    .unwrap()
    .n
}

async fn create_wallet_as(app: &TestApp, api_key: &str) -> reqwest::Response {
    app.post_as(
        api_key,
        "/v1/wallets",
        &new_key(),
        &json!({"currency": "EUR"}),
    )
    .await
}

/// `tenant create acme` prints one JSON line whose key works against the running service (and
/// belongs to a new tenant, isolated from the app's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_create_prints_one_json_line_with_a_working_key() {
    let app = TestApp::spawn().await;
    let output = walletd(&app.database_url, &["tenant", "create", "acme"]).await;
    let issued = issued_key(&output);
    assert_ne!(issued["tenant_id"], app.tenant_id.as_str());
    assert_eq!(tenants_named(&app, "acme").await, 1);
    let api_key = issued["api_key"].as_str().unwrap();

    let response = create_wallet_as(&app, api_key).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let wallet: Value = response.json().await.unwrap();
    let wallet = wallet["id"].as_str().unwrap();
    // All three scopes by default: it can read too.
    assert_eq!(
        app.get_as(api_key, &format!("/v1/wallets/{wallet}"))
            .await
            .status(),
        StatusCode::OK
    );
    // Another tenant's wallet: the app's own key does not see it.
    assert_problem(
        app.get(&format!("/v1/wallets/{wallet}")).await,
        404,
        "wallet_not_found",
    )
    .await;
    // The secret is not stored in plain text anywhere in the database.
    let secret = api_key.rsplit('_').next().unwrap();
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        found: bool,
    }
    let found: Found = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM api_keys k \
           WHERE encode(k.secret_hash, 'hex') = $1 OR row_to_json(k)::text LIKE '%' || $1 || '%') \
         AS found",
    )
    .bind::<diesel::sql_types::Text, _>(secret)
    .get_result(&mut app.db().await)
    .await
    .unwrap();
    assert!(!found.found);
}

/// `--scopes wallets:read` gives a read-only key: 403 on POST, reads allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_create_with_read_scope_gives_a_read_only_key() {
    let app = TestApp::spawn().await;
    let output = walletd(
        &app.database_url,
        &["tenant", "create", "readers", "--scopes", "wallets:read"],
    )
    .await;
    let issued = issued_key(&output);
    let api_key = issued["api_key"].as_str().unwrap();

    assert_problem(create_wallet_as(&app, api_key).await, 403, "forbidden").await;
    // Reading is allowed (an unknown wallet is 404, not 403).
    assert_problem(
        app.get_as(api_key, &format!("/v1/wallets/{}", Uuid::now_v7()))
            .await,
        404,
        "wallet_not_found",
    )
    .await;
}

/// `key create --tenant <id>` issues another working key for the same tenant; an unknown
/// tenant or scope fails with a non-zero exit and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_create_adds_a_key_to_an_existing_tenant() {
    let app = TestApp::spawn().await;
    let first = issued_key(&walletd(&app.database_url, &["tenant", "create", "acme"]).await);
    let tenant = first["tenant_id"].as_str().unwrap();
    let response = create_wallet_as(&app, first["api_key"].as_str().unwrap()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let wallet: Value = response.json().await.unwrap();
    let wallet = wallet["id"].as_str().unwrap();

    let second =
        issued_key(&walletd(&app.database_url, &["key", "create", "--tenant", tenant]).await);
    assert_eq!(second["tenant_id"], tenant);
    assert_ne!(second["key_id"], first["key_id"]);
    assert_ne!(second["api_key"], first["api_key"]);
    let second_key = second["api_key"].as_str().unwrap();
    // Same tenant: it sees the wallet the first key created, and can write.
    assert_eq!(
        app.get_as(second_key, &format!("/v1/wallets/{wallet}"))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        create_wallet_as(&app, second_key).await.status(),
        StatusCode::CREATED
    );

    let reader = issued_key(
        &walletd(
            &app.database_url,
            &[
                "key",
                "create",
                "--tenant",
                tenant,
                "--scopes",
                "wallets:read",
            ],
        )
        .await,
    );
    let reader_key = reader["api_key"].as_str().unwrap();
    assert_problem(create_wallet_as(&app, reader_key).await, 403, "forbidden").await;
    assert_eq!(
        app.get_as(reader_key, &format!("/v1/wallets/{wallet}"))
            .await
            .status(),
        StatusCode::OK
    );

    let unknown_tenant = Uuid::now_v7().to_string();
    let output = walletd(
        &app.database_url,
        &["key", "create", "--tenant", &unknown_tenant],
    )
    .await;
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(output.stdout.is_empty(), "{}", describe(&output));
}

/// `key revoke <key_id>`: that key answers 401 on the very next request on every replica
/// even though each had just cached it (API.md allows 1 s), stays refused once the auth cache
/// entries have lapsed, the tenant's other keys keep working, and revoking twice fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_revoke_locks_the_key_out_at_once() {
    let app = TestApp::spawn().await;
    let replica = app.spawn_replica(|_| {}).await;
    let first = issued_key(&walletd(&app.database_url, &["tenant", "create", "acme"]).await);
    let tenant = first["tenant_id"].as_str().unwrap();
    let second =
        issued_key(&walletd(&app.database_url, &["key", "create", "--tenant", tenant]).await);
    let (revoked, kept) = (
        second["api_key"].as_str().unwrap(),
        first["api_key"].as_str().unwrap(),
    );
    let response = create_wallet_as(&app, kept).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let wallet: Value = response.json().await.unwrap();
    let path = format!("/v1/wallets/{}", wallet["id"].as_str().unwrap());
    // Warm both replicas' auth caches for the key about to be revoked.
    assert_eq!(app.get_as(revoked, &path).await.status(), StatusCode::OK);
    assert_eq!(
        replica.get_as(revoked, &path).await.status(),
        StatusCode::OK
    );
    let cached = Instant::now();

    let output = walletd(
        &app.database_url,
        &["key", "revoke", second["key_id"].as_str().unwrap()],
    )
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    assert!(output.stdout.is_empty(), "{}", describe(&output));
    // The key is still in both auth caches, but the revocation marker in Redis refuses it on
    // the very next request, on either replica.
    for server in [&app, &replica] {
        let rejected = server.get_as(revoked, &path).await;
        assert_eq!(rejected.headers()["www-authenticate"], "Bearer");
        assert_problem(rejected, 401, "unauthorized").await;
    }
    // Writes too, and it stays revoked on both, also once the cached entries have lapsed and
    // the key is looked up in the database again.
    assert_problem(create_wallet_as(&app, revoked).await, 401, "unauthorized").await;
    let cache_ttl = Duration::from_millis(base_settings().auth.cache_ttl_ms);
    while cached.elapsed() <= cache_ttl + POLL_INTERVAL {
        for server in [&app, &replica] {
            assert_problem(server.get_as(revoked, &path).await, 401, "unauthorized").await;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    for server in [&app, &replica] {
        assert_problem(server.get_as(revoked, &path).await, 401, "unauthorized").await;
    }

    // The tenant's other key and the app's own key keep working.
    assert_eq!(app.get_as(kept, &path).await.status(), StatusCode::OK);
    assert_eq!(replica.get_as(kept, &path).await.status(), StatusCode::OK);
    assert_eq!(
        create_wallet_as(&app, kept).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        create_wallet_as(&app, &app.api_key).await.status(),
        StatusCode::CREATED
    );

    // Revoking again succeeds (and publishes the revocation again); an unknown key fails.
    let output = walletd(
        &app.database_url,
        &["key", "revoke", second["key_id"].as_str().unwrap()],
    )
    .await;
    assert!(output.status.success(), "{}", describe(&output));
    let output = walletd(
        &app.database_url,
        &["key", "revoke", &Uuid::now_v7().to_string()],
    )
    .await;
    assert!(!output.status.success(), "{}", describe(&output));
}

/// `migrate` on a database that does not exist yet (named `walletd_t_*`, so the test script
/// drops it afterwards) creates it and applies the migrations;
/// running it again is a no-op.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_a_missing_database_and_applies_migrations() {
    let name = format!("walletd_t_{}", Uuid::new_v4().simple());
    let url = format!("{}/{name}", server_url());

    let output = walletd(&url, &["migrate"]).await;
    assert!(output.status.success(), "{}", describe(&output));
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
    assert_eq!(core_tables(&mut conn).await, 5);
    conn.batch_execute("SELECT id, balance, last_seq FROM wallets LIMIT 1")
        .await
        .unwrap();

    let again = walletd(&url, &["migrate"]).await;
    assert!(again.status.success(), "{}", describe(&again));
    assert_eq!(core_tables(&mut conn).await, 5);

    // The new database is usable by the other commands.
    issued_key(&walletd(&url, &["tenant", "create", "fresh"]).await);
    // Left for scripts/test.sh, which drops every walletd_t_* database after the run (a
    // DROP DATABASE here would force a checkpoint on the shared server mid-suite).
}

/// An unknown scope is refused with a non-zero exit, nothing on stdout, and no tenant created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_scope_fails_with_a_non_zero_exit() {
    let app = TestApp::spawn().await;
    for scopes in ["wallets:admin", "wallets:read,superuser", ""] {
        let output = walletd(
            &app.database_url,
            &["tenant", "create", "bad-scopes", "--scopes", scopes],
        )
        .await;
        assert!(
            !output.status.success(),
            "{scopes:?}: {}",
            describe(&output)
        );
        assert!(output.stdout.is_empty(), "{}", describe(&output));
        if !scopes.is_empty() {
            assert!(
                String::from_utf8_lossy(&output.stderr).contains("unknown scope"),
                "{}",
                describe(&output)
            );
        }
    }
    assert_eq!(tenants_named(&app, "bad-scopes").await, 0);

    let output = walletd(
        &app.database_url,
        &[
            "key",
            "create",
            "--tenant",
            &app.tenant_id,
            "--scopes",
            "wallets:write,root",
        ],
    )
    .await;
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(output.stdout.is_empty(), "{}", describe(&output));
}

/// Replicas starting together may all migrate: they take turns (an advisory lock), and every
/// one of them succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_take_turns() {
    // The database exists first, so the race is over the migrations themselves.
    let fresh = format!("{}/walletd_t_{}", server_url(), Uuid::new_v4().simple());
    walletd::db::create_database_if_missing(&fresh)
        .await
        .unwrap();
    let outputs =
        futures_util::future::join_all((0..3).map(|_| walletd(&fresh, &["migrate"]))).await;
    for output in &outputs {
        assert!(output.status.success(), "{}", describe(output));
    }
    let mut conn = AsyncPgConnection::establish(&fresh).await.unwrap();
    assert_eq!(core_tables(&mut conn).await, 5);
}

/// `walletd <args>` as [`walletd`] runs it, with `envs` added.
async fn walletd_with_env(database_url: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_walletd"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("DATABASE_URL", database_url)
        .env_remove("WALLETD_ENV")
        .env_remove("WALLETD_CONFIG_DIR")
        .envs(envs.iter().copied())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("walletd {args:?} did not finish within 60 s"))
        .unwrap()
}

/// The migration directories, oldest first (their names are what `migrate` reports).
fn migration_names() -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.starts_with('.'))
            .collect();
    names.sort();
    names
}

/// `migrate` says what it did on stdout: one `applied migration <name>` line per migration it
/// applied, oldest first, or `no pending migrations`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_reports_the_migrations_it_applied() {
    let url = format!("{}/walletd_t_{}", server_url(), Uuid::new_v4().simple());
    let output = walletd(&url, &["migrate"]).await;
    assert!(output.status.success(), "{}", describe(&output));
    let expected: Vec<String> = migration_names()
        .iter()
        .map(|name| format!("applied migration {name}"))
        .collect();
    assert!(!expected.is_empty());
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        expected,
        "{}",
        describe(&output)
    );

    let again = walletd(&url, &["migrate"]).await;
    assert!(again.status.success(), "{}", describe(&again));
    assert_eq!(
        String::from_utf8(again.stdout.clone()).unwrap(),
        "no pending migrations\n",
        "{}",
        describe(&again)
    );
}

/// A configuration directory that does not exist is an error (not a silent fall back to the
/// built-in defaults): a non-zero exit and one plain line on stderr, even with
/// `RUST_BACKTRACE=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_config_dir_fails_with_one_error_line() {
    let url = format!("{}/walletd_t_{}", server_url(), Uuid::new_v4().simple());
    for args in [
        ["--config-dir", "/nonexistent/walletd", "migrate"].as_slice(),
        ["migrate", "--config-dir", "/nonexistent/walletd"].as_slice(),
    ] {
        let output = walletd_with_env(&url, args, &[("RUST_BACKTRACE", "1")]).await;
        assert!(!output.status.success(), "{}", describe(&output));
        assert!(output.stdout.is_empty(), "{}", describe(&output));
        let stderr = String::from_utf8(output.stderr.clone()).unwrap();
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", describe(&output));
        assert!(lines[0].starts_with("error: "), "{}", describe(&output));
        assert!(
            lines[0].contains("/nonexistent/walletd"),
            "{}",
            describe(&output)
        );
    }
    let from_env = walletd_with_env(
        &url,
        &["migrate"],
        &[("WALLETD_CONFIG_DIR", "/nonexistent")],
    )
    .await;
    assert!(!from_env.status.success(), "{}", describe(&from_env));
}

/// A command that fails after logging started prints its error once, plainly: no second copy
/// through the log, no backtrace even with `RUST_BACKTRACE=1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_prints_its_error_once_without_a_backtrace() {
    let unknown = Uuid::now_v7().to_string();
    let app = TestApp::spawn().await;
    for (url, args, says) in [
        (
            app.database_url.as_str(),
            vec!["key", "revoke", unknown.as_str()],
            "no key",
        ),
        (
            "postgres://postgres@127.0.0.1:1/nowhere",
            vec!["migrate"],
            "127.0.0.1:1",
        ),
    ] {
        let output =
            walletd_with_env(url, &args, &[("RUST_BACKTRACE", "1"), ("RUST_LOG", "info")]).await;
        assert!(!output.status.success(), "{}", describe(&output));
        let stderr = String::from_utf8(output.stderr.clone()).unwrap();
        assert_eq!(stderr.matches(says).count(), 1, "{}", describe(&output));
        let error_lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(error_lines.len(), 1, "{}", describe(&output));
        assert!(
            error_lines[0].starts_with("error: "),
            "{}",
            describe(&output)
        );
        assert!(
            !stderr.contains("backtrace") && !stderr.contains("Backtrace"),
            "{}",
            describe(&output)
        );
    }
}
