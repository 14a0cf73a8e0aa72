//! The Postgres pool, migrations and database creation.
//!
//! Every pooled connection gets `statement_timeout`, `lock_timeout` and
//! `idle_in_transaction_session_timeout` from the settings, so no query, row-lock wait or
//! abandoned transaction can hold a request (or a row) for longer than configured.

pub mod errors;
pub mod models;
pub mod pipelined;
pub mod prepared;
pub mod routes;
pub mod schema;

use std::time::{Duration, Instant};

use anyhow::Context;
use diesel_async::pooled_connection::deadpool::{Object, Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::{
    AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, SimpleAsyncConnection,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;

use crate::config::{DatabaseSettings, ms};

pub type PgPool = Pool<AsyncPgConnection>;
pub type PgConn = AsyncPgConnection;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Advisory lock id serialising `walletd migrate` / `serve` across replicas ("walletd" in hex).
const MIGRATION_LOCK_ID: i64 = 0x0077_616c_6c65_7464;

/// Builds the pool. Connections are made lazily, so this succeeds while Postgres is down;
/// requests then answer 503 until it is back.
pub fn build_pool(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let session_setup = session_setup_sql(settings);
    let connect_timeout = ms(settings.connect_timeout_ms);
    let mut manager_config = ManagerConfig::default();
    // A checkout costs no round trip: a pooled connection is reused unless it is closed (the
    // client notices when Postgres ends the session) or left inside a transaction. Verified
    // would add a `SELECT 1` to every checkout, two per debit.
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        let session_setup = session_setup.clone();
        async move { establish(&url, connect_timeout, &session_setup).await }.boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        &settings.url,
        manager_config,
    );
    let wait = ms(settings.pool_wait_timeout_ms);
    Pool::builder(manager)
        .max_size(settings.pool_max_size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(connect_timeout))
        .recycle_timeout(Some(connect_timeout))
        .build()
        .context("building the Postgres pool")
}

/// A pooled connection, its wait observed in `walletd_db_pool_wait_seconds{result}` (the
/// pipeline's checkouts go through here). Bounded by `database.pool_wait_timeout_ms`.
pub async fn checkout(pool: &PgPool) -> Result<Object<PgConn>, PoolError> {
    let started = Instant::now();
    let checked_out = pool.get().await;
    let result = match &checked_out {
        Ok(_) => "ok",
        Err(PoolError::Timeout(_)) => "timeout",
        Err(_) => "error",
    };
    crate::metrics::observe_pool_wait(started.elapsed(), result);
    checked_out
}

fn session_setup_sql(settings: &DatabaseSettings) -> String {
    format!(
        "SET statement_timeout = {}; SET lock_timeout = {}; \
         SET idle_in_transaction_session_timeout = {}; SET TIME ZONE 'UTC';",
        settings.statement_timeout_ms,
        settings.lock_timeout_ms,
        settings.idle_in_transaction_session_timeout_ms
    )
}

async fn establish(
    url: &str,
    connect_timeout: Duration,
    session_setup: &str,
) -> diesel::ConnectionResult<AsyncPgConnection> {
    let timed_out = || diesel::ConnectionError::BadConnection("connect timed out".into());
    let url = with_socket_bounds(url);
    let mut conn = tokio::time::timeout(connect_timeout, AsyncPgConnection::establish(&url))
        .await
        .map_err(|_| timed_out())??;
    conn.batch_execute(session_setup)
        .await
        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    Ok(conn)
}

/// Socket-level bounds for pooled connections, unless the URL sets its own: a connection whose
/// peer vanished without a reset (a failover, a partition) fails within seconds instead of
/// stalling every request that checks it out until the kernel gives up (about 15 minutes).
/// The pool's cheap recycle does not probe connections, so this is what finds the dead ones.
/// (`tcp_user_timeout` bounds unacknowledged data; keepalives probe idle connections.)
const SOCKET_BOUNDS: [(&str, &str); 4] = [
    ("tcp_user_timeout", "10"),
    ("keepalives_idle", "10"),
    ("keepalives_interval", "5"),
    ("keepalives_retries", "3"),
];

fn with_socket_bounds(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // The key=value form: later keys win, so append only the missing ones.
        let mut text = url.to_owned();
        for (key, value) in SOCKET_BOUNDS {
            if !url.contains(key) {
                text.push_str(&format!(" {key}={value}"));
            }
        }
        return text;
    };
    let present: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
    for (key, value) in SOCKET_BOUNDS {
        if !present.iter().any(|k| k == key) {
            parsed.query_pairs_mut().append_pair(key, value);
        }
    }
    parsed.into()
}

/// Applies pending migrations. Needs tokio's multi-threaded runtime (the harness blocks in
/// place), so it runs before the HTTP server starts. Returns the connection, still holding the
/// migration lock, for the data steps that follow (see `pipeline::chain`).
pub async fn run_migrations(url: &str) -> anyhow::Result<AsyncPgConnection> {
    Ok(apply_migrations(url).await?.0)
}

/// [`run_migrations`], also naming the migrations this call applied (directory names such as
/// `2026-11-23-000001_core`, oldest first; empty when none was pending).
pub async fn apply_migrations(url: &str) -> anyhow::Result<(AsyncPgConnection, Vec<String>)> {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .with_context(|| format!("connecting to {} to migrate", redact(url)))?;
    // Replicas starting together must not migrate concurrently: they take turns under a
    // session advisory lock (released when this connection closes, whatever happens).
    conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"))
        .await
        .context("waiting for the migration lock")?;
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| anyhow::anyhow!("applying migrations: {e}"))?;
    let names = migration_names()?;
    let applied: Vec<String> = applied
        .iter()
        .map(|version| {
            let version = version.to_string();
            names
                .iter()
                .find(|(v, _)| *v == version)
                .map_or_else(|| version.clone(), |(_, name)| name.clone())
        })
        .collect();
    Ok((harness.into_inner(), applied))
}

/// Every embedded migration: (version, directory name).
fn migration_names() -> anyhow::Result<Vec<(String, String)>> {
    use diesel::migration::MigrationSource;
    let all = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(|e| anyhow::anyhow!("reading embedded migrations: {e}"))?;
    Ok(all
        .iter()
        .map(|m| (m.name().version().to_string(), m.name().to_string()))
        .collect())
}

/// True when every embedded migration has been applied (used by `/readyz`).
pub async fn migrations_applied(conn: &mut PgConn) -> anyhow::Result<bool> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    diesel::table! {
        __diesel_schema_migrations (version) {
            version -> Text,
        }
    }
    let applied: Vec<String> = __diesel_schema_migrations::table
        .select(__diesel_schema_migrations::version)
        .load(conn)
        .await?;
    Ok(embedded_versions()?.iter().all(|v| applied.contains(v)))
}

/// True once every ledger entry carries its hash chain (`walletd migrate` validated the
/// constraint): before that, old entries cannot be rendered and their wallets take no entries.
pub async fn chain_complete(conn: &mut PgConn) -> anyhow::Result<bool> {
    use diesel::OptionalExtension;
    use diesel::sql_types::Bool;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Validated {
        #[diesel(sql_type = Bool)]
        validated: bool,
    }
    let row: Option<Validated> = diesel::sql_query(
        "SELECT convalidated AS validated FROM pg_constraint \
         WHERE conname = 'ledger_entries_hash_shape' AND conrelid = 'ledger_entries'::regclass",
    )
    .get_result(conn)
    .await
    .optional()?;
    Ok(row.is_some_and(|r| r.validated))
}

/// True when the server takes writes (not a standby, not read-only), for `/readyz`.
pub async fn accepts_writes(conn: &mut PgConn) -> anyhow::Result<bool> {
    use diesel::sql_types::Bool;
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Writable {
        #[diesel(sql_type = Bool)]
        writable: bool,
    }
    let row: Writable = diesel::sql_query(
        "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off' AS writable",
    )
    .get_result(conn)
    .await?;
    Ok(row.writable)
}

fn embedded_versions() -> anyhow::Result<Vec<String>> {
    use diesel::migration::MigrationSource;
    let all = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .map_err(|e| anyhow::anyhow!("reading embedded migrations: {e}"))?;
    Ok(all.iter().map(|m| m.name().version().to_string()).collect())
}

/// Creates the database named in `url` if it does not exist, connecting to the server's
/// `postgres` database to do so.
pub async fn create_database_if_missing(url: &str) -> anyhow::Result<()> {
    let mut parsed = url::Url::parse(url).context("DATABASE_URL is not a URL")?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    anyhow::ensure!(!name.is_empty(), "DATABASE_URL names no database");
    anyhow::ensure!(
        name.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "database name {name:?} may contain only letters, digits, '_' and '-'"
    );
    parsed.set_path("/postgres");
    let mut conn = AsyncPgConnection::establish(parsed.as_str())
        .await
        .with_context(|| format!("connecting to {}", redact(parsed.as_str())))?;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    let found: Exists =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<diesel::sql_types::Text, _>(&name)
            .get_result(&mut conn)
            .await?;
    if !found.exists {
        conn.batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .or_else(|e| match e {
                // Another process created it between our check and our CREATE.
                diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                ) => Ok(()),
                other => Err(other),
            })
            .with_context(|| format!("creating database {name}"))?;
        tracing::info!(database = %name, "database created");
    }
    Ok(())
}

/// A URL with its password replaced, fit for logs and error messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "<unparsable url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::with_socket_bounds;

    #[test]
    fn socket_bounds_are_added_unless_the_url_sets_them() {
        assert_eq!(
            with_socket_bounds("postgres://u@h:5432/db?keepalives_idle=30"),
            "postgres://u@h:5432/db?keepalives_idle=30&tcp_user_timeout=10\
             &keepalives_interval=5&keepalives_retries=3"
        );
        assert_eq!(
            with_socket_bounds("host=h dbname=db tcp_user_timeout=2"),
            "host=h dbname=db tcp_user_timeout=2 keepalives_idle=10 keepalives_interval=5 \
             keepalives_retries=3"
        );
    }
}
