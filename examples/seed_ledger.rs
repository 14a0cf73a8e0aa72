//! Seeds a private, migrated database with a large, valid ledger for measuring `walletd audit`
//! and `GET /v1/ledger/export`: one new tenant (all scopes), `wallets` EUR wallets, and
//! `entries` entries spread over them, chained exactly as the service chains them
//! (`Transaction::sealed`), with every row the entries name (idempotency keys) and each wallet
//! row moved to its ledger's end. Rows go in multi-row INSERTs with the triggers off for this
//! session only (`SET session_replication_role = replica`): never point it at a shared
//! database. Prints one JSON line: {"tenant_id","api_key","wallets":[…],"from","to"}.
//!
//! Usage: seed_ledger <database_url> <entries> [wallets=1]
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;
use std::time::Instant;

use chrono::{Duration as TimeDelta, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use rust_decimal::Decimal;
use serde_json::json;
use uuid::Uuid;
use walletd::db::models::{LedgerEntryRow, NewLedgerEntry};
use walletd::db::schema::ledger_entries;
use walletd::domain::Scope;
use walletd::representation::{GENESIS_HASH, Transaction, render_timestamp};

/// Rows per INSERT: 19 columns each, well under Postgres's 65,535 bind parameters.
const ROWS_PER_INSERT: usize = 1000;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, entries, wallet_count) = match args.as_slice() {
        [_, url, entries] => (url.clone(), entries.parse::<i64>().unwrap(), 1),
        [_, url, entries, wallets] => (
            url.clone(),
            entries.parse::<i64>().unwrap(),
            wallets.parse::<i64>().unwrap(),
        ),
        _ => {
            eprintln!("usage: seed_ledger <database_url> <entries> [wallets=1]");
            std::process::exit(2);
        }
    };
    assert!(entries > 0 && wallet_count > 0 && wallet_count <= entries);
    let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
    let issued = walletd::auth::keys::create_tenant(&mut conn, "seed", &Scope::ALL)
        .await
        .unwrap();
    let tenant_id = Uuid::parse_str(&issued.tenant_id).unwrap();
    conn.batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();

    let started = Instant::now();
    // One entry every 100 µs, the last a minute ago.
    let step = TimeDelta::microseconds(100);
    let first_at = Utc::now() - TimeDelta::minutes(1) - step * i32::try_from(entries).unwrap();
    let wallets: Vec<Uuid> = (0..wallet_count).map(|_| Uuid::now_v7()).collect();
    for wallet in &wallets {
        conn.batch_execute(&format!(
            "INSERT INTO wallets (id, tenant_id, currency) VALUES ('{wallet}', '{tenant_id}', 'EUR')"
        ))
        .await
        .unwrap();
    }
    let mut balance = vec![Decimal::ZERO; wallets.len()];
    let mut last_seq = vec![0_i64; wallets.len()];
    let mut last_hash = vec![GENESIS_HASH.to_owned(); wallets.len()];
    let (credit, debit) = (
        Decimal::from_str("10.00").unwrap(),
        Decimal::from_str("3.25").unwrap(),
    );
    let mut batch: Vec<LedgerEntryRow> = Vec::with_capacity(ROWS_PER_INSERT);
    for n in 0..entries {
        let w = usize::try_from(n % wallet_count).unwrap();
        let seq = last_seq[w] + 1;
        let (kind, amount) = if seq % 4 == 0 {
            ("debit", debit)
        } else {
            ("credit", credit)
        };
        let after = if kind == "credit" {
            balance[w] + amount
        } else {
            balance[w] - amount
        };
        let mut row = LedgerEntryRow {
            wallet_id: wallets[w],
            seq,
            id: Uuid::now_v7(),
            tenant_id,
            entry_type: kind.to_owned(),
            amount,
            currency: "EUR".into(),
            balance_before: balance[w],
            balance_after: after,
            reference: Some(format!("booking-{n}")),
            description: (seq % 3 == 0).then(|| "Booking payment".to_owned()),
            metadata: json!({"booking": {"id": n, "nights": seq % 7 + 1}, "rate": 1.5}),
            idempotency_key: format!("seed-{n}"),
            created_at: first_at + step * i32::try_from(n).unwrap(),
            direction: None,
            hold_id: None,
            reverses: None,
            prev_hash: Some(last_hash[w].clone()),
            hash: None,
        };
        let sealed = Transaction::sealed(&row, &last_hash[w]).unwrap();
        row.hash = Some(sealed.hash.clone());
        last_hash[w] = sealed.hash;
        last_seq[w] = seq;
        balance[w] = after;
        batch.push(row);
        if batch.len() == ROWS_PER_INSERT || n + 1 == entries {
            let values: Vec<NewLedgerEntry<'_>> = batch.iter().map(new_entry).collect();
            diesel::insert_into(ledger_entries::table)
                .values(&values)
                .execute(&mut conn)
                .await
                .unwrap();
            batch.clear();
        }
        if (n + 1) % 100_000 == 0 {
            eprintln!("{} entries in {:?}", n + 1, started.elapsed());
        }
    }
    for (w, wallet) in wallets.iter().enumerate() {
        conn.batch_execute(&format!(
            "UPDATE wallets SET balance = {}, last_seq = {}, last_hash = '{}', version = {} \
             WHERE id = '{wallet}'",
            balance[w],
            last_seq[w],
            last_hash[w],
            last_seq[w] + 1
        ))
        .await
        .unwrap();
    }
    conn.batch_execute(&format!(
        "INSERT INTO idempotency_keys (tenant_id, idempotency_key, fingerprint, wallet_id, state, \
             response_status, response_body, completed_at) \
         SELECT tenant_id, idempotency_key, sha256(idempotency_key::bytea), wallet_id, \
             'completed', 201, '\\x7b7d'::bytea, created_at \
         FROM ledger_entries WHERE tenant_id = '{tenant_id}'; \
         SET session_replication_role = origin; ANALYZE ledger_entries; ANALYZE wallets;"
    ))
    .await
    .unwrap();
    eprintln!("{entries} entries in {:?}", started.elapsed());
    let last_at = first_at + step * i32::try_from(entries).unwrap();
    println!(
        "{}",
        json!({
            "tenant_id": issued.tenant_id,
            "api_key": issued.api_key,
            "wallets": wallets,
            "from": render_timestamp(first_at),
            "to": render_timestamp(last_at + TimeDelta::seconds(1)),
        })
    );
}

fn new_entry(row: &LedgerEntryRow) -> NewLedgerEntry<'_> {
    NewLedgerEntry {
        wallet_id: row.wallet_id,
        seq: row.seq,
        id: row.id,
        tenant_id: row.tenant_id,
        entry_type: &row.entry_type,
        amount: row.amount,
        currency: &row.currency,
        balance_before: row.balance_before,
        balance_after: row.balance_after,
        reference: row.reference.as_deref(),
        description: row.description.as_deref(),
        metadata: &row.metadata,
        idempotency_key: &row.idempotency_key,
        created_at: row.created_at,
        direction: row.direction.as_deref(),
        hold_id: row.hold_id,
        reverses: row.reverses,
        prev_hash: row.prev_hash.as_deref().unwrap(),
        hash: row.hash.as_deref().unwrap(),
    }
}
