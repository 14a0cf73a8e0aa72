//! Fairness across replicas (issue 6): a hot wallet shared by two replicas is served by both.
//!
//! Guard: `lock.local_handoffs_max` with the contended mark. Without it, the replica whose local
//! queue holds the lock hands it from request to request at once, while the other replica's
//! contender polls with random back-off and finds the wallet free only by luck: long runs of
//! one replica's entries, and requests on the other that run into `lock.wait_ms_max`. Each
//! entry's `reference` names the replica that served it, so the ledger shows the runs.

use std::sync::atomic::{AtomicU32, Ordering};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, new_key};

const HANDOFFS_MAX: u32 = 4;
const CLIENTS_PER_REPLICA: usize = 6;
/// Longest run of one replica's entries allowed while both still have requests waiting: the
/// hand-off cap in turns, each turn a batch of at most this replica's clients (coalescing),
/// with two turns of slack for the requests already past their Redis attempt.
const RUN_MAX: usize = (HANDOFFS_MAX as usize + 2) * CLIENTS_PER_REPLICA;

const DEBITS_PER_CLIENT: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_hot_wallet_both_get_a_share() {
    let tuned = |s: &mut walletd::config::Settings| {
        // Shorter than one replica's whole run of debits, so an unfair lock times out.
        s.lock.wait_ms_max = 1500;
        s.lock.local_handoffs_max = HANDOFFS_MAX;
        s.database.pool_max_size = 8;
    };
    let first = TestApp::spawn_with(tuned).await;
    // The second replica serves the first one's tenant (same database, same key).
    let mut second = TestApp::spawn_on(first.database_url.clone(), tuned).await;
    second.tenant_id = first.tenant_id.clone();
    second.api_key = first.api_key.clone();
    let wallet = first.create_wallet("EUR").await;
    first.fund(&wallet, "100000.00").await;

    let timeouts = AtomicU32::new(0);
    let served = [AtomicU32::new(0), AtomicU32::new(0)];
    let clients = [&first, &second]
        .into_iter()
        .enumerate()
        .flat_map(|(i, app)| {
            let (timeouts, served, wallet) = (&timeouts, &served, &wallet);
            (0..CLIENTS_PER_REPLICA).map(move |_| async move {
                let path = format!("/v1/wallets/{wallet}/debit");
                let body =
                    json!({"amount": "1.00", "currency": "EUR", "reference": format!("replica-{i}")});
                for _ in 0..DEBITS_PER_CLIENT {
                    let response = app.post(&path, &new_key(), &body).await;
                    match response.status() {
                        StatusCode::CREATED => {
                            served[i].fetch_add(1, Ordering::Relaxed);
                        }
                        StatusCode::SERVICE_UNAVAILABLE => {
                            timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
                    }
                }
            })
        });
    join_all(clients).await;

    let per_replica = (CLIENTS_PER_REPLICA * DEBITS_PER_CLIENT) as u32;
    let (a, b) = (
        served[0].load(Ordering::Relaxed),
        served[1].load(Ordering::Relaxed),
    );
    assert_eq!(
        timeouts.load(Ordering::Relaxed),
        0,
        "no request timed out while the other replica was served (served {a} and {b})"
    );
    assert_eq!((a, b), (per_replica, per_replica));

    // In ledger order, while both replicas still had work, neither kept the wallet for long.
    let ledger = first.assert_invariants(&wallet).await;
    let served_by: Vec<&str> = ledger[1..]
        .iter()
        .map(|entry| {
            entry["reference"]
                .as_str()
                .unwrap_or_else(|| panic!("{entry}"))
        })
        .collect();
    let both_busy_until = ["replica-0", "replica-1"]
        .iter()
        .map(|r| served_by.iter().rposition(|s| s == r).unwrap())
        .min()
        .unwrap();
    let longest_run = served_by[..=both_busy_until]
        .chunk_by(|x, y| x == y)
        .map(<[&str]>::len)
        .max()
        .unwrap();
    assert!(
        longest_run <= RUN_MAX,
        "one replica served {longest_run} entries in a row while the other waited"
    );
}
