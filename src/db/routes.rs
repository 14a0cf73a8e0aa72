//! From an entry's or hold's id to its wallet without visiting every wallet: such an id is the
//! result id of the request that produced it (`IdempotencyKey::result_id`), so the key table,
//! keyed by that id, names the wallet in one probe; the then wallet-scoped lookup names the
//! wallet as every other statement does (docs/scale-out.md). Ids written before result ids
//! existed are found in `routes_before_result_ids`.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::PgConn;
use super::schema::{idempotency_keys, routes_before_result_ids};

/// The wallet of the tenant's entry or hold `id`, if the id is one (a wallet-less key, such as
/// a wallet creation's, is no route). Callers still look the row up by `(wallet_id, id)`: an
/// id can route to a wallet whose request stored a decline and wrote nothing.
pub async fn wallet_of(conn: &mut PgConn, tenant: Uuid, id: Uuid) -> QueryResult<Option<Uuid>> {
    let routed: Option<Option<Uuid>> = idempotency_keys::table
        .find(id)
        .filter(idempotency_keys::tenant_id.eq(tenant))
        .select(idempotency_keys::wallet_id)
        .first(conn)
        .await
        .optional()?;
    if let Some(wallet) = routed {
        return Ok(wallet);
    }
    routes_before_result_ids::table
        .find(id)
        .filter(routes_before_result_ids::tenant_id.eq(tenant))
        .select(routes_before_result_ids::wallet_id)
        .first(conn)
        .await
        .optional()
}
