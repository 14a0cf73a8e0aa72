//! Wallet creation: idempotent like every mutating POST, but with no lock to take (the wallet
//! does not exist yet) and no ledger entry (a new wallet's balance is 0).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::append::entry_time;
use super::changes::Changes;
use super::idempotency::Claim;
use super::outcome::StoredResponse;
use super::transaction::TxError;
use crate::db::PgConn;
use crate::db::models::{NewWallet, WalletRow};
use crate::db::schema::wallets;
use crate::domain::{BoundedText, Currency, NonNegativeAmount, WalletId};
use crate::representation::Wallet;

#[derive(Debug, Clone)]
pub struct CreateWalletCommand {
    pub currency: Currency,
    pub owner_ref: Option<BoundedText>,
    pub overdraft_limit: NonNegativeAmount,
}

/// Inside the transaction: the new wallet row and its stored answer.
pub(super) async fn create_once(
    conn: &mut PgConn,
    claim: &Claim,
    command: &CreateWalletCommand,
    changes: &mut Changes,
) -> Result<StoredResponse, TxError> {
    let at = entry_time();
    let row: WalletRow = diesel::insert_into(wallets::table)
        .values(NewWallet {
            id: WalletId::generate().as_uuid(),
            tenant_id: claim.tenant().as_uuid(),
            currency: command.currency.code(),
            owner_ref: command.owner_ref.as_ref().map(BoundedText::as_str),
            overdraft_limit: command.overdraft_limit.value(),
            created_at: at,
            updated_at: at,
        })
        .returning(WalletRow::as_returning())
        .get_result(conn)
        .await?;
    changes.wallet_created(&row)?;
    let wallet = Wallet::from_row(&row).map_err(TxError::Render)?;
    let body = serde_json::to_vec(&wallet).map_err(|e| TxError::Render(e.into()))?;
    let response = StoredResponse { status: 201, body };
    Ok(response)
}
