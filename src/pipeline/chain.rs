//! Giving the entries written before the hash chain existed their chain (run by `walletd
//! migrate` and `walletd serve` right after the migrations, under the same advisory lock).
//!
//! Wallet by wallet, in one transaction each: the wallet row is locked, its entries without a
//! hash are sealed in `seq` order exactly as new entries are (`Transaction::sealed`), and the
//! wallet's `last_hash` is set. The append-only trigger lets exactly this through, under the
//! transaction-local `walletd.chain_backfill` setting: a row without a hash getting its
//! `prev_hash` and `hash`, nothing else. Once no entry is left without a hash, the
//! `ledger_entries_hash_shape` constraint is validated, so every row has one from then on.

use diesel::prelude::*;
use diesel::sql_types::{Bool, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use uuid::Uuid;

use crate::db::PgConn;
use crate::db::models::{LedgerEntryRow, WalletRow};
use crate::db::schema::{ledger_entries, wallets};
use crate::representation::{GENESIS_HASH, Transaction};

/// Wallets chained per round of the outer loop (each in its own transaction).
const WALLETS_PER_ROUND: i64 = 100;

#[derive(QueryableByName)]
struct WalletToChain {
    #[diesel(sql_type = SqlUuid)]
    wallet_id: Uuid,
}

#[derive(QueryableByName)]
struct Validated {
    #[diesel(sql_type = Bool)]
    validated: bool,
}

/// Chains every entry that has no hash yet; returns how many wallets it chained.
pub async fn backfill(conn: &mut PgConn) -> anyhow::Result<u64> {
    let mut chained = 0;
    loop {
        let pending: Vec<WalletToChain> = diesel::sql_query(
            "SELECT DISTINCT wallet_id FROM ledger_entries WHERE hash IS NULL LIMIT $1",
        )
        .bind::<diesel::sql_types::BigInt, _>(WALLETS_PER_ROUND)
        .load(conn)
        .await?;
        if pending.is_empty() {
            break;
        }
        for wallet in pending {
            conn.transaction(async |c| chain_wallet(c, wallet.wallet_id).await)
                .await?;
            chained += 1;
        }
    }
    let constraint: Validated = diesel::sql_query(
        "SELECT convalidated AS validated FROM pg_constraint \
         WHERE conname = 'ledger_entries_hash_shape' AND conrelid = 'ledger_entries'::regclass",
    )
    .get_result(conn)
    .await?;
    if !constraint.validated {
        conn.batch_execute(
            "ALTER TABLE ledger_entries VALIDATE CONSTRAINT ledger_entries_hash_shape",
        )
        .await?;
    }
    if chained > 0 {
        tracing::info!(
            wallets = chained,
            "hash chain written for entries that had none"
        );
    }
    Ok(chained)
}

async fn chain_wallet(conn: &mut PgConn, wallet_id: Uuid) -> anyhow::Result<()> {
    conn.batch_execute("SET LOCAL walletd.chain_backfill = 'on'")
        .await?;
    let wallet: WalletRow = wallets::table
        .find(wallet_id)
        .select(WalletRow::as_select())
        .for_update()
        .first(conn)
        .await?;
    let entries: Vec<LedgerEntryRow> = ledger_entries::table
        .filter(ledger_entries::wallet_id.eq(wallet_id))
        .order(ledger_entries::seq.asc())
        .select(LedgerEntryRow::as_select())
        .load(conn)
        .await?;
    let mut prev_hash = GENESIS_HASH.to_owned();
    for entry in &entries {
        let hash = match &entry.hash {
            Some(hash) => hash.clone(),
            None => {
                let sealed = Transaction::sealed(entry, &prev_hash)?;
                diesel::update(
                    ledger_entries::table
                        .filter(ledger_entries::wallet_id.eq(wallet_id))
                        .filter(ledger_entries::seq.eq(entry.seq)),
                )
                .set((
                    ledger_entries::prev_hash.eq(&prev_hash),
                    ledger_entries::hash.eq(&sealed.hash),
                ))
                .execute(conn)
                .await?;
                sealed.hash
            }
        };
        prev_hash = hash;
    }
    if wallet.last_hash != prev_hash {
        diesel::update(wallets::table.find(wallet_id))
            .set(wallets::last_hash.eq(&prev_hash))
            .execute(conn)
            .await?;
    }
    Ok(())
}
