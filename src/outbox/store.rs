//! The relay's reads and writes of `outbox_events`.
//!
//! The read takes the rows not yet published, in (wallet, version) order, for the partitions
//! this relay leases. It never reads "after the last row seen": a transaction that took its
//! place earlier but committed later is still unpublished, so the next read finds it. Within
//! one wallet a later version cannot commit before an earlier one (both are written under the
//! wallet's row lock), so a read that sees version n+1 sees version n too, published or not.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Integer, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::db::PgConn;
use crate::db::prepared::Prepared;

/// Which relay partition a wallet belongs to: the last byte of its id (random in a UUIDv7)
/// modulo the partition count. The same expression is used in SQL.
pub fn partition_of(wallet: Uuid, partitions: u16) -> u16 {
    u16::from(wallet.as_bytes()[15]) % partitions
}

/// An event to publish.
#[derive(Debug, Clone, QueryableByName)]
pub struct UnpublishedEvent {
    #[diesel(sql_type = SqlUuid)]
    pub wallet_id: Uuid,
    #[diesel(sql_type = BigInt)]
    pub wallet_version: i64,
    #[diesel(sql_type = Text)]
    pub payload: String,
    #[diesel(sql_type = Timestamptz)]
    pub occurred_at: DateTime<Utc>,
}

/// The row of a published event.
#[derive(Debug, Clone, Copy)]
pub struct PublishedKey {
    pub wallet_id: Uuid,
    pub wallet_version: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

/// Up to `limit` unpublished events of the given partitions, in per-wallet version order.
pub async fn unpublished(
    conn: &mut PgConn,
    partitions: u16,
    held: &[u16],
    limit: u32,
) -> diesel::QueryResult<Vec<UnpublishedEvent>> {
    let held: Vec<i32> = held.iter().map(|p| i32::from(*p)).collect();
    Prepared(
        diesel::sql_query(
            "SELECT wallet_id, wallet_version, payload, occurred_at FROM outbox_events \
         WHERE published_at IS NULL AND get_byte(uuid_send(wallet_id), 15) % $1 = ANY($2) \
         ORDER BY wallet_id, wallet_version LIMIT $3",
        )
        .bind::<Integer, _>(i32::from(partitions))
        .bind::<Array<Integer>, _>(held)
        .bind::<BigInt, _>(i64::from(limit)),
    )
    .load(conn)
    .await
}

/// Marks published events (those already marked are left as they are).
pub async fn mark_published(
    conn: &mut PgConn,
    keys: &[PublishedKey],
    at: DateTime<Utc>,
) -> diesel::QueryResult<usize> {
    let wallets: Vec<Uuid> = keys.iter().map(|k| k.wallet_id).collect();
    let versions: Vec<i64> = keys.iter().map(|k| k.wallet_version).collect();
    Prepared(
        diesel::sql_query(
            "UPDATE outbox_events SET published_at = $3 \
         WHERE (wallet_id, wallet_version) IN (SELECT * FROM unnest($1::uuid[], $2::bigint[])) \
           AND published_at IS NULL",
        )
        .bind::<Array<SqlUuid>, _>(wallets)
        .bind::<Array<BigInt>, _>(versions)
        .bind::<Timestamptz, _>(at),
    )
    .execute(conn)
    .await
}

/// Deletes at most `batch` events published before `before`; returns how many.
pub async fn prune(
    conn: &mut PgConn,
    before: DateTime<Utc>,
    batch: u32,
) -> diesel::QueryResult<usize> {
    Prepared(
        diesel::sql_query(
            "DELETE FROM outbox_events WHERE (wallet_id, wallet_version) IN ( \
             SELECT wallet_id, wallet_version FROM outbox_events \
             WHERE published_at IS NOT NULL AND published_at < $1 LIMIT $2)",
        )
        .bind::<Timestamptz, _>(before)
        .bind::<BigInt, _>(i64::from(batch)),
    )
    .execute(conn)
    .await
}

/// How many events wait to be published (counted up to `cap`, so the count stays cheap).
pub async fn backlog(conn: &mut PgConn, cap: i64) -> diesel::QueryResult<i64> {
    let counted: Count = Prepared(
        diesel::sql_query(
            "SELECT count(*) AS count FROM \
         (SELECT 1 FROM outbox_events WHERE published_at IS NULL LIMIT $1) waiting",
        )
        .bind::<BigInt, _>(cap),
    )
    .get_result(conn)
    .await?;
    Ok(counted.count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_every_wallet_and_stay_in_range() {
        let mut seen = [false; 16];
        for _ in 0..2000 {
            let p = partition_of(Uuid::now_v7(), 16);
            assert!(p < 16);
            seen[usize::from(p)] = true;
        }
        assert!(
            seen.iter().all(|s| *s),
            "2000 random wallets reach all 16 partitions"
        );
        assert_eq!(partition_of(Uuid::now_v7(), 1), 0);
    }
}
