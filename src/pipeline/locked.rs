//! Layer 3's first statements for every command that acts on a wallet: the wallet row, locked
//! `FOR UPDATE` for the rest of the transaction, as this tenant sees it, then the request's
//! idempotency marker, re-claimed.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::idempotency::Claim;
use super::transaction::TxError;
use crate::db::PgConn;
use crate::db::models::WalletRow;
use crate::db::schema::wallets;
use crate::domain::{TenantId, WalletId};

/// The tenant's wallet row-locked (`None` if it does not exist for this tenant), then the claim
/// re-asserted (its marker row-locked, still ours). Both statements go in one round trip: they
/// are pipelined on the connection, and Postgres runs them in the order sent, so the wallet row
/// is always locked before the key row, as everywhere else.
pub async fn lock_wallet_and_claim(
    conn: &PgConn,
    claim: &Claim,
    wallet: WalletId,
) -> Result<Option<WalletRow>, TxError> {
    // `biased`: polled in this order, so sent in this order.
    let (wallet, held) = tokio::try_join!(
        biased;
        lock_wallet(conn, claim.tenant(), wallet),
        claim.reassert(conn)
    )?;
    held?;
    Ok(wallet)
}

async fn lock_wallet(
    mut conn: &PgConn,
    tenant: TenantId,
    wallet: WalletId,
) -> QueryResult<Option<WalletRow>> {
    wallets::table
        .filter(wallets::id.eq(wallet.as_uuid()))
        .filter(wallets::tenant_id.eq(tenant.as_uuid()))
        .select(WalletRow::as_select())
        .for_update()
        .first(&mut conn)
        .await
        .optional()
}
