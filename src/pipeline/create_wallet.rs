//! Wallet creation: idempotent like every mutating POST, but with no lock to take (the wallet
//! does not exist yet) and no ledger entry (a new wallet's balance is 0).

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::deadline::Deadline;
use super::idempotency::{Claim, StoredResponse};
use super::transaction::{self, TxError};
use crate::api::error::ApiError;
use crate::api::representations::Wallet;
use crate::config::DatabaseSettings;
use crate::db::models::{NewWallet, WalletRow};
use crate::db::schema::wallets;
use crate::db::{PgConn, PgPool};
use crate::domain::{BoundedText, Currency, NonNegativeAmount, WalletId};

#[derive(Debug, Clone)]
pub struct CreateWalletCommand {
    pub currency: Currency,
    pub owner_ref: Option<BoundedText>,
    pub overdraft_limit: NonNegativeAmount,
}

pub async fn create_wallet(
    pool: &PgPool,
    claim: &Claim,
    command: &CreateWalletCommand,
    deadline: Deadline,
    database: &DatabaseSettings,
) -> Result<StoredResponse, ApiError> {
    let mut conn = transaction::connection(pool, &deadline).await?;
    transaction::within_deadline(&deadline, async {
        conn.transaction(async |c| {
            transaction::bound_statements(c, &deadline, database)
                .await
                .map_err(TxError::Db)?;
            create_once(c, claim, command).await
        })
        .await
        .map_err(ApiError::from)
    })
    .await
}

async fn create_once(
    conn: &mut PgConn,
    claim: &Claim,
    command: &CreateWalletCommand,
) -> Result<StoredResponse, TxError> {
    claim.reassert(conn).await??;
    let row: WalletRow = diesel::insert_into(wallets::table)
        .values(NewWallet {
            id: WalletId::generate().as_uuid(),
            tenant_id: claim.tenant().as_uuid(),
            currency: command.currency.code(),
            owner_ref: command.owner_ref.as_ref().map(BoundedText::as_str),
            overdraft_limit: command.overdraft_limit.value(),
        })
        .returning(WalletRow::as_returning())
        .get_result(conn)
        .await?;
    let wallet = Wallet::from_row(&row).map_err(TxError::Render)?;
    let body = serde_json::to_vec(&wallet).map_err(|e| TxError::Render(e.into()))?;
    let response = StoredResponse { status: 201, body };
    claim.complete(conn, &response).await?;
    Ok(response)
}
