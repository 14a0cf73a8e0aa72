//! The `walletd` command line: serve, migrate, tenant and key management, audit, events.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use diesel_async::{AsyncConnection, AsyncPgConnection};

use crate::auth::admission;
use crate::auth::keys::{self, IssuedKey, Revoked};
use crate::config::Settings;
use crate::db;
use crate::domain::{KeyId, Scope, TenantId, WalletId};
use crate::ledger_audit;
use crate::outbox::tail::{self, TailOptions};
use crate::pipeline;
use crate::redis_nodes::RedisNodes;
use crate::startup::Application;
use crate::telemetry;

/// How many recent `event_id`s `events tail` remembers to drop duplicates (about 10 MB).
const DEDUPE_WINDOW: usize = 100_000;

#[derive(Debug, Parser)]
#[command(
    name = "walletd",
    version,
    about = "Idempotent wallet debit/credit service"
)]
pub struct Cli {
    /// Directory holding default.toml and $WALLETD_ENV.toml; it must exist. Default: ./config
    /// if it exists, else the defaults built into the binary.
    #[arg(long, env = "WALLETD_CONFIG_DIR", global = true)]
    config_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (applies migrations first unless disabled).
    Serve {
        /// Skip migrations at start (also: database.run_migrations_on_start = false).
        #[arg(long)]
        no_migrate: bool,
    },
    /// Create the database if missing and apply migrations.
    Migrate,
    /// Tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Verify ledgers as GET /v1/wallets/{id}/audit does (seq, balances, hash chain, balance =
    /// sum): one JSON line per bad wallet, then a summary line; exits non-zero if any is bad.
    Audit {
        /// Only this tenant's wallets.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this wallet.
        #[arg(long)]
        wallet: Option<String>,
    },
    /// The event stream (`events.stream`).
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Print events as JSON lines: the example consumer (dedupe by event_id; with --group,
    /// ack after printing and take over stale pending entries). See README, Consuming events.
    Tail {
        /// Start after this stream id (`0`: the whole stream). Default: only new events. With
        /// --group, where a new group starts; an existing group resumes where it was.
        #[arg(long)]
        from: Option<String>,
        /// Read as this consumer group (XREADGROUP + XACK); without it, nothing is acked.
        #[arg(long)]
        group: Option<String>,
        /// This consumer's name in the group; keep it stable to resume its own pending
        /// entries at once after a restart. Default: tail-<pid>.
        #[arg(long)]
        consumer: Option<String>,
        /// Exit after printing this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Take over another consumer's entries once pending this long (milliseconds).
        #[arg(long, default_value_t = 30_000)]
        claim_idle_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant and its first API key; prints {"tenant_id","key_id","api_key"}.
    Create {
        name: String,
        /// Comma-separated: wallets:write,wallets:read,ledger:read (default: all three).
        #[arg(long)]
        scopes: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create another API key for a tenant; prints {"tenant_id","key_id","api_key"}.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        scopes: Option<String>,
    },
    /// Revoke a key: it answers 401 from then on (within auth.cache_ttl_ms on every replica).
    /// Revoking a revoked key publishes the revocation again and succeeds.
    Revoke { key_id: String },
}

/// Runs the command line. A failure is printed once, as one plain line on stderr
/// (`error: ` and the cause chain, never a backtrace), and exits 1.
pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, on one line.
fn one_line(error: &anyhow::Error) -> String {
    format!("{error:#}").replace('\n', " ")
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    let settings = match &cli.config_dir {
        Some(dir) => Settings::load(dir)?,
        None => Settings::load_default()?,
    };
    telemetry::init(settings.log.format);
    match cli.command {
        Command::Serve { no_migrate } => {
            if settings.database.run_migrations_on_start && !no_migrate {
                for name in migrate(&settings).await? {
                    tracing::info!(migration = %name, "migration applied");
                }
            }
            Application::build(&settings)?.run_until_stopped().await?;
            Ok(())
        }
        Command::Migrate => {
            let applied = migrate(&settings).await?;
            let mut stdout = std::io::stdout().lock();
            if applied.is_empty() {
                writeln!(stdout, "no pending migrations")?;
            }
            for name in applied {
                writeln!(stdout, "applied migration {name}")?;
            }
            Ok(())
        }
        Command::Tenant {
            command: TenantCommand::Create { name, scopes },
        } => {
            let scopes = parse_scopes(scopes.as_deref())?;
            let mut conn = connect(&settings).await?;
            print_key(&keys::create_tenant(&mut conn, &name, &scopes).await?)
        }
        Command::Key {
            command: KeyCommand::Create { tenant, scopes },
        } => {
            let tenant = TenantId::parse(&tenant).context("--tenant is not a tenant id")?;
            let scopes = parse_scopes(scopes.as_deref())?;
            let mut conn = connect(&settings).await?;
            print_key(&keys::create_key(&mut conn, tenant, &scopes).await?)
        }
        Command::Audit { tenant, wallet } => {
            let tenant = tenant
                .map(|t| TenantId::parse(&t).context("--tenant is not a tenant id"))
                .transpose()?;
            let wallet = wallet
                .map(|w| WalletId::parse(&w).context("--wallet is not a wallet id"))
                .transpose()?;
            let mut conn = connect(&settings).await?;
            let mut stdout = std::io::stdout();
            let summary =
                ledger_audit::verify::audit_wallets(&mut conn, tenant, wallet, &mut stdout).await?;
            writeln!(stdout, "{}", serde_json::to_string(&summary)?)?;
            anyhow::ensure!(
                summary.ok,
                "{} of {} wallets failed the audit",
                summary.bad_wallets,
                summary.wallets
            );
            Ok(())
        }
        Command::Events {
            command:
                EventsCommand::Tail {
                    from,
                    group,
                    consumer,
                    count,
                    claim_idle_ms,
                },
        } => {
            let options = TailOptions {
                from,
                group,
                consumer: consumer.unwrap_or_else(|| format!("tail-{}", std::process::id())),
                count,
                claim_idle: Duration::from_millis(claim_idle_ms),
                dedupe_window: DEDUPE_WINDOW,
            };
            let nodes = RedisNodes::connect(&settings.redis)?;
            tail::run(nodes.primary(), &settings.events.stream, options).await
        }
        Command::Key {
            command: KeyCommand::Revoke { key_id },
        } => {
            let key = KeyId::parse(&key_id).context("not a key id")?;
            let mut conn = connect(&settings).await?;
            match keys::revoke_key(&mut conn, key).await? {
                Revoked::Now => {}
                // A second revoke still publishes: the first one's publish may have failed.
                Revoked::Already => {
                    tracing::info!(%key, "key was already revoked; publishing again")
                }
                Revoked::NoSuchKey => anyhow::bail!("no key {key}"),
            }
            let published = match RedisNodes::connect(&settings.redis) {
                Ok(nodes) => admission::publish_revocation(&nodes, key)
                    .await
                    .map_err(anyhow::Error::from),
                Err(error) => Err(error),
            };
            match published {
                Ok(()) => tracing::info!(%key, "key revoked; refused at once on every replica"),
                Err(error) => tracing::warn!(
                    %key, %error,
                    "key revoked in the database; Redis unreachable, so replicas refuse it within auth.cache_ttl_ms"
                ),
            }
            Ok(())
        }
    }
}

/// Creates the database if missing, applies the migrations, then gives entries written before
/// the hash chain existed their chain (under the same migration lock). Returns the names of
/// the migrations applied.
async fn migrate(settings: &Settings) -> anyhow::Result<Vec<String>> {
    db::create_database_if_missing(&settings.database.url).await?;
    let (mut conn, applied) = db::apply_migrations(&settings.database.url).await?;
    pipeline::chain::backfill(&mut conn).await?;
    Ok(applied)
}

async fn connect(settings: &Settings) -> anyhow::Result<AsyncPgConnection> {
    AsyncPgConnection::establish(&settings.database.url)
        .await
        .with_context(|| format!("connecting to {}", db::redact(&settings.database.url)))
}

fn parse_scopes(text: Option<&str>) -> anyhow::Result<Vec<Scope>> {
    match text {
        None => Ok(Scope::ALL.to_vec()),
        Some(text) => Ok(Scope::parse_list(text)?),
    }
}

fn print_key(key: &IssuedKey) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", serde_json::to_string(key)?)?;
    Ok(())
}
