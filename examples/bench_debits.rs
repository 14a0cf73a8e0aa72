//! Load generator for `scripts/bench.sh`: C concurrent clients, each on its own wallet, each
//! sending N debits back to back (distinct idempotency keys). Prints one line per round and
//! the median. Targets a walletd the script started on loopback; bounded by N and rounds.
//!
//! Usage: bench_debits <base_url> <api_key> [clients=16] [debits_per_client=200] [rounds=3]
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};

struct Round {
    debits: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

async fn post(client: &reqwest::Client, url: String, key: &str, body: Value) -> (u16, Value) {
    let response = client
        .post(url)
        .bearer_auth(key)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&body)
        .send()
        .await
        .expect("request failed");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn round(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    clients: usize,
    per_client: usize,
) -> Round {
    // Setup (not timed): one funded wallet per client.
    let wallets = join_all((0..clients).map(|_| async {
        let (status, wallet) = post(
            client,
            format!("{base}/v1/wallets"),
            key,
            json!({"currency": "EUR"}),
        )
        .await;
        assert_eq!(status, 201, "{wallet}");
        let id = wallet["id"].as_str().unwrap().to_owned();
        let (status, _) = post(
            client,
            format!("{base}/v1/wallets/{id}/credit"),
            key,
            json!({"amount": "1000000.00", "currency": "EUR"}),
        )
        .await;
        assert_eq!(status, 201);
        id
    }))
    .await;

    let started = Instant::now();
    let per_client_latencies = join_all(wallets.iter().map(|wallet| async move {
        let mut latencies = Vec::with_capacity(per_client);
        for _ in 0..per_client {
            let sent = Instant::now();
            let (status, body) = post(
                client,
                format!("{base}/v1/wallets/{wallet}/debit"),
                key,
                json!({"amount": "1.00", "currency": "EUR"}),
            )
            .await;
            assert_eq!(status, 201, "{body}");
            latencies.push(sent.elapsed());
        }
        latencies
    }))
    .await;
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> = per_client_latencies.into_iter().flatten().collect();
    latencies.sort();
    Round {
        debits: latencies.len(),
        elapsed,
        latencies,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .get(1)
        .expect("base url")
        .trim_end_matches('/')
        .to_owned();
    let key = args.get(2).expect("api key").clone();
    let clients: usize = args.get(3).map_or(16, |a| a.parse().unwrap());
    let per_client: usize = args.get(4).map_or(200, |a| a.parse().unwrap());
    let rounds: usize = args.get(5).map_or(3, |a| a.parse().unwrap());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();

    let mut rates = Vec::new();
    for n in 1..=rounds {
        let r = round(&client, &base, &key, clients, per_client).await;
        let rate = r.debits as f64 / r.elapsed.as_secs_f64();
        println!(
            "round {n}: {} debits by {clients} clients in {:.2} s = {rate:.0} debits/s; latency p50 {:.2} ms, p99 {:.2} ms",
            r.debits,
            r.elapsed.as_secs_f64(),
            percentile(&r.latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&r.latencies, 0.99).as_secs_f64() * 1e3,
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "median: {:.0} debits/s over {rounds} rounds ({clients} clients, distinct wallets)",
        rates[rates.len() / 2]
    );
}
