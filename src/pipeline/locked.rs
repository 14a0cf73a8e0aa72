//! Layer 3's first statement for every command that acts on a wallet: the wallet row, locked
//! `FOR UPDATE` for the rest of the transaction, as this tenant sees it. Everything the
//! command then decides is decided under this lock; its key's row is written last, with the
//! answer ([`super::idempotency::Claim::complete`]).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::transaction::TxError;
use crate::db::PgConn;
use crate::db::models::WalletRow;
use crate::db::schema::wallets;
use crate::domain::{TenantId, WalletId};

/// The tenant's wallet row-locked (`None` if it does not exist for this tenant).
pub async fn lock_wallet(
    mut conn: &PgConn,
    tenant: TenantId,
    wallet: WalletId,
) -> Result<Option<WalletRow>, TxError> {
    Ok(wallets::table
        .filter(wallets::id.eq(wallet.as_uuid()))
        .filter(wallets::tenant_id.eq(tenant.as_uuid()))
        .select(WalletRow::as_select())
        .for_update()
        .first(&mut conn)
        .await
        .optional()?)
}
