//! Chaos proof for walletd, run by `scripts/chaos.sh` (and CI).
//!
//! Starts its own Postgres cluster (in a temp dir), three `redis-server`s and two replicas of
//! `walletd serve` on free loopback ports, drives bounded concurrent debits and credits with
//! idempotency keys (each request and each retry to a random replica), and injects one fault
//! per phase: one Redis node stopped, all Redis stopped, a Postgres restart, a SIGKILL and
//! restart of replica 0, a SIGSTOP of replica 0 longer than the lock TTL (the other replica
//! takes the expired locks meanwhile). Load keeps running during each fault and after it
//! heals. Once every replica reports `ready` again (polled, bounded), every request without a
//! decision is retried with its same key, path and body. A decision is the route's 201 or a
//! stored decline (422 `insufficient_funds`, `currency_mismatch`, `wallet_closed`, 404
//! `wallet_not_found`); anything that is not a decision and not a bug means "unanswered,
//! nothing stored": no answer (connection refused or reset, the client's timeout, a cut-off
//! body), 408 (e.g. the server was stopped while reading the body), 409 (the key's first
//! request is still running), 429 and any 5xx. Any other status is a violation (a 400 to a
//! valid request, 422 `idempotency_key_reused`, ...), and so is every 500, although it is
//! retried too so that its key is still held to exactly once. Then the ledger is checked
//! through the API alone:
//!
//! - every 201 ever acknowledged is in its wallet's ledger exactly once (else `lost`);
//! - no idempotency key has two ledger entries (else `duplicated`);
//! - every ledger entry belongs to a request we sent whose decided answer is that 201;
//! - every decided answer of a key (201 or stored decline) is byte-identical, at most one of
//!   them was executed (not `Idempotent-Replayed`), and a replay sent now returns the same bytes;
//! - `GET /v1/transactions/{id}` shows what the 201 said;
//! - each wallet: `seq` 1..n without gaps, `balance_before` chains onto the previous
//!   `balance_after` (0 first), `balance_after = balance_before ∓ amount`, balance = the sum of
//!   its ledger = the last `balance_after`, and `balance >= -overdraft_limit`.
//!
//! One summary line per fault on stdout, diagnostics on stderr. Exit status 0 when everything
//! holds, 1 on any violation, 2 when the harness itself failed (a process would not start).
//! Every child process, the Postgres cluster and the temp dir are cleaned up on every exit path
//! (error, panic, SIGINT/SIGTERM). The shared Postgres (5432) and Redis (6379) are never used.
//!
//! Usage: `chaos [path/to/walletd]` (default: `$WALLETD_BIN`, else the `walletd` binary of the
//! target dir this example was built into). `CHAOS_LOG_DIR=dir` keeps the walletd and Postgres
//! logs there. Postgres binaries: `$CHAOS_PG_BINDIR`, else `pg_config --bindir`, else the
//! newest `/usr/lib/postgresql/*/bin`.
#![allow(clippy::print_stdout)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use futures_util::StreamExt;
use futures_util::future::join_all;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// Wallets under load (all EUR, overdraft 0).
const WALLETS: usize = 8;
/// What each wallet is funded with at setup.
const FUNDING: &str = "40.00";
/// Concurrent clients.
const WORKERS: usize = 16;
/// walletd replicas sharing Postgres and Redis; every request (and every retry) goes to a
/// random one. The walletd faults hit replica 0, so that while it is stopped past its lock TTL
/// the other replica really can take its wallets' locks (within one process a per-wallet queue
/// serialises requests, so a lone replica could never observe the expiry).
const REPLICAS: usize = 2;
/// Client-side bound on one request; an answer that does not come by then is "unanswered".
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Load before the fault, during it, and after it healed.
const LOAD_BEFORE: Duration = Duration::from_millis(2500);
const FAULT_FOR: Duration = Duration::from_secs(4);
const LOAD_AFTER: Duration = Duration::from_secs(2);
/// How long Postgres stays down, walletd stays dead, walletd stays stopped.
const POSTGRES_DOWN_FOR: Duration = Duration::from_secs(3);
const WALLETD_DEAD_FOR: Duration = Duration::from_secs(1);
const SIGSTOP_FOR: Duration = Duration::from_millis(2500);

/// walletd settings for the run: a short lock TTL (the SIGSTOP outlives it) and a short
/// idempotency lease, so crashed requests free their keys fast. walletd refuses to start unless
/// lock wait < request deadline < lease (the deadline bounds everything a request waits for,
/// statements included), so the deadline is set too: its default (10 s) exceeds this lease.
const LOCK_TTL_MS: u64 = 1000;
const LOCK_WAIT_MS_MAX: u64 = 500;
const STATEMENT_TIMEOUT_MS: u64 = 2000;
const DEADLINE_MS: u64 = 2500;
const LEASE_MS: u64 = 3000;
const _: () = assert!(LOCK_WAIT_MS_MAX < DEADLINE_MS && DEADLINE_MS < LEASE_MS);

/// Retry pass after each phase: per-request attempts and an overall bound.
const RETRY_ATTEMPTS: u32 = 40;
const RETRY_PASS_MAX: Duration = Duration::from_secs(45);
/// Decided requests re-sent per phase to prove their replay is byte-identical (besides every
/// request that saw a fault, which are all re-sent).
const REPLAY_SAMPLE: usize = 100;
/// How long the replicas may take to report `ready` after a fault healed.
const READY_MAX: Duration = Duration::from_secs(30);
/// How long a GET of the checks is re-sent while it meets non-answers.
const GET_RETRY_MAX: Duration = Duration::from_secs(20);
/// Bounds on starting things.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The whole run; `scripts/chaos.sh` adds `timeout 300` around it.
const RUN_MAX: Duration = Duration::from_secs(280);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    RedisOneDown,
    RedisAllDown,
    PostgresRestart,
    WalletdSigkill,
    WalletdSigstop,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::RedisOneDown,
        Fault::RedisAllDown,
        Fault::PostgresRestart,
        Fault::WalletdSigkill,
        Fault::WalletdSigstop,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::RedisOneDown => "redis_one_down",
            Fault::RedisAllDown => "redis_all_down",
            Fault::PostgresRestart => "postgres_restart",
            Fault::WalletdSigkill => "walletd_sigkill",
            Fault::WalletdSigstop => "walletd_sigstop",
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                eprintln!("chaos: cannot listen for SIGTERM: {error}");
                return ExitCode::from(2);
            }
        };
    // Dropping `run` (on a signal or the overall bound) drops the cluster: children are
    // killed, Postgres is stopped and the temp dir removed.
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(RUN_MAX, run()) => match outcome {
            Ok(outcome) => outcome,
            Err(_) => Err(anyhow!("the run exceeded {RUN_MAX:?}")),
        },
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (SIGINT)")),
        _ = terminate.recv() => Err(anyhow!("terminated (SIGTERM)")),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("chaos: FAILED (see above)");
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("chaos: harness error: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// The whole run; `Ok(false)` when a check failed.
async fn run() -> anyhow::Result<bool> {
    let started = Instant::now();
    let walletd_bin = walletd_binary()?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut cluster = Cluster::start(&walletd_bin, &root).await?;
    let ports = |ports: Vec<u16>| {
        ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(" :")
    };
    eprintln!(
        "chaos: cluster up in {:.1} s in {} (postgres :{}, redis :{}, walletd :{})",
        started.elapsed().as_secs_f64(),
        cluster.tmp.0.display(),
        cluster.postgres.port,
        ports(cluster.redis.iter().map(|r| r.port).collect()),
        ports(cluster.walletd.iter().map(|w| w.port).collect()),
    );

    let bases: Vec<String> = cluster.walletd.iter().map(Walletd::base_url).collect();
    let api = Api::new(bases, &cluster.api_key)?;
    let book: Shared = Arc::new(Mutex::new(Book::new()));
    let wallets = setup_wallets(&api, &book).await?;
    let mut checker = Checker::default();
    let setup_report = checker.check(&api, &book, 0, &wallets).await?;
    let mut all_ok = setup_report.ok();
    if !all_ok {
        eprintln!("chaos: setup already fails the checks:");
        setup_report.print_problems();
    }

    for (n, fault) in Fault::ALL.into_iter().enumerate() {
        let phase = n + 1;
        let phase_started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                tokio::spawn(worker(
                    api.clone(),
                    book.clone(),
                    phase,
                    stop.clone(),
                    wallets.clone(),
                ))
            })
            .collect();

        tokio::time::sleep(LOAD_BEFORE).await;
        let injected = phase_started.elapsed();
        let injection = cluster.inject(fault).await;
        let healed = phase_started.elapsed();
        if injection.is_ok() {
            tokio::time::sleep(LOAD_AFTER).await;
        }
        stop.store(true, Ordering::Relaxed);
        for handle in join_all(workers).await {
            if let Err(error) = handle {
                bail!("a load worker failed: {error}");
            }
        }
        injection.with_context(|| format!("injecting {}", fault.name()))?;
        lock(&book).pending.clear();
        let load_done = phase_started.elapsed();

        let readiness = cluster.wait_ready().await;
        let ready = phase_started.elapsed();
        let retried_now = retry_unresolved(&api, &book).await;
        let retry_done = phase_started.elapsed();
        let mut report = checker.check(&api, &book, phase, &wallets).await?;
        let checked = phase_started.elapsed();
        if let Err(problem) = readiness {
            report.problems.push(problem);
        }

        let stats = lock(&book).phase_stats(phase);
        println!(
            "chaos fault={} requests={} acknowledged={} declined={} retried={} internal_errors={} unresolved={} lost={} duplicated={} invariants={}",
            fault.name(),
            stats.requests,
            stats.acknowledged,
            stats.declined,
            stats.retried,
            stats.internal_errors,
            report.unresolved,
            report.lost,
            report.duplicated,
            if report.problems.is_empty() {
                "ok".to_owned()
            } else {
                format!("failed:{}", report.problems.len())
            },
        );
        eprintln!(
            "chaos:   {}: answers (with the replay checks) {}; fault at {:.1} s, healed at {:.1} s, load stopped at {:.1} s, \
             all replicas ready at {:.1} s, retry pass ({retried_now} requests) done at {:.1} s, checks done at {:.1} s",
            fault.name(),
            stats.histogram,
            injected.as_secs_f64(),
            healed.as_secs_f64(),
            load_done.as_secs_f64(),
            ready.as_secs_f64(),
            retry_done.as_secs_f64(),
            checked.as_secs_f64(),
        );
        if !report.ok() {
            all_ok = false;
            report.print_problems();
        }
    }

    if !all_ok {
        cluster.print_log_tails();
    }
    cluster.keep_logs();
    eprintln!(
        "chaos: {} in {:.1} s",
        if all_ok { "all checks hold" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    Ok(all_ok)
}

fn walletd_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::args_os().nth(1) {
        Some(arg) => PathBuf::from(arg),
        None => match std::env::var_os("WALLETD_BIN") {
            Some(env) => PathBuf::from(env),
            // target/<profile>/examples/chaos -> target/<profile>/walletd
            None => std::env::current_exe()?
                .parent()
                .and_then(Path::parent)
                .context("cannot locate the target dir")?
                .join("walletd"),
        },
    };
    ensure!(
        path.is_file(),
        "walletd binary {} not found (pass it as the first argument)",
        path.display()
    );
    Ok(std::fs::canonicalize(&path)?)
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// Everything the run started. Fields drop in declaration order: walletd and Redis are killed,
/// then Postgres is stopped, then the temp dir is removed.
struct Cluster {
    walletd: Vec<Walletd>,
    redis: Vec<RedisNode>,
    postgres: Postgres,
    api_key: String,
    tmp: TempDir,
}

impl Cluster {
    async fn start(walletd_bin: &Path, root: &Path) -> anyhow::Result<Self> {
        let tmp = TempDir::create()?;
        let ports = free_ports(4 + REPLICAS)?;
        let mut postgres = Postgres::init(&tmp.0, ports[0]).await?;
        postgres.start().await?;
        let mut redis: Vec<RedisNode> = ports[1..4]
            .iter()
            .map(|&port| RedisNode::new(port, &tmp.0))
            .collect();
        for node in &mut redis {
            node.start().await?;
        }
        let redis_urls: Vec<String> = redis
            .iter()
            .map(|r| format!("redis://127.0.0.1:{}", r.port))
            .collect();
        let mut walletd = Vec::new();
        for (replica, &port) in ports[4..].iter().enumerate() {
            walletd.push(Walletd::new(
                walletd_bin,
                root,
                port,
                &postgres,
                &redis_urls,
                tmp.0.join(format!("walletd-{replica}.log")),
            )?);
        }
        walletd[0].cli(&["migrate"]).await?;
        let tenant = walletd[0].cli(&["tenant", "create", "chaos"]).await?;
        let api_key = tenant
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find_map(|v| v["api_key"].as_str().map(str::to_owned))
            .with_context(|| format!("no api_key in `walletd tenant create` output: {tenant}"))?;
        for replica in &mut walletd {
            replica.start().await?;
        }
        Ok(Self {
            walletd,
            redis,
            postgres,
            api_key,
            tmp,
        })
    }

    /// Injects `fault` for about `FAULT_FOR` (load keeps running) and heals it.
    async fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::RedisOneDown => {
                // The first node: it also holds the replay cache and rate-limit counters.
                self.redis[0].stop().await?;
                tokio::time::sleep(FAULT_FOR).await;
                self.redis[0].start().await?;
            }
            Fault::RedisAllDown => {
                for node in &mut self.redis {
                    node.stop().await?;
                }
                tokio::time::sleep(FAULT_FOR).await;
                for node in &mut self.redis {
                    node.start().await?;
                }
            }
            Fault::PostgresRestart => {
                self.postgres.stop_immediate().await?;
                tokio::time::sleep(POSTGRES_DOWN_FOR).await;
                self.postgres.start().await?;
                tokio::time::sleep(FAULT_FOR.saturating_sub(POSTGRES_DOWN_FOR)).await;
            }
            Fault::WalletdSigkill => {
                self.walletd[0].sigkill().await;
                tokio::time::sleep(WALLETD_DEAD_FOR).await;
                self.walletd[0].start().await?;
                tokio::time::sleep(FAULT_FOR.saturating_sub(WALLETD_DEAD_FOR)).await;
            }
            Fault::WalletdSigstop => {
                self.walletd[0].signal("STOP")?;
                tokio::time::sleep(SIGSTOP_FOR).await;
                self.walletd[0].signal("CONT")?;
                tokio::time::sleep(FAULT_FOR.saturating_sub(SIGSTOP_FOR)).await;
            }
        }
        Ok(())
    }

    /// Polls every replica's `/readyz` until it says `ready` (Postgres up and migrated, every
    /// Redis node up), so that the retry pass and the checks start on a healed system rather
    /// than after a fixed sleep. Bounded by `READY_MAX`; `Err` says which replica was not.
    async fn wait_ready(&self) -> Result<Duration, String> {
        let started = Instant::now();
        for (replica, walletd) in self.walletd.iter().enumerate() {
            let url = format!("{}/readyz", walletd.base_url());
            loop {
                let last = match walletd.http.get(&url).send().await {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.text().await.unwrap_or_default();
                        let ready = serde_json::from_str::<Value>(&body)
                            .is_ok_and(|v| v["status"].as_str() == Some("ready"));
                        if status.is_success() && ready {
                            break;
                        }
                        format!("{status} {body}")
                    }
                    Err(error) => error_chain(&error),
                };
                if started.elapsed() >= READY_MAX {
                    return Err(format!(
                        "replica {replica} not ready {READY_MAX:?} after the fault healed: {last}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(started.elapsed())
    }

    fn logs(&self) -> Vec<&Path> {
        let mut logs: Vec<&Path> = self.walletd.iter().map(|w| w.log.as_path()).collect();
        logs.push(&self.postgres.log);
        logs
    }

    fn print_log_tails(&self) {
        for path in self.logs() {
            eprintln!(
                "chaos: --- last lines of {} ---\n{}",
                path.display(),
                tail(path, 60)
            );
        }
    }

    /// Copies the logs to `$CHAOS_LOG_DIR` when set (the temp dir goes away).
    fn keep_logs(&self) {
        let Some(dir) = std::env::var_os("CHAOS_LOG_DIR").map(PathBuf::from) else {
            return;
        };
        let copied = std::fs::create_dir_all(&dir).and_then(|()| {
            for path in self.logs() {
                if let Some(name) = path.file_name() {
                    std::fs::copy(path, dir.join(name))?;
                }
            }
            Ok(())
        });
        match copied {
            Ok(_) => eprintln!("chaos: logs kept in {}", dir.display()),
            Err(error) => eprintln!("chaos: could not keep logs in {}: {error}", dir.display()),
        }
    }
}

/// A private temp dir, removed on drop. Owned by `postgres` when we run as root.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "walletd-chaos-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir(&path)
            .with_context(|| format!("creating temp dir {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            eprintln!(
                "chaos: could not remove temp dir {}: {error}",
                self.0.display()
            );
        }
    }
}

/// `n` distinct free loopback ports, bound at once and then let go. They are drawn from below
/// the kernel's ephemeral range when there is room: a port of ours that is free for a while
/// (a Redis node or walletd stopped, Postgres restarting) could otherwise become the local
/// port of some outgoing connection or of another program's `bind(0)`, and the restart on it
/// would fail.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    // Never anything that could be mistaken for the shared services.
    const AVOID: [u16; 3] = [5432, 6379, 8080];
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let reserved = 10_000u16..ephemeral_low;
    let mut listeners: Vec<std::net::TcpListener> = Vec::new();
    let mut tries = 0;
    while listeners.len() < n {
        tries += 1;
        let port = if reserved.len() >= 1000 && tries <= 1000 {
            rand::random_range(reserved.clone())
        } else {
            0
        };
        if AVOID.contains(&port) {
            continue;
        }
        let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) else {
            ensure!(port != 0, "cannot bind any loopback port");
            continue;
        };
        let port = listener.local_addr()?.port();
        if !AVOID.contains(&port) {
            listeners.push(listener);
        }
    }
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// The last `n` lines of a file, for evidence.
fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(error) => format!("({}: {error})", path.display()),
    }
}

/// Runs a command to completion within `COMMAND_TIMEOUT`; its output goes to `log` (a child
/// that daemonizes, like pg_ctl's postmaster, must not hold a pipe of ours open).
async fn run_logged(mut command: Command, what: &str, log: &Path) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true);
    let status = tokio::time::timeout(COMMAND_TIMEOUT, command.status())
        .await
        .map_err(|_| anyhow!("{what}: no exit within {COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("{what}: cannot run"))?;
    ensure!(
        status.success(),
        "{what}: {status}; last output:\n{}",
        tail(log, 30)
    );
    Ok(())
}

/// A private Postgres cluster in the temp dir, run as `postgres` when we are root.
struct Postgres {
    bindir: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    sockets: PathBuf,
    log: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    async fn init(tmp: &Path, port: u16) -> anyhow::Result<Self> {
        let as_postgres = running_as_root();
        let bindir = postgres_bindir()?;
        let sockets = tmp.join("sockets");
        std::fs::create_dir(&sockets)?;
        let this = Self {
            bindir,
            dir: tmp.to_owned(),
            data: tmp.join("pgdata"),
            sockets,
            log: tmp.join("postgres.log"),
            port,
            as_postgres,
        };
        if as_postgres {
            // Postgres refuses to run as root: the cluster and its files belong to postgres.
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(tmp)
                .status()
                .context("chown (is there a `postgres` user?)")?;
            ensure!(
                status.success(),
                "chown -R postgres {}: {status}",
                tmp.display()
            );
        }
        let mut initdb = this.command("initdb");
        initdb.arg("-D").arg(&this.data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run_logged(initdb, "initdb", &tmp.join("initdb.log")).await?;
        Ok(this)
    }

    /// `program` from the Postgres bindir, through `runuser -u postgres --` when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        command.current_dir(&self.dir);
        command
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=100",
            self.port,
            self.sockets.display()
        );
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("start")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "30", "-o", &options]);
        run_logged(pg_ctl, "pg_ctl start", &self.dir.join("pg_ctl.log")).await
    }

    async fn stop_immediate(&mut self) -> anyhow::Result<()> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "30"]);
        run_logged(pg_ctl, "pg_ctl stop", &self.dir.join("pg_ctl.log")).await
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let pid_file = self.data.join("postmaster.pid");
        if !pid_file.exists() {
            return;
        }
        let path = self.bindir.join("pg_ctl");
        let mut command = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        };
        let stopped = command
            .arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "10"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            // Last resort: the postmaster's pid is the first line of postmaster.pid.
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.lines().next().map(str::trim).map(str::to_owned))
            {
                eprintln!("chaos: pg_ctl stop failed; killing postmaster {pid}");
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid])
                    .status();
            }
        }
    }
}

fn postgres_bindir() -> anyhow::Result<PathBuf> {
    let has_binaries = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("CHAOS_PG_BINDIR").map(PathBuf::from) {
        ensure!(
            has_binaries(&dir),
            "CHAOS_PG_BINDIR={} has no initdb/pg_ctl",
            dir.display()
        );
        return Ok(dir);
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_binaries(&dir) {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let dir = entry.path().join("bin");
            has_binaries(&dir).then_some((version, dir))
        })
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, dir)| dir)
        .context("no Postgres binaries (initdb, pg_ctl): install postgresql or set CHAOS_PG_BINDIR")
}

/// One `redis-server` child on a fixed loopback port; restarted on the same port.
struct RedisNode {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisNode {
    fn new(port: u16, dir: &Path) -> Self {
        Self {
            port,
            dir: dir.to_owned(),
            child: None,
        }
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("redis-server (is it on PATH?)")?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("redis-server on port {} exited: {status}", self.port);
            }
            if redis_ping(self.port).await {
                self.child = Some(child);
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        while redis_ping(self.port).await {
            ensure!(
                Instant::now() < deadline,
                "redis on port {} still answers after being killed",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Whether a Redis server on `port` answers PING within 500 ms.
async fn redis_ping(port: u16) -> bool {
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

/// `walletd serve` as a child on a fixed port; its stderr is appended to `log`.
struct Walletd {
    bin: PathBuf,
    root: PathBuf,
    port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Walletd {
    fn new(
        bin: &Path,
        root: &Path,
        port: u16,
        postgres: &Postgres,
        redis_urls: &[String],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let env = [
            (
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{}/walletd", postgres.port),
            ),
            ("REDIS_URLS", redis_urls.join(",")),
            ("WALLETD_BIND", format!("127.0.0.1:{port}")),
            (
                "WALLETD_CONFIG_DIR",
                root.join("config").display().to_string(),
            ),
            ("WALLETD__RATE_LIMIT__REQUESTS_PER_SECOND", "0".to_owned()),
            ("WALLETD__LOCK__TTL_MS", LOCK_TTL_MS.to_string()),
            ("WALLETD__LOCK__WAIT_MS_MAX", LOCK_WAIT_MS_MAX.to_string()),
            (
                "WALLETD__DATABASE__STATEMENT_TIMEOUT_MS",
                STATEMENT_TIMEOUT_MS.to_string(),
            ),
            ("WALLETD__DATABASE__LOCK_TIMEOUT_MS", "1000".to_owned()),
            (
                "WALLETD__DATABASE__IDLE_IN_TRANSACTION_SESSION_TIMEOUT_MS",
                "2000".to_owned(),
            ),
            ("WALLETD__PIPELINE__DEADLINE_MS", DEADLINE_MS.to_string()),
            ("WALLETD__IDEMPOTENCY__LEASE_MS", LEASE_MS.to_string()),
            ("WALLETD__SERVER__SHUTDOWN_TIMEOUT_S", "1".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
            // Plain, short log lines: no colours, no backtrace captured for every error.
            ("NO_COLOR", "1".to_owned()),
            ("RUST_LIB_BACKTRACE", "0".to_owned()),
        ];
        Ok(Self {
            bin: bin.to_owned(),
            root: root.to_owned(),
            port,
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            log,
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()?,
        })
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command.args(args).current_dir(&self.root);
        // Only our settings: nothing from the caller's environment may point elsewhere.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("WALLETD") || matches!(&*name, "DATABASE_URL" | "REDIS_URLS") {
                command.env_remove(&*name);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// A one-shot CLI command (migrate, tenant create); returns its stdout.
    async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let what = format!("walletd {}", args.join(" "));
        let out = tokio::time::timeout(
            COMMAND_TIMEOUT,
            self.command(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| anyhow!("{what}: no exit within {COMMAND_TIMEOUT:?}"))??;
        ensure!(
            out.status.success(),
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = self
            .command(&["serve"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let ready = format!("{}/readyz", self.base_url());
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "walletd serve exited: {status}; its log:\n{}",
                    tail(&self.log, 30)
                );
            }
            if let Ok(response) = self.http.get(&ready).send().await
                && response.status().is_success()
            {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill().await;
                bail!(
                    "walletd was not ready within {START_TIMEOUT:?}; its log:\n{}",
                    tail(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill is SIGKILL, then reaps it.
            if let Err(error) = child.kill().await {
                eprintln!("chaos: SIGKILL of walletd failed: {error}");
            }
        }
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .context("walletd is not running")?;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        ensure!(status.success(), "kill -{signal} {pid}: {status}");
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and their answers
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    /// One base URL per replica; each request goes to a random one.
    bases: Vec<String>,
    api_key: String,
    started: Instant,
}

impl Api {
    fn new(bases: Vec<String>, api_key: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(CLIENT_TIMEOUT)
                .pool_max_idle_per_host(WORKERS * 2)
                .build()?,
            bases,
            api_key: api_key.to_owned(),
            started: Instant::now(),
        })
    }

    fn pick(&self) -> (usize, &str) {
        let replica = rand::random_range(0..self.bases.len());
        (replica, &self.bases[replica])
    }

    async fn post(&self, path: &str, key: &str, body: &str) -> Answer {
        let (replica, base) = self.pick();
        let result = self
            .client
            .post(format!("{base}{path}"))
            .bearer_auth(&self.api_key)
            .header("Idempotency-Key", key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned())
            .send()
            .await;
        let at = self.started.elapsed().as_secs_f64();
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                return Answer {
                    at,
                    replica,
                    reply: Reply::Transport {
                        error: error_chain(&error),
                        timeout: error.is_timeout(),
                    },
                };
            }
        };
        let status = response.status().as_u16();
        let replayed = response
            .headers()
            .get("Idempotent-Replayed")
            .is_some_and(|v| v.as_bytes() == b"true");
        let reply = match response.bytes().await {
            Ok(body) => Reply::Http {
                status,
                replayed,
                body: body.to_vec(),
            },
            Err(error) => Reply::Transport {
                error: format!(
                    "status {status}, then reading the body: {}",
                    error_chain(&error)
                ),
                timeout: error.is_timeout(),
            },
        };
        Answer { at, replica, reply }
    }

    /// A GET for the checks. The system has healed by then, but a request can still meet a
    /// non-answer (transport error, 408, 409, 429, 502-504): re-sent with back-off until
    /// `GET_RETRY_MAX`. Any other status is returned to the caller (a 500 included: a bug).
    async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let deadline = Instant::now() + GET_RETRY_MAX;
        let mut attempt = 0u32;
        loop {
            let (replica, base) = self.pick();
            let result = self
                .client
                .get(format!("{base}{path}"))
                .bearer_auth(&self.api_key)
                .send()
                .await;
            let last = match result {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.bytes().await {
                        Ok(_) if matches!(status, 408 | 409 | 429 | 502..=599) => {
                            format!("replica {replica}: {status}")
                        }
                        Ok(bytes) => {
                            let value = serde_json::from_slice(&bytes).with_context(|| {
                                format!("GET {path}: {status}: {}", String::from_utf8_lossy(&bytes))
                            })?;
                            return Ok((status, value));
                        }
                        Err(error) => format!(
                            "replica {replica}: {status}, then reading the body: {}",
                            error_chain(&error)
                        ),
                    }
                }
                Err(error) => format!("replica {replica}: {}", error_chain(&error)),
            };
            ensure!(
                Instant::now() < deadline,
                "GET {path}: no answer within {GET_RETRY_MAX:?} ({} attempts): {last}",
                attempt + 1
            );
            tokio::time::sleep(back_off(attempt)).await;
            attempt += 1;
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

#[derive(Debug, Clone)]
enum Reply {
    Http {
        status: u16,
        replayed: bool,
        body: Vec<u8>,
    },
    /// No complete answer: connection refused or reset, the client's timeout (`timeout`), or a
    /// status whose body never fully arrived.
    Transport { error: String, timeout: bool },
}

#[derive(Debug, Clone)]
struct Answer {
    /// Seconds since the run started.
    at: f64,
    /// Which walletd answered (or was asked).
    replica: usize,
    reply: Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A decision the service stores and replays: the route's 201, or a business decline
    /// (422 `insufficient_funds`, `currency_mismatch`, `wallet_closed`; 404 `wallet_not_found`).
    Decided,
    /// Not a decision, so nothing was stored: retry with the same key. No answer at all
    /// (connection refused or reset, the client's timeout, a body cut off), 408 (the server gave
    /// up reading our body, e.g. it was stopped mid-read), 409 (the key's first request is
    /// still running), 429 (documented as retryable) and any 5xx. A 500 is retried too, so the
    /// ledger checks still see its key through, but it is a bug: `check` reports it.
    Transient,
    /// Anything else is a bug in the service or in this harness (a 400 to a valid request,
    /// 422 `idempotency_key_reused`, 401, 404 `not_found`, an unexpected 2xx, ...).
    Unexpected,
}

impl Answer {
    fn class(&self) -> Class {
        match &self.reply {
            Reply::Transport { .. } => Class::Transient,
            Reply::Http { status, body, .. } => classify(*status, body),
        }
    }

    /// A 500: retried like any 5xx, but "only a bug is a 500".
    fn internal_error(&self) -> bool {
        matches!(self.reply, Reply::Http { status: 500, .. })
    }

    fn label(&self) -> String {
        match &self.reply {
            Reply::Transport { timeout: true, .. } => "client_timeout".to_owned(),
            Reply::Transport { .. } => "transport".to_owned(),
            Reply::Http { status, body, .. } => match problem_code(body) {
                Some(code) if *status != 201 => format!("{status}:{code}"),
                _ => status.to_string(),
            },
        }
    }

    fn describe(&self) -> String {
        match &self.reply {
            Reply::Transport { error, timeout } => format!(
                "+{:.3}s replica {} {}: {error}",
                self.at,
                self.replica,
                if *timeout {
                    "client timeout"
                } else {
                    "transport error"
                }
            ),
            Reply::Http {
                status,
                replayed,
                body,
            } => {
                let body = String::from_utf8_lossy(body);
                let shown: String = body.chars().take(400).collect();
                format!(
                    "+{:.3}s replica {} {status}{} {shown}",
                    self.at,
                    self.replica,
                    if *replayed { " (replayed)" } else { "" }
                )
            }
        }
    }
}

/// What an answer with `status` and `body` is to the driver, for the routes it sends (wallet
/// creation, debit, credit: each answers 201 on success, never 200).
fn classify(status: u16, body: &[u8]) -> Class {
    match status {
        201 => Class::Decided,
        422 => match problem_code(body).as_deref() {
            Some("insufficient_funds" | "currency_mismatch" | "wallet_closed") => Class::Decided,
            // idempotency_key_reused (we never change a key's request) and anything unknown.
            _ => Class::Unexpected,
        },
        404 => match problem_code(body).as_deref() {
            Some("wallet_not_found") => Class::Decided,
            _ => Class::Unexpected,
        },
        408 | 409 | 429 | 500..=599 => Class::Transient,
        _ => Class::Unexpected,
    }
}

/// The `code` of a problem+json body.
fn problem_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
}

/// One idempotent request (one key) and every answer it ever got.
struct Req {
    phase: usize,
    key: String,
    /// Index into the wallet list; None for wallet creation.
    wallet: Option<usize>,
    path: String,
    body: String,
    answers: Vec<Answer>,
    /// Re-sent because an earlier answer was transient.
    retried: bool,
}

impl Req {
    fn decided(&self) -> Option<&Answer> {
        self.answers.iter().find(|a| a.class() == Class::Decided)
    }

    fn resolved(&self) -> bool {
        self.decided().is_some()
    }

    fn gave_up(&self) -> bool {
        self.answers.iter().any(|a| a.class() == Class::Unexpected)
    }

    /// The transaction a decided 201 acknowledged, with its body.
    fn acknowledged(&self) -> Option<(String, Value)> {
        match &self.decided()?.reply {
            Reply::Http {
                status: 201, body, ..
            } => {
                let value: Value = serde_json::from_slice(body).ok()?;
                Some((value["id"].as_str()?.to_owned(), value))
            }
            _ => None,
        }
    }

    fn describe(&self) -> String {
        let mut text = format!(
            "key={} POST {} body={} phase={}",
            self.key, self.path, self.body, self.phase
        );
        for answer in &self.answers {
            let _ = write!(text, "\n      {}", answer.describe());
        }
        text
    }
}

struct Book {
    reqs: Vec<Req>,
    /// Requests with only transient answers so far, for the load workers to retry.
    pending: VecDeque<usize>,
}

type Shared = Arc<Mutex<Book>>;

fn lock(book: &Shared) -> MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(PoisonError::into_inner)
}

struct PhaseStats {
    requests: usize,
    acknowledged: usize,
    declined: usize,
    retried: usize,
    /// Requests that got a 500 at least once (retried like any 5xx, but each is a violation).
    internal_errors: usize,
    histogram: String,
}

impl Book {
    fn new() -> Self {
        Self {
            reqs: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    fn add(
        &mut self,
        phase: usize,
        wallet: Option<usize>,
        path: String,
        body: String,
        key_prefix: &str,
    ) -> usize {
        self.reqs.push(Req {
            phase,
            key: format!("{key_prefix}-{}", uuid::Uuid::new_v4()),
            wallet,
            path,
            body,
            answers: Vec::new(),
            retried: false,
        });
        self.reqs.len() - 1
    }

    fn phase_stats(&self, phase: usize) -> PhaseStats {
        let mut stats = PhaseStats {
            requests: 0,
            acknowledged: 0,
            declined: 0,
            retried: 0,
            internal_errors: 0,
            histogram: String::new(),
        };
        let mut histogram: HashMap<String, usize> = HashMap::new();
        for req in self.reqs.iter().filter(|r| r.phase == phase) {
            stats.requests += 1;
            stats.retried += usize::from(req.retried);
            stats.internal_errors += usize::from(req.answers.iter().any(Answer::internal_error));
            match req.decided().map(|a| &a.reply) {
                Some(Reply::Http { status: 201, .. }) => stats.acknowledged += 1,
                Some(_) => stats.declined += 1,
                None => {}
            }
            for answer in &req.answers {
                *histogram.entry(answer.label()).or_default() += 1;
            }
        }
        let mut histogram: Vec<_> = histogram.into_iter().collect();
        histogram.sort();
        stats.histogram = histogram
            .iter()
            .map(|(label, n)| format!("{label}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        stats
    }
}

/// Sends request `idx` once and records the answer.
async fn send(api: &Api, book: &Shared, idx: usize) -> Class {
    let (key, path, body) = {
        let book = lock(book);
        let req = &book.reqs[idx];
        (req.key.clone(), req.path.clone(), req.body.clone())
    };
    let answer = api.post(&path, &key, &body).await;
    let class = answer.class();
    lock(book).reqs[idx].answers.push(answer);
    class
}

/// Sends request `idx` until an answer is not transient (bounded attempts, back-off,
/// deadline); returns the class of the last answer.
async fn send_until_decided(api: &Api, book: &Shared, idx: usize, deadline: Instant) -> Class {
    let mut class = Class::Transient;
    for attempt in 0..RETRY_ATTEMPTS {
        class = send(api, book, idx).await;
        if class != Class::Transient || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(back_off(attempt)).await;
    }
    class
}

/// 200 ms, 400 ms, 800 ms, then 1 s, plus up to 100 ms of jitter.
fn back_off(attempt: u32) -> Duration {
    Duration::from_millis((200u64 << attempt.min(3)).min(1000))
        + Duration::from_millis(rand::random_range(0..100))
}

/// Creates and funds the wallets (phase 0), each request retried until decided.
async fn setup_wallets(api: &Api, book: &Shared) -> anyhow::Result<Arc<Vec<String>>> {
    let deadline = Instant::now() + RETRY_PASS_MAX;
    let mut wallets = Vec::new();
    for n in 0..WALLETS {
        let body = json!({"currency": "EUR", "owner_ref": format!("chaos-{n}"), "overdraft_limit": "0.00"})
            .to_string();
        let idx = lock(book).add(0, None, "/v1/wallets".to_owned(), body, "chaos-wallet");
        send_until_decided(api, book, idx, deadline).await;
        let book = lock(book);
        let req = &book.reqs[idx];
        let (id, _) = req
            .acknowledged()
            .with_context(|| format!("creating a wallet failed:\n{}", req.describe()))?;
        wallets.push(id);
    }
    for (n, id) in wallets.iter().enumerate() {
        let body =
            json!({"amount": FUNDING, "currency": "EUR", "reference": "chaos-funding"}).to_string();
        let idx = lock(book).add(
            0,
            Some(n),
            format!("/v1/wallets/{id}/credit"),
            body,
            "chaos-fund",
        );
        send_until_decided(api, book, idx, deadline).await;
        let book = lock(book);
        let req = &book.reqs[idx];
        ensure!(
            req.acknowledged().is_some(),
            "funding a wallet failed:\n{}",
            req.describe()
        );
    }
    Ok(Arc::new(wallets))
}

/// A new random debit (60 %) or credit on a random wallet, small amounts: wallets hover near
/// zero, so debits regularly meet `insufficient_funds`.
fn new_request(book: &Shared, phase: usize, wallets: &[String]) -> usize {
    let wallet = rand::random_range(0..wallets.len());
    let credit = rand::random_range(0..100u32) < 40;
    let cents: i64 = if credit {
        rand::random_range(1..=400)
    } else {
        rand::random_range(1..=500)
    };
    let amount = Decimal::new(cents, 2).to_string();
    let kind = if credit { "credit" } else { "debit" };
    let mut book = lock(book);
    let reference = format!("chaos-{phase}-{}", book.reqs.len());
    let body = json!({"amount": amount, "currency": "EUR", "reference": reference}).to_string();
    book.add(
        phase,
        Some(wallet),
        format!("/v1/wallets/{}/{kind}", wallets[wallet]),
        body,
        "chaos",
    )
}

/// One load client: new requests with fresh keys, sometimes a retry of an earlier request
/// that got no decided answer (same key and body), sometimes a double-click (the same request
/// twice at once).
async fn worker(
    api: Api,
    book: Shared,
    phase: usize,
    stop: Arc<AtomicBool>,
    wallets: Arc<Vec<String>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let dice = rand::random_range(0..100u32);
        let retry = if dice < 15 {
            let mut book = lock(&book);
            let mut found = None;
            while let Some(idx) = book.pending.pop_front() {
                if !book.reqs[idx].resolved() && !book.reqs[idx].gave_up() {
                    book.reqs[idx].retried = true;
                    found = Some(idx);
                    break;
                }
            }
            found
        } else {
            None
        };
        let (idx, double) = match retry {
            Some(idx) => (idx, false),
            None => (new_request(&book, phase, &wallets), dice >= 96),
        };
        let classes = if double {
            let (a, b) = tokio::join!(send(&api, &book, idx), send(&api, &book, idx));
            vec![a, b]
        } else {
            vec![send(&api, &book, idx).await]
        };
        {
            let mut book = lock(&book);
            if !book.reqs[idx].resolved() && !book.reqs[idx].gave_up() {
                book.pending.push_back(idx);
            }
        }
        let pause = if classes.contains(&Class::Transient) {
            // Do not hammer a service that is down.
            rand::random_range(100..250)
        } else {
            rand::random_range(1..15)
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// The retry pass: every request without a decided answer is re-sent with its key, path and
/// body until it gets one. Returns how many requests it re-sent.
async fn retry_unresolved(api: &Api, book: &Shared) -> usize {
    let todo: Vec<usize> = {
        let book = lock(book);
        (0..book.reqs.len())
            .filter(|&i| !book.reqs[i].resolved() && !book.reqs[i].gave_up())
            .collect()
    };
    let count = todo.len();
    let deadline = Instant::now() + RETRY_PASS_MAX;
    futures_util::stream::iter(todo)
        .map(|idx| async move {
            lock(book).reqs[idx].retried = true;
            send_until_decided(api, book, idx, deadline).await;
        })
        .buffer_unordered(WORKERS)
        .collect::<Vec<()>>()
        .await;
    count
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Report {
    lost: usize,
    duplicated: usize,
    unresolved: usize,
    problems: Vec<String>,
}

impl Report {
    fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.unresolved == 0 && self.problems.is_empty()
    }

    fn print_problems(&self) {
        for problem in &self.problems {
            eprintln!("chaos: VIOLATION: {problem}");
        }
    }
}

/// Remembers what was already reported, so each phase's line counts what is new.
#[derive(Default)]
struct Checker {
    reported_lost: HashSet<usize>,
    reported_duplicate_keys: HashSet<String>,
    reported_entries: HashSet<String>,
}

fn money(value: &Value, field: &str) -> anyhow::Result<Decimal> {
    let text = value[field]
        .as_str()
        .with_context(|| format!("{field} is not a string in {value}"))?;
    Decimal::from_str(text).with_context(|| format!("{field} = {text:?}"))
}

impl Checker {
    /// Checks the whole ledger against every request so far; per-request checks (replays,
    /// unexpected answers) for the requests of `phase`.
    async fn check(
        &mut self,
        api: &Api,
        book: &Shared,
        phase: usize,
        wallets: &[String],
    ) -> anyhow::Result<Report> {
        let mut report = Report::default();

        // Every wallet and its whole ledger.
        let mut ledgers: Vec<(Value, Vec<Value>)> = Vec::new();
        for id in wallets {
            let (status, wallet) = api.get(&format!("/v1/wallets/{id}")).await?;
            ensure!(status == 200, "GET wallet {id}: {status} {wallet}");
            let mut entries = Vec::new();
            let mut after: Option<String> = None;
            for _page in 0..10_000 {
                let path = match &after {
                    Some(cursor) => format!("/v1/wallets/{id}/ledger?limit=1000&after={cursor}"),
                    None => format!("/v1/wallets/{id}/ledger?limit=1000"),
                };
                let (status, page) = api.get(&path).await?;
                ensure!(status == 200, "GET {path}: {status} {page}");
                entries.extend(
                    page["entries"]
                        .as_array()
                        .with_context(|| format!("no entries in {page}"))?
                        .iter()
                        .cloned(),
                );
                match page["next_cursor"].as_str() {
                    Some(cursor) => after = Some(cursor.to_owned()),
                    None => break,
                }
            }
            ledgers.push((wallet, entries));
        }

        // Wallet invariants.
        for (n, (wallet, entries)) in ledgers.iter().enumerate() {
            if let Err(problem) = wallet_invariants(&wallets[n], wallet, entries) {
                report
                    .problems
                    .push(format!("wallet {}: {problem:#}", wallets[n]));
            }
        }

        let mut by_id: HashMap<&str, Vec<&Value>> = HashMap::new();
        let mut by_key: HashMap<&str, Vec<&Value>> = HashMap::new();
        for entry in ledgers.iter().flat_map(|(_, entries)| entries) {
            by_id
                .entry(entry["id"].as_str().unwrap_or_default())
                .or_default()
                .push(entry);
            by_key
                .entry(entry["idempotency_key"].as_str().unwrap_or_default())
                .or_default()
                .push(entry);
        }

        let mut to_get: Vec<(usize, String, Value)> = Vec::new();
        let mut to_replay: Vec<usize> = Vec::new();
        {
            let book = lock(book);
            let req_by_key: HashMap<&str, usize> = book
                .reqs
                .iter()
                .enumerate()
                .map(|(i, r)| (r.key.as_str(), i))
                .collect();

            // Lost: an acknowledged 201 whose transaction is not in its ledger exactly once.
            for (i, req) in book.reqs.iter().enumerate() {
                let Some(wallet) = req.wallet else { continue };
                let Some((tx, body)) = req.acknowledged() else {
                    continue;
                };
                let found = by_id.get(tx.as_str()).map_or(0, Vec::len);
                if found != 1 {
                    if self.reported_lost.insert(i) {
                        report.lost += 1;
                        report.problems.push(format!(
                            "acknowledged transaction {tx} is in the ledger {found} times:\n    {}",
                            req.describe()
                        ));
                    }
                    continue;
                }
                let entry = by_id[tx.as_str()][0];
                if entry != &body || entry["wallet_id"].as_str() != Some(wallets[wallet].as_str()) {
                    if self.reported_entries.insert(tx.clone()) {
                        report.problems.push(format!(
                            "ledger entry differs from its 201:\n    entry {entry}\n    {}",
                            req.describe()
                        ));
                    }
                    continue;
                }
                if req.phase == phase {
                    to_get.push((i, tx, body));
                }
            }

            // Duplicated: a key with more than one ledger entry.
            for (key, entries) in &by_key {
                if entries.len() > 1 && self.reported_duplicate_keys.insert((*key).to_owned()) {
                    report.duplicated += entries.len() - 1;
                    let request = req_by_key
                        .get(key)
                        .map_or("(a key we never sent)".to_owned(), |&i| {
                            book.reqs[i].describe()
                        });
                    report.problems.push(format!(
                        "key {key} has {} ledger entries: {}\n    {request}",
                        entries.len(),
                        entries
                            .iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join("\n    ")
                    ));
                }
            }

            // Phantoms: an entry that no decided 201 of ours acknowledged.
            for (id, entries) in &by_id {
                for entry in entries {
                    let key = entry["idempotency_key"].as_str().unwrap_or_default();
                    let owner = req_by_key.get(key).map(|&i| &book.reqs[i]);
                    let acknowledged = owner
                        .and_then(Req::acknowledged)
                        .is_some_and(|(tx, _)| tx == *id);
                    if !acknowledged && self.reported_entries.insert((*id).to_owned()) {
                        report.problems.push(format!(
                            "ledger entry {id} was never acknowledged by a 201 for its key: {entry}\n    {}",
                            owner.map_or("(a key we never sent)".to_owned(), Req::describe)
                        ));
                    }
                }
            }

            // Per request of this phase: decided, identical decided answers, one execution.
            let mut sampled = 0;
            for (i, req) in book
                .reqs
                .iter()
                .enumerate()
                .filter(|(_, r)| r.phase == phase)
            {
                if let Some(bad) = req.answers.iter().find(|a| a.class() == Class::Unexpected) {
                    report.problems.push(format!(
                        "unexpected answer {}:\n    {}",
                        bad.label(),
                        req.describe()
                    ));
                    continue;
                }
                // Retried to a decision like any 5xx (so the checks below still hold it to
                // exactly once), but only a bug is a 500.
                if req.answers.iter().any(Answer::internal_error) {
                    report.problems.push(format!(
                        "500 internal_error (a service bug):\n    {}",
                        req.describe()
                    ));
                }
                let Some(first) = req.decided() else {
                    report.unresolved += 1;
                    report.problems.push(format!(
                        "no decision after {} attempts (the retry pass allows {RETRY_ATTEMPTS} within {RETRY_PASS_MAX:?}):\n    {}",
                        req.answers.len(),
                        req.describe()
                    ));
                    continue;
                };
                let decided: Vec<&Answer> = req
                    .answers
                    .iter()
                    .filter(|a| a.class() == Class::Decided)
                    .collect();
                if decided.iter().any(|a| !same_decision(a, first)) {
                    report.problems.push(format!(
                        "answers to one key differ:\n    {}",
                        req.describe()
                    ));
                    continue;
                }
                let executed = decided
                    .iter()
                    .filter(|a| {
                        matches!(
                            a.reply,
                            Reply::Http {
                                replayed: false,
                                ..
                            }
                        )
                    })
                    .count();
                if executed > 1 {
                    report.problems.push(format!(
                        "a key was executed {executed} times (answers without Idempotent-Replayed):\n    {}",
                        req.describe()
                    ));
                    continue;
                }
                let saw_fault = req.answers.iter().any(|a| a.class() != Class::Decided);
                if saw_fault || sampled < REPLAY_SAMPLE {
                    sampled += usize::from(!saw_fault);
                    to_replay.push(i);
                }
            }
        }

        // GET /v1/transactions/{id} shows what the 201 said.
        let gets = futures_util::stream::iter(to_get)
            .map(|(i, tx, body)| async move {
                match api.get(&format!("/v1/transactions/{tx}")).await {
                    Ok((200, value)) if value == body => None,
                    Ok((status, value)) => {
                        Some((i, format!("GET transaction {tx}: {status} {value}")))
                    }
                    Err(error) => Some((i, format!("{error:#}"))),
                }
            })
            .buffer_unordered(WORKERS)
            .collect::<Vec<_>>()
            .await;
        for (i, problem) in gets.into_iter().flatten() {
            report.problems.push(format!(
                "{problem} differs from its 201:\n    {}",
                lock(book).reqs[i].describe()
            ));
        }

        // A replay now: the same status and bytes, marked as a replay. A replay that meets a
        // non-decision (a 503 while a pool reconnects, say) is re-sent like any other request.
        let deadline = Instant::now() + RETRY_PASS_MAX;
        let replays = futures_util::stream::iter(to_replay)
            .map(|idx| async move {
                let before = lock(book).reqs[idx].answers.len();
                send_until_decided(api, book, idx, deadline).await;
                let book = lock(book);
                let req = &book.reqs[idx];
                let sent = &req.answers[before..];
                if sent.iter().any(Answer::internal_error) {
                    return Some(format!(
                        "a replay got a 500 internal_error (a service bug):\n    {}",
                        req.describe()
                    ));
                }
                let (Some(first), Some(last)) = (req.decided(), sent.last()) else {
                    return None;
                };
                let replayed = matches!(last.reply, Reply::Http { replayed: true, .. });
                (!(replayed && same_decision(last, first)))
                    .then(|| format!("a replay is not the stored answer:\n    {}", req.describe()))
            })
            .buffer_unordered(WORKERS)
            .collect::<Vec<_>>()
            .await;
        report.problems.extend(replays.into_iter().flatten());

        Ok(report)
    }
}

/// Same status and the same body bytes.
fn same_decision(a: &Answer, b: &Answer) -> bool {
    match (&a.reply, &b.reply) {
        (
            Reply::Http {
                status: sa,
                body: ba,
                ..
            },
            Reply::Http {
                status: sb,
                body: bb,
                ..
            },
        ) => sa == sb && ba == bb,
        _ => false,
    }
}

/// API.md's invariants of one wallet, from its representation and its full ledger.
fn wallet_invariants(id: &str, wallet: &Value, entries: &[Value]) -> anyhow::Result<()> {
    ensure!(wallet["id"].as_str() == Some(id), "GET returned {wallet}");
    let mut previous_after = Decimal::ZERO;
    let mut sum = Decimal::ZERO;
    for (n, entry) in entries.iter().enumerate() {
        let seq = entry["seq"].as_i64();
        ensure!(
            seq == i64::try_from(n + 1).ok(),
            "entry #{} has seq {seq:?} (gap or disorder): {entry}",
            n + 1
        );
        ensure!(
            entry["wallet_id"].as_str() == Some(id),
            "entry of another wallet: {entry}"
        );
        let amount = money(entry, "amount")?;
        let before = money(entry, "balance_before")?;
        let after = money(entry, "balance_after")?;
        ensure!(amount > Decimal::ZERO, "amount <= 0: {entry}");
        ensure!(
            before == previous_after,
            "balance_before {before} != previous balance_after {previous_after}: {entry}"
        );
        let (expected, signed) = match entry["type"].as_str() {
            Some("debit") => (before - amount, -amount),
            Some("credit") => (before + amount, amount),
            other => bail!("unknown type {other:?}: {entry}"),
        };
        ensure!(
            after == expected,
            "balance_after {after} != {expected}: {entry}"
        );
        sum += signed;
        previous_after = after;
    }
    let balance = money(wallet, "balance")?;
    let held = money(wallet, "held")?;
    let overdraft = money(wallet, "overdraft_limit")?;
    let available = money(wallet, "available")?;
    ensure!(
        balance == sum && balance == previous_after,
        "balance {balance} != sum of its ledger {sum} or last balance_after {previous_after} ({} entries)",
        entries.len()
    );
    ensure!(
        balance >= -overdraft,
        "balance {balance} below -overdraft_limit {overdraft}"
    );
    ensure!(
        available == balance - held + overdraft && available >= Decimal::ZERO,
        "available {available} (balance {balance}, held {held}, overdraft {overdraft})"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Class, classify};

    #[test]
    fn decisions_retries_and_bugs() {
        let problem = |code: &str| format!(r#"{{"status":0,"code":"{code}"}}"#).into_bytes();
        assert_eq!(classify(201, b"{}"), Class::Decided);
        for code in ["insufficient_funds", "currency_mismatch", "wallet_closed"] {
            assert_eq!(classify(422, &problem(code)), Class::Decided, "{code}");
        }
        assert_eq!(classify(404, &problem("wallet_not_found")), Class::Decided);
        // Not decisions: retried with the same key.
        assert_eq!(classify(408, b""), Class::Transient);
        assert_eq!(classify(408, &problem("request_timeout")), Class::Transient);
        assert_eq!(
            classify(409, &problem("idempotency_key_in_progress")),
            Class::Transient
        );
        assert_eq!(classify(429, &problem("rate_limited")), Class::Transient);
        for status in [500, 502, 503, 504] {
            assert_eq!(classify(status, b""), Class::Transient, "{status}");
        }
        // Bugs.
        assert_eq!(
            classify(422, &problem("idempotency_key_reused")),
            Class::Unexpected
        );
        assert_eq!(
            classify(422, &problem("wallet_not_found")),
            Class::Unexpected
        );
        assert_eq!(classify(404, &problem("not_found")), Class::Unexpected);
        assert_eq!(
            classify(404, &problem("insufficient_funds")),
            Class::Unexpected
        );
        for status in [200, 204, 301, 400, 401, 403, 405, 410, 413, 415] {
            assert_eq!(classify(status, b"{}"), Class::Unexpected, "{status}");
        }
    }
}
