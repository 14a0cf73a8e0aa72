//! Load generator for `scripts/bench.sh`. One bounded measurement per call against a walletd the
//! script started on loopback; prints one line of `key=value` pairs (the script makes the table).
//!
//! ```text
//! bench_debits debits <base_url> <api_key> <clients> <debits_per_client> <wallets>
//!     `clients` tasks, client i on wallet i % wallets (wallets = clients: one wallet per client;
//!     1: a hot wallet), each sending its debits back to back, a new Idempotency-Key each.
//!     GET /metrics is scraped before and after (once the relay caught up): the outbox publish
//!     lag p50/p99 over the difference, as for reads.
//!     -> ok= non2xx= elapsed_s= rps= p50_ms= p90_ms= p99_ms= lag_events= lag_p50_ms= lag_p99_ms=
//! bench_debits reads <base_url> <api_key> <readers> <reads_per_reader> <wallets> <writers>
//!     `readers` tasks doing GET /v1/wallets/{id} round robin over `wallets` wallets while
//!     `writers` tasks debit the same wallets until the readers are done. GET /metrics is
//!     scraped before and after: the balance cache hit ratio from
//!     walletd_balance_cache_reads_total{result=...} and the publish lag p50/p99 from the
//!     walletd_outbox_publish_lag_seconds buckets, both over the difference ("n/a" if absent).
//!     -> ok= non2xx= elapsed_s= rps= p50_ms= p90_ms= p99_ms= writes= write_non2xx= wps=
//!        cache_hit= cache_reads= lag_events= lag_p50_ms= lag_p99_ms=
//! bench_debits setup <base_url> <api_key> <wallets> <wallets_file>
//!     Creates `wallets` EUR wallets, credits each 1,000,000.00, and writes their ids to
//!     `wallets_file`, one a line (for scripts/bench/debit.lua and `rate`).
//!     -> wallets= elapsed_s=
//! bench_debits lag <metrics_before_file> <metrics_after_file>
//!     The publish lag over the difference of two saved GET /metrics bodies, as above.
//!     -> lag_events= lag_p50_ms= lag_p99_ms=
//! bench_debits rate <base_url> <api_key> <rps> <seconds> <wallets_file>
//!     Open loop: debit i is due at start + i/rps whatever happened to the earlier ones (a
//!     request of its own for each, on a pool of keep-alive connections), on a wallet picked at
//!     random from the file, a fresh Idempotency-Key each. Latency is measured from the time
//!     the debit was due, not from when it was sent, so a slow answer cannot hide the debits
//!     queued behind it (no coordinated omission). send_lag_max_ms: how late the latest debit
//!     left the client's scheduler.
//!     -> target_rps= sent= ok= non2xx= elapsed_s= rps= p50_ms= p90_ms= p99_ms= max_ms=
//!        send_lag_max_ms= max_in_flight=
//! ```
//!
//! Wallets are created and credited first (not timed). Throughput counts 2xx answers; latency
//! percentiles are over every answered request; `non2xx` is `status:count,...` (`conn` for a
//! request that got no HTTP answer), `-` when there were none.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// What one task saw: latencies of answered requests, count of 2xx, other statuses by name.
#[derive(Default)]
struct Tally {
    ok: usize,
    latencies: Vec<Duration>,
    other: BTreeMap<String, usize>,
}

impl Tally {
    fn record(&mut self, sent: Instant, status: Result<u16, ()>) {
        match status {
            Ok(status) => {
                self.latencies.push(sent.elapsed());
                if (200..300).contains(&status) {
                    self.ok += 1;
                } else {
                    *self.other.entry(status.to_string()).or_default() += 1;
                }
            }
            Err(()) => *self.other.entry("conn".into()).or_default() += 1,
        }
    }

    fn merge(mut self, other: Self) -> Self {
        self.ok += other.ok;
        self.latencies.extend(other.latencies);
        for (k, v) in other.other {
            *self.other.entry(k).or_default() += v;
        }
        self
    }

    fn non2xx(&self) -> String {
        if self.other.is_empty() {
            return "-".into();
        }
        let parts: Vec<String> = self.other.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        parts.join(",")
    }

    fn summary(mut self, elapsed: Duration) -> String {
        self.latencies.sort();
        let ms = |p: f64| {
            if self.latencies.is_empty() {
                return "n/a".to_owned();
            }
            let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
            format!("{:.2}", self.latencies[i].as_secs_f64() * 1e3)
        };
        format!(
            "ok={} non2xx={} elapsed_s={:.3} rps={:.1} p50_ms={} p90_ms={} p99_ms={}",
            self.ok,
            self.non2xx(),
            elapsed.as_secs_f64(),
            self.ok as f64 / elapsed.as_secs_f64(),
            ms(0.50),
            ms(0.90),
            ms(0.99),
        )
    }
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: Arc<str>,
    key: Arc<str>,
}

impl Api {
    /// A POST with a fresh Idempotency-Key: its status (Err if no answer) and, if asked, its body.
    async fn post(&self, path: &str, body: &Value, want_body: bool) -> (Result<u16, ()>, Value) {
        let sent = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&*self.key)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(body)
            .send()
            .await;
        match sent {
            Err(_) => (Err(()), Value::Null),
            Ok(response) => {
                let status = response.status().as_u16();
                let bytes = response.bytes().await.unwrap_or_default();
                let body = if want_body {
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                } else {
                    Value::Null
                };
                (Ok(status), body)
            }
        }
    }

    async fn get(&self, path: &str) -> Result<u16, ()> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&*self.key)
            .send()
            .await
            .map_err(|_| ())?;
        let status = response.status().as_u16();
        response.bytes().await.map_err(|_| ())?;
        Ok(status)
    }

    async fn debit(&self, wallet: &str) -> Result<u16, ()> {
        let body = json!({"amount": "0.01", "currency": "EUR"});
        self.post(&format!("/v1/wallets/{wallet}/debit"), &body, false)
            .await
            .0
    }

    /// One wallet credited 1,000,000.00 EUR (enough for a hundred million 0.01 debits).
    async fn funded_wallet(&self) -> Arc<str> {
        let (status, wallet) = self
            .post("/v1/wallets", &json!({"currency": "EUR"}), true)
            .await;
        assert_eq!(status, Ok(201), "create wallet: {wallet}");
        let id = wallet["id"].as_str().expect("wallet id").to_owned();
        let credit = json!({"amount": "1000000.00", "currency": "EUR"});
        let (status, body) = self
            .post(&format!("/v1/wallets/{id}/credit"), &credit, true)
            .await;
        assert_eq!(status, Ok(201), "credit wallet: {body}");
        Arc::from(id)
    }

    /// `n` funded wallets, created by up to 16 requests at a time, in creation order.
    async fn funded_wallets(&self, n: usize) -> Vec<Arc<str>> {
        let workers = n.clamp(1, 16);
        let tasks: Vec<_> = (0..workers)
            .map(|w| {
                let api = self.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    for i in (w..n).step_by(workers) {
                        mine.push((i, api.funded_wallet().await));
                    }
                    mine
                })
            })
            .collect();
        let mut wallets = Vec::with_capacity(n);
        for task in tasks {
            wallets.extend(task.await.unwrap());
        }
        wallets.sort_by_key(|(i, _)| *i);
        wallets.into_iter().map(|(_, id)| id).collect()
    }

    /// GET /metrics as `series{labels}` -> value (comments and unparsable lines skipped).
    async fn metrics(&self) -> HashMap<String, f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        parse_metrics(&text)
    }
}

fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.trim().rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// after - before of one series; None if the series is absent from `after`.
fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> Option<f64> {
    let now = after.get(series)?;
    Some(now - before.get(series).copied().unwrap_or(0.0))
}

/// The balance cache hit ratio over the window: hit / (hit + miss + bypass + error).
fn cache_hit_ratio(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
) -> (String, String) {
    let results = ["hit", "miss", "bypass", "error"];
    let counts: Vec<Option<f64>> = results
        .iter()
        .map(|r| {
            let series = format!("walletd_balance_cache_reads_total{{result=\"{r}\"}}");
            delta(before, after, &series)
        })
        .collect();
    if counts.iter().all(Option::is_none) {
        return ("n/a".into(), "n/a".into());
    }
    let counts: Vec<f64> = counts.into_iter().map(|c| c.unwrap_or(0.0)).collect();
    let total: f64 = counts.iter().sum();
    let breakdown = results
        .iter()
        .zip(&counts)
        .map(|(r, c)| format!("{r}:{c:.0}"))
        .collect::<Vec<_>>()
        .join(",");
    let ratio = if total > 0.0 {
        format!("{:.3}", counts[0] / total)
    } else {
        "n/a".into()
    };
    (ratio, breakdown)
}

/// Quantiles of walletd_outbox_publish_lag_seconds over the window, from the differences of its
/// cumulative buckets, interpolated linearly inside a bucket (as Prometheus' histogram_quantile
/// does). Returns (events, p50, p99) in ms; a quantile in the +Inf bucket is `>` the last bound.
fn publish_lag(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
) -> (String, String, String) {
    let prefix = "walletd_outbox_publish_lag_seconds_bucket{le=\"";
    let mut buckets: Vec<(f64, f64)> = after
        .keys()
        .filter_map(|series| {
            let le = series.strip_prefix(prefix)?.strip_suffix("\"}")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, delta(before, after, series)?))
        })
        .collect();
    if buckets.is_empty() {
        return ("n/a".into(), "n/a".into(), "n/a".into());
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return ("0".into(), "n/a".into(), "n/a".into());
    }
    let quantile = |q: f64| {
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(bound, cumulative) in &buckets {
            if cumulative >= rank {
                if bound.is_infinite() {
                    return format!(">{:.1}", lower * 1e3);
                }
                let inside = cumulative - below;
                let fraction = if inside > 0.0 {
                    (rank - below) / inside
                } else {
                    1.0
                };
                return format!("{:.2}", (lower + (bound - lower) * fraction) * 1e3);
            }
            (lower, below) = (bound, cumulative);
        }
        "n/a".into()
    };
    (format!("{total:.0}"), quantile(0.50), quantile(0.99))
}

/// Time for the relay to publish the last writes' events before the second scrape.
const RELAY_CATCH_UP: Duration = Duration::from_millis(1000);

async fn debits(api: Api, clients: usize, per_client: usize, wallet_count: usize) {
    let wallets = api.funded_wallets(wallet_count).await;
    let before = api.metrics().await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (api, wallet) = (api.clone(), wallets[i % wallets.len()].clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                for _ in 0..per_client {
                    let sent = Instant::now();
                    tally.record(sent, api.debit(&wallet).await);
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        total = total.merge(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(RELAY_CATCH_UP).await;
    let (events, p50, p99) = publish_lag(&before, &api.metrics().await);
    println!(
        "{} lag_events={events} lag_p50_ms={p50} lag_p99_ms={p99}",
        total.summary(elapsed)
    );
}

async fn reads(api: Api, readers: usize, per_reader: usize, wallet_count: usize, writers: usize) {
    let wallets = Arc::new(api.funded_wallets(wallet_count).await);
    // Let the setup's events be published before the first scrape.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = api.metrics().await;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writer_tasks: Vec<_> = (0..writers)
        .map(|i| {
            let (api, wallets, stop) = (api.clone(), wallets.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    tally.record(sent, api.debit(&wallets[n % wallets.len()]).await);
                    n += writers;
                }
                tally
            })
        })
        .collect();
    let reader_tasks: Vec<_> = (0..readers)
        .map(|i| {
            let (api, wallets) = (api.clone(), wallets.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                for n in 0..per_reader {
                    let wallet = &wallets[(i + n) % wallets.len()];
                    let sent = Instant::now();
                    tally.record(sent, api.get(&format!("/v1/wallets/{wallet}")).await);
                }
                tally
            })
        })
        .collect();
    let mut read = Tally::default();
    for task in reader_tasks {
        read = read.merge(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut write = Tally::default();
    for task in writer_tasks {
        write = write.merge(task.await.unwrap());
    }
    let write_elapsed = started.elapsed();
    tokio::time::sleep(RELAY_CATCH_UP).await;
    let after = api.metrics().await;
    let (hit, breakdown) = cache_hit_ratio(&before, &after);
    let (events, p50, p99) = publish_lag(&before, &after);
    println!(
        "{} writes={} write_non2xx={} wps={:.1} cache_hit={hit} cache_reads={breakdown} lag_events={events} lag_p50_ms={p50} lag_p99_ms={p99}",
        read.summary(elapsed),
        write.ok,
        write.non2xx(),
        write.ok as f64 / write_elapsed.as_secs_f64(),
    );
}

async fn setup(api: Api, wallet_count: usize, file: &str) {
    let started = Instant::now();
    let wallets = api.funded_wallets(wallet_count).await;
    let mut text = wallets.join("\n");
    text.push('\n');
    std::fs::write(file, text).expect("write wallets file");
    println!(
        "wallets={} elapsed_s={:.3}",
        wallets.len(),
        started.elapsed().as_secs_f64()
    );
}

fn lag(before_file: &str, after_file: &str) {
    let read = |f: &str| parse_metrics(&std::fs::read_to_string(f).expect("metrics file"));
    let (before, after) = (read(before_file), read(after_file));
    let (events, p50, p99) = publish_lag(&before, &after);
    println!(
        "lag_events={events} lag_p50_ms={p50} lag_p99_ms={p99} layers_ms={} batch_mean={}",
        layer_means(&before, &after),
        batch_mean(&before, &after)
    );
}

/// The pipeline's layers in order (walletd_pipeline_layer_seconds{layer}).
const LAYERS: [&str; 5] = [
    "replay_cache",
    "claim",
    "lock",
    "transaction",
    "after_commit",
];

/// Mean ms per request in each layer over the window, `layer:mean/...` ("n/a" if absent).
fn layer_means(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> String {
    let means: Vec<String> = LAYERS
        .iter()
        .filter_map(|layer| {
            let series =
                |part: &str| format!("walletd_pipeline_layer_seconds_{part}{{layer=\"{layer}\"}}");
            let sum = delta(before, after, &series("sum"))?;
            let count = delta(before, after, &series("count"))?;
            (count > 0.0).then(|| format!("{layer}:{:.2}", sum / count * 1e3))
        })
        .collect();
    if means.is_empty() {
        "n/a".into()
    } else {
        means.join("/")
    }
}

/// Mean debits per coalesced batch over the window ("n/a" if the build has no batches).
fn batch_mean(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> String {
    let sum = delta(before, after, "walletd_pipeline_batch_size_sum");
    let count = delta(before, after, "walletd_pipeline_batch_size_count");
    match (sum, count) {
        (Some(sum), Some(count)) if count > 0.0 => format!("{:.2}", sum / count),
        _ => "n/a".into(),
    }
}

/// A small xorshift generator (the example needs no `rand`): uniform enough to pick wallets.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

async fn rate(api: Api, target_rps: f64, seconds: f64, wallets_file: &str) {
    assert!(
        target_rps > 0.0 && seconds > 0.0,
        "rps and seconds must be > 0"
    );
    let wallets: Vec<Arc<str>> = std::fs::read_to_string(wallets_file)
        .expect("wallets file")
        .lines()
        .filter(|l| !l.is_empty())
        .map(Arc::from)
        .collect();
    assert!(!wallets.is_empty(), "no wallets in {wallets_file}");
    let mut random = XorShift(uuid::Uuid::new_v4().as_u128() as u64 | 1);
    let total = (target_rps * seconds).round() as usize;
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut max_in_flight = 0;
    let mut send_lag = Duration::ZERO;
    let started = Instant::now() + Duration::from_millis(20);
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / target_rps);
        tokio::time::sleep_until(due.into()).await;
        send_lag = send_lag.max(due.elapsed());
        let (api, wallet) = (api.clone(), wallets[random.below(wallets.len())].clone());
        let now = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        max_in_flight = max_in_flight.max(now);
        let in_flight = in_flight.clone();
        tasks.push(tokio::spawn(async move {
            let status = api.debit(&wallet).await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
            (due, due.elapsed(), status)
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        let (due, latency, status) = task.await.unwrap();
        match status {
            Ok(code) => {
                tally.latencies.push(latency);
                if (200..300).contains(&code) {
                    tally.ok += 1;
                } else {
                    *tally.other.entry(code.to_string()).or_default() += 1;
                }
            }
            Err(()) => tally.record(due, Err(())),
        }
    }
    let elapsed = started.elapsed();
    tally.latencies.sort();
    let ms = |p: f64| {
        if tally.latencies.is_empty() {
            return "n/a".to_owned();
        }
        let i = ((tally.latencies.len() as f64 - 1.0) * p).round() as usize;
        format!("{:.2}", tally.latencies[i].as_secs_f64() * 1e3)
    };
    println!(
        "target_rps={target_rps:.1} sent={total} ok={} non2xx={} elapsed_s={:.3} rps={:.1} p50_ms={} p90_ms={} p99_ms={} max_ms={} send_lag_max_ms={:.2} max_in_flight={max_in_flight}",
        tally.ok,
        tally.non2xx(),
        elapsed.as_secs_f64(),
        tally.ok as f64 / elapsed.as_secs_f64(),
        ms(0.50),
        ms(0.90),
        ms(0.99),
        ms(1.0),
        send_lag.as_secs_f64() * 1e3,
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: bench_debits debits <base_url> <api_key> <clients> <debits_per_client> <wallets>
       bench_debits reads <base_url> <api_key> <readers> <reads_per_reader> <wallets> <writers>
       bench_debits setup <base_url> <api_key> <wallets> <wallets_file>
       bench_debits lag <metrics_before_file> <metrics_after_file>
       bench_debits rate <base_url> <api_key> <rps> <seconds> <wallets_file>";
    let number = |i: usize| -> usize {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{usage}"))
    };
    let text = |i: usize| -> &str {
        args.get(i)
            .map_or_else(|| panic!("{usage}"), |a| a.as_str())
    };
    if args.get(1).map(String::as_str) == Some("lag") {
        lag(text(2), text(3));
        return;
    }
    let (mode, base, key) = match (args.get(1), args.get(2), args.get(3)) {
        (Some(mode), Some(base), Some(key)) => (mode.as_str(), base.trim_end_matches('/'), key),
        _ => panic!("{usage}"),
    };
    let connections = match mode {
        "reads" => number(4) + number(7),
        "debits" => number(4),
        _ => 64,
    };
    let api = Api {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        base: Arc::from(base),
        key: Arc::from(key.as_str()),
    };
    match mode {
        "debits" => debits(api, number(4), number(5), number(6).max(1)).await,
        "reads" => reads(api, number(4), number(5), number(6).max(1), number(7)).await,
        "setup" => setup(api, number(4).max(1), text(5)).await,
        "rate" => {
            let float = |i: usize| -> f64 {
                args.get(i)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("{usage}"))
            };
            rate(api, float(4), float(5), text(6)).await;
        }
        _ => panic!("{usage}"),
    }
}
