//! Layer 1: the idempotency key.
//!
//! A key is scoped to its tenant and bound to a fingerprint of the request. The first request
//! with a key commits an in-flight marker with a lease (so a twin arriving meanwhile gets 409,
//! and a request that crashed frees its key once the lease lapses). Inside the business
//! transaction the marker is claimed again with `FOR UPDATE` and must still carry our lease
//! token — that, plus the primary key on `(tenant_id, idempotency_key)`, is the real guard
//! against concurrent twins. The stored response commits in the same transaction as the
//! business write, so a key's answer and its effect exist together or not at all.
//!
//! A [`Claim`] is a guard: on every exit that neither committed an answer nor abandoned the
//! key explicitly (an error path, a panic, a cancelled task) its `Drop` frees the key in the
//! background, so a retry does not wait out the whole lease.
//!
//! Stored answers are dropped after `idempotency.retention_hours` (see [`super::retention`]);
//! the key row stays forever, in state `expired`, and a request with it answers 410.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::pg::expression::extensions::IntervalDsl;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Bytea, Int2, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::deadline::Deadline;
use super::outcome::{PipelineError, StoredResponse};
use super::transaction;
use crate::db::schema::idempotency_keys as keys;
use crate::db::{PgConn, PgPool};
use crate::domain::{IdempotencyKey, TenantId, WalletId};

/// Attempts to claim a key when another request keeps changing its state under us; each
/// round is two statements, so this bounds layer 1 to a handful of round trips.
const CLAIM_ATTEMPTS_MAX: u32 = 4;

/// SHA-256 over method, path and the canonical JSON body (members sorted, no whitespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn of(method: &str, path: &str, canonical_body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        for part in [method.as_bytes(), path.as_bytes(), canonical_body] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        Self(hasher.finalize().into())
    }
}

/// Everything that identifies one idempotent request.
#[derive(Debug, Clone)]
pub struct IdempotentRequest {
    pub tenant: TenantId,
    pub key: IdempotencyKey,
    pub fingerprint: Fingerprint,
    /// The wallet the request targets, when known before executing (all but wallet creation).
    pub wallet: Option<WalletId>,
}

/// The outcome of layer 1.
#[derive(Debug)]
pub enum Begin {
    /// We own the key: execute, then complete or abandon the claim.
    Claimed(Claim),
    /// The key already has an answer for this very request.
    Replay(StoredResponse),
}

/// Our lease on a key's in-flight marker. Not `Clone`: exactly one owner completes or frees it.
pub struct Claim {
    tenant: TenantId,
    key: IdempotencyKey,
    token: Uuid,
    /// Where to free the key from if the claim is dropped while still armed.
    pool: PgPool,
    /// True until the answer committed or the key was freed.
    armed: bool,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("tenant", &self.tenant)
            .field("key", &self.key)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

#[derive(QueryableByName)]
struct ExistingKey {
    #[diesel(sql_type = Bytea)]
    fingerprint: Vec<u8>,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    lease_token: Option<Uuid>,
    #[diesel(sql_type = Bool)]
    lease_expired: bool,
    #[diesel(sql_type = Nullable<Int2>)]
    response_status: Option<i16>,
    #[diesel(sql_type = Nullable<Bytea>)]
    response_body: Option<Vec<u8>>,
}

#[derive(QueryableByName)]
struct Token {
    #[diesel(sql_type = SqlUuid)]
    lease_token: Uuid,
}

/// Layer 1: replay a stored answer, refuse a reuse, an expired key or a twin in flight, or
/// claim the key.
pub async fn begin(
    pool: &PgPool,
    request: &IdempotentRequest,
    lease: Duration,
    deadline: Deadline,
) -> Result<Begin, PipelineError> {
    let mut conn = transaction::connection(pool, &deadline).await?;
    let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
    for _ in 0..CLAIM_ATTEMPTS_MAX {
        let token = Uuid::new_v4();
        // No conflict target: a racing twin may collide on the primary key or on the
        // (tenant, key, wallet) unique key first, and either means "the key exists". (DSL, so
        // the statement is prepared once per connection, like the others on the hot path.)
        let inserted: Option<Option<Uuid>> = diesel::insert_into(keys::table)
            .values((
                keys::tenant_id.eq(request.tenant.as_uuid()),
                keys::idempotency_key.eq(request.key.as_str()),
                keys::fingerprint.eq(&request.fingerprint.0[..]),
                keys::wallet_id.eq(request.wallet.map(|w| w.as_uuid())),
                keys::state.eq("in_progress"),
                keys::lease_token.eq(token),
                // The database's clock, as every lease comparison uses.
                keys::lease_expires_at
                    .eq((now.into_sql::<Timestamptz>() + lease_ms.milliseconds()).nullable()),
            ))
            .on_conflict_do_nothing()
            .returning(keys::lease_token)
            .get_result(&mut *conn)
            .await
            .optional()
            .map_err(PipelineError::from_db)?;
        if inserted.flatten() == Some(token) {
            return Ok(Begin::Claimed(claim(pool, request, token)));
        }

        let Some(existing) = read_existing(&mut conn, request).await? else {
            // The marker was abandoned between our INSERT and SELECT: try to claim again.
            continue;
        };
        if let Some(stored) = decided(&existing, request)? {
            return Ok(Begin::Replay(stored));
        }
        match existing.state.as_str() {
            "in_progress" if !existing.lease_expired => {
                return Err(PipelineError::IdempotencyKeyInProgress);
            }
            "in_progress" => {
                // The first request's lease lapsed (it crashed or hung): take the key over, but
                // only if its lease is still lapsed and nobody else took it first. A marker that
                // is row-locked belongs to a transaction still running (the first request is
                // alive after all): SKIP LOCKED makes that a 409 at once instead of a wait.
                let taken_over: Option<Token> = diesel::sql_query(
                    "WITH lapsed AS ( \
                         SELECT tenant_id, idempotency_key FROM idempotency_keys \
                         WHERE tenant_id = $1 AND idempotency_key = $2 \
                           AND state = 'in_progress' AND lease_token = $5 \
                           AND lease_expires_at < clock_timestamp() \
                         FOR UPDATE SKIP LOCKED) \
                     UPDATE idempotency_keys k \
                     SET lease_token = $3, lease_expires_at = clock_timestamp() + $4 * interval '1 millisecond' \
                     FROM lapsed \
                     WHERE k.tenant_id = lapsed.tenant_id AND k.idempotency_key = lapsed.idempotency_key \
                     RETURNING k.lease_token",
                )
                .bind::<SqlUuid, _>(request.tenant.as_uuid())
                .bind::<Text, _>(request.key.as_str())
                .bind::<SqlUuid, _>(token)
                .bind::<diesel::sql_types::BigInt, _>(lease_ms)
                .bind::<Nullable<SqlUuid>, _>(existing.lease_token)
                .get_result(&mut conn)
                .await
                .optional()
                .map_err(PipelineError::from_db)?;
                if taken_over.is_some_and(|row| row.lease_token == token) {
                    tracing::warn!(key = %request.key, "took over an idempotency key whose lease lapsed");
                    return Ok(Begin::Claimed(claim(pool, request, token)));
                }
                // Not taken over: the first request is still in its transaction (row locked),
                // or the key moved on (completed, freed, taken by another twin). Look again;
                // CLAIM_ATTEMPTS_MAX bounds the rounds, and running out is 409.
            }
            state => {
                return Err(PipelineError::Internal(anyhow::anyhow!(
                    "idempotency key in unexpected state {state:?}"
                )));
            }
        }
    }
    Err(PipelineError::IdempotencyKeyInProgress)
}

/// What a request that cannot be admitted now (its wallet's queue is full) is owed anyway:
/// a key already decided is replayed (or refused as reused or expired), a twin in flight is
/// 409; `None` means the key has no answer yet and the request is shed. Reads only.
pub async fn answer_without_claiming(
    pool: &PgPool,
    request: &IdempotentRequest,
    deadline: Deadline,
) -> Result<Option<StoredResponse>, PipelineError> {
    let mut conn = transaction::connection(pool, &deadline).await?;
    let Some(existing) = read_existing(&mut conn, request).await? else {
        return Ok(None);
    };
    if let Some(stored) = decided(&existing, request)? {
        return Ok(Some(stored));
    }
    if existing.state == "in_progress" && !existing.lease_expired {
        return Err(PipelineError::IdempotencyKeyInProgress);
    }
    Ok(None)
}

async fn read_existing(
    conn: &mut PgConn,
    request: &IdempotentRequest,
) -> Result<Option<ExistingKey>, PipelineError> {
    diesel::sql_query(
        "SELECT fingerprint, state, lease_token, \
                coalesce(lease_expires_at < clock_timestamp(), false) AS lease_expired, \
                response_status, response_body \
         FROM idempotency_keys WHERE tenant_id = $1 AND idempotency_key = $2",
    )
    .bind::<SqlUuid, _>(request.tenant.as_uuid())
    .bind::<Text, _>(request.key.as_str())
    .get_result(conn)
    .await
    .optional()
    .map_err(PipelineError::from_db)
}

/// The key's decided answer for this request, if it has one: the stored response, or a
/// refusal (expired past retention, whatever the request; another request's key).
fn decided(
    existing: &ExistingKey,
    request: &IdempotentRequest,
) -> Result<Option<StoredResponse>, PipelineError> {
    // Past retention the answer is gone but the key is not: whatever the request, nothing
    // executes (a very late retry must never charge twice).
    if existing.state == "expired" {
        return Err(PipelineError::IdempotencyKeyExpired);
    }
    if existing.fingerprint != request.fingerprint.0 {
        return Err(PipelineError::IdempotencyKeyReused);
    }
    match (
        existing.state.as_str(),
        existing.response_status,
        &existing.response_body,
    ) {
        ("completed", Some(status), Some(body)) => {
            let status = u16::try_from(status).map_err(|_| {
                PipelineError::Internal(anyhow::anyhow!("stored status {status} is invalid"))
            })?;
            Ok(Some(StoredResponse {
                status,
                body: body.clone(),
            }))
        }
        _ => Ok(None),
    }
}

fn claim(pool: &PgPool, request: &IdempotentRequest, token: Uuid) -> Claim {
    Claim {
        tenant: request.tenant,
        key: request.key.clone(),
        token,
        pool: pool.clone(),
        armed: true,
    }
}

/// Inside a transaction, the claim turned out to belong to someone else (our lease lapsed
/// and another request took the key over). The transaction must roll back.
#[derive(Debug, thiserror::Error)]
#[error("idempotency claim lost: the lease lapsed and another request took the key")]
pub struct ClaimLost;

impl Claim {
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Re-claims the key inside the business transaction: row-locks the marker and checks it
    /// still carries our token. Call it right after locking the wallet row (or pipelined after
    /// it: `locked::lock_wallet_and_claim`).
    pub async fn reassert(
        &self,
        mut conn: &PgConn,
    ) -> Result<Result<(), ClaimLost>, diesel::result::Error> {
        let held: Option<Option<Uuid>> = keys::table
            .filter(keys::tenant_id.eq(self.tenant.as_uuid()))
            .filter(keys::idempotency_key.eq(self.key.as_str()))
            .filter(keys::state.eq("in_progress"))
            .filter(keys::lease_token.eq(self.token))
            .select(keys::lease_token)
            .for_update()
            .first(&mut conn)
            .await
            .optional()?;
        match held.flatten() {
            Some(token) if token == self.token => Ok(Ok(())),
            _ => Ok(Err(ClaimLost)),
        }
    }

    /// Stores the response in the same transaction as the business write.
    pub async fn complete(
        &self,
        mut conn: &PgConn,
        response: &StoredResponse,
    ) -> Result<(), diesel::result::Error> {
        let status = i16::try_from(response.status).unwrap_or(500);
        let updated = diesel::update(
            keys::table
                .filter(keys::tenant_id.eq(self.tenant.as_uuid()))
                .filter(keys::idempotency_key.eq(self.key.as_str()))
                .filter(keys::lease_token.eq(self.token)),
        )
        .set((
            keys::state.eq("completed"),
            keys::lease_token.eq(None::<Uuid>),
            keys::lease_expires_at.eq(None::<DateTime<Utc>>),
            keys::response_status.eq(status),
            keys::response_body.eq(&response.body),
            // The transaction's start (the same for every request of a batch): retention
            // only needs the day.
            keys::completed_at.eq(now),
        ))
        .execute(&mut conn)
        .await?;
        if updated == 1 {
            Ok(())
        } else {
            // reassert() locked the row for this transaction, so this cannot happen unless the
            // caller skipped it; refuse to commit an effect without its stored answer.
            Err(diesel::result::Error::RollbackTransaction)
        }
    }

    /// The answer committed with the business write: nothing is left to free.
    pub fn committed(mut self) {
        self.armed = false;
    }

    /// Frees the key after an outcome that is not stored (a 4xx input error found late, a
    /// 5xx), so that a retry executes afresh. Best effort: if the database is unreachable the
    /// lease lapses on its own.
    pub async fn abandon(mut self) {
        self.armed = false;
        free_key(&self.pool, self.tenant, &self.key, self.token).await;
    }
}

impl Drop for Claim {
    /// A claim dropped while armed (an early return, a panic, a cancelled task) frees its key
    /// in the background. The delete names our lease token, so it can never free a key that
    /// has since completed or been taken over.
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (pool, tenant, key, token) =
            (self.pool.clone(), self.tenant, self.key.clone(), self.token);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            tracing::warn!(%key, "idempotency claim dropped without an answer; freeing the key");
            runtime.spawn(async move { free_key(&pool, tenant, &key, token).await });
        }
    }
}

async fn free_key(pool: &PgPool, tenant: TenantId, key: &IdempotencyKey, token: Uuid) {
    let Ok(mut conn) = pool.get().await else {
        tracing::warn!(%key, "could not free idempotency key; its lease will lapse");
        return;
    };
    let deleted = diesel::sql_query(
        "DELETE FROM idempotency_keys \
         WHERE tenant_id = $1 AND idempotency_key = $2 \
           AND state = 'in_progress' AND lease_token = $3",
    )
    .bind::<SqlUuid, _>(tenant.as_uuid())
    .bind::<Text, _>(key.as_str())
    .bind::<SqlUuid, _>(token)
    .execute(&mut conn)
    .await;
    if let Err(error) = deleted {
        tracing::warn!(%key, %error, "could not free idempotency key; its lease will lapse");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_separates_its_parts() {
        let a = Fingerprint::of("POST", "/v1/wallets", b"{}");
        assert_eq!(a, Fingerprint::of("POST", "/v1/wallets", b"{}"));
        assert_ne!(a, Fingerprint::of("POST", "/v1/wallets/", b"}"));
        assert_ne!(a, Fingerprint::of("POST", "/v1/wallet", b"s{}"));
    }
}
