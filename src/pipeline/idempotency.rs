//! Layer 1: the idempotency key.
//!
//! A key is scoped to its tenant and bound to a fingerprint of the request. Its answer is
//! written once, in the transaction of the effect it answers for ([`Claim::complete`]), as one
//! row keyed by the key's result id (see [`IdempotencyKey::result_id`]): a key's answer and its
//! effect exist together or not at all, with one commit.
//!
//! Before that, in one Redis round trip, a cached answer is replayed or this request's
//! in-flight marker is set ([`ReplayCache::lookup_and_mark`]); a twin that finds the marker
//! gets 409 unless Postgres already holds the answer. The marker sheds twins; the guard is the
//! database: a second row for a key is a primary-key violation that rolls the loser's whole
//! transaction back, and the loser is then answered from the row that won
//! ([`stored_answer`]). With Redis down there is no marker, so Postgres is asked first.
//!
//! A [`Claim`] is a guard: on every exit that neither stored an answer nor released the key
//! explicitly (an error path, a panic, a cancelled task) its `Drop` clears the marker in the
//! background, so a retry does not wait out the lease.
//!
//! Stored answers are dropped after `idempotency.retention_hours` (see [`super::retention`]);
//! the key row stays forever, in state `expired`, and a request with it answers 410.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel_async::RunQueryDsl;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::deadline::Deadline;
use super::outcome::{PipelineError, StoredResponse};
use super::replay_cache::{Lookup, ReplayCache};
use super::transaction::{self, TxError};
use crate::db::PgPool;
use crate::db::models::NewStoredAnswer;
use crate::db::schema::idempotency_keys as keys;
use crate::domain::{HoldId, IdempotencyKey, TenantId, TransactionId, WalletId};

/// The unique keys a request violates when its key already produced its effect: the key
/// table's primary key, and on the wallet's own tables the keys of what a request produces
/// (its id is the key's result id, and one entry or hold per key and wallet). A twin meets
/// one of these (which one depends on how far it got) and is answered from the key's row.
pub const KEY_TAKEN_CONSTRAINTS: [&str; 5] = [
    "idempotency_keys_pkey",
    "ledger_entries_id",
    "ledger_entries_one_per_key",
    "holds_pkey",
    "holds_one_per_key",
];

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

impl IdempotentRequest {
    /// The id of the key's row and of what the request produces (its entry, its hold).
    pub fn result_id(&self) -> Uuid {
        self.key.result_id(self.tenant)
    }
}

/// The outcome of layer 1.
#[derive(Debug)]
pub enum Begin {
    /// Nothing is stored for the key and no twin is marked running: execute, then store the
    /// answer with the effect, or release the claim.
    Claimed(Claim),
    /// The key already has an answer for this very request.
    Replay(StoredResponse),
}

/// This request's hold on a key until its answer is stored: the in-flight marker it set (none
/// when Redis was down). Not `Clone`: exactly one owner stores the answer or releases it.
pub struct Claim {
    request: IdempotentRequest,
    /// Our marker's token, if we set one.
    marker: Option<Uuid>,
    /// Where the marker lives (and the answer is cached).
    cache: ReplayCache,
    /// True until the answer was settled or the key released.
    armed: bool,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("tenant", &self.request.tenant)
            .field("key", &self.request.key)
            .field("marked", &self.marker.is_some())
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

/// Layer 1: replay a stored answer, refuse a reuse, an expired key or a twin in flight, or
/// claim the key. A fresh request costs one Redis round trip and no Postgres one.
pub async fn begin(
    pool: &PgPool,
    cache: &ReplayCache,
    request: &IdempotentRequest,
    lease: Duration,
    deadline: Deadline,
) -> Result<Begin, PipelineError> {
    let token = Uuid::new_v4();
    let marker = match cache.lookup_and_mark(request, token, lease).await {
        Lookup::Replay(stored) => return Ok(Begin::Replay(stored)),
        Lookup::Reused => return Err(PipelineError::IdempotencyKeyReused),
        Lookup::Marked => Some(token),
        // Someone marked the key: it runs now, or it just stored its answer (or crashed and
        // its marker lapses).
        Lookup::Busy => {
            return match stored_answer(pool, request, deadline).await? {
                Some(stored) => Ok(Begin::Replay(stored)),
                None => Err(PipelineError::IdempotencyKeyInProgress),
            };
        }
        // No marker to be had: Postgres is the only one that knows.
        Lookup::Unavailable => match stored_answer(pool, request, deadline).await? {
            Some(stored) => return Ok(Begin::Replay(stored)),
            None => None,
        },
    };
    Ok(Begin::Claimed(Claim {
        request: request.clone(),
        marker,
        cache: cache.clone(),
        armed: true,
    }))
}

#[derive(Queryable)]
struct StoredKey {
    tenant_id: Uuid,
    idempotency_key: String,
    fingerprint: Vec<u8>,
    state: String,
    response_status: i16,
    response_body: Option<Vec<u8>>,
}

/// What Postgres holds for the key, read-only: its answer for this request, a refusal
/// (another request's key; past retention), or `None` (nothing stored).
pub async fn stored_answer(
    pool: &PgPool,
    request: &IdempotentRequest,
    deadline: Deadline,
) -> Result<Option<StoredResponse>, PipelineError> {
    let mut conn = transaction::connection(pool, &deadline).await?;
    let row: Option<StoredKey> = transaction::within_deadline(&deadline, async {
        keys::table
            .find(request.result_id())
            .select((
                keys::tenant_id,
                keys::idempotency_key,
                keys::fingerprint,
                keys::state,
                keys::response_status,
                keys::response_body,
            ))
            .first(&mut conn)
            .await
            .optional()
            .map_err(PipelineError::from_db)
    })
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    // The database checks that a row's id is derived from its tenant and key; a 122-bit
    // collision would still be refused here rather than answered with another key's answer.
    if row.tenant_id != request.tenant.as_uuid() || row.idempotency_key != request.key.as_str() {
        return Err(PipelineError::Internal(anyhow::anyhow!(
            "result id {} names another key",
            request.result_id()
        )));
    }
    decided(&row, request).map(Some)
}

/// The key's decided answer for this request: the stored response, or a refusal (expired past
/// retention, whatever the request; another request's key).
fn decided(row: &StoredKey, request: &IdempotentRequest) -> Result<StoredResponse, PipelineError> {
    // Past retention the answer is gone but the key is not: whatever the request, nothing
    // executes (a very late retry must never charge twice).
    if row.state == "expired" {
        return Err(PipelineError::IdempotencyKeyExpired);
    }
    if row.fingerprint != request.fingerprint.0 {
        return Err(PipelineError::IdempotencyKeyReused);
    }
    let (Ok(status), Some(body)) = (u16::try_from(row.response_status), &row.response_body) else {
        return Err(PipelineError::Internal(anyhow::anyhow!(
            "key row in state {:?} has no usable answer",
            row.state
        )));
    };
    Ok(StoredResponse {
        status,
        body: body.clone(),
    })
}

impl Claim {
    pub fn key(&self) -> &IdempotencyKey {
        &self.request.key
    }

    pub fn tenant(&self) -> TenantId {
        self.request.tenant
    }

    /// The id of what this request produces (its ledger entry, its hold).
    pub fn result_id(&self) -> Uuid {
        self.request.result_id()
    }

    /// The wallet the request turned out to target (a capture, void or reversal learns it
    /// after layer 1): its key row names it.
    pub fn targets(&mut self, wallet: Option<WalletId>) {
        self.request.wallet = wallet;
    }

    /// The id of the ledger entry this request appends, if it appends one.
    pub fn transaction_id(&self) -> TransactionId {
        TransactionId::from_uuid(self.result_id())
    }

    /// The id of the hold this request places, if it places one.
    pub fn hold_id(&self) -> HoldId {
        HoldId::from_uuid(self.result_id())
    }

    /// Stores the answer in the same transaction as the business write: the key's one row.
    /// A row already there (a twin won, or the answer was stored before and its cached copy
    /// is gone) is [`TxError::KeyTaken`]: the transaction must roll back, and the request is
    /// answered from that row.
    pub async fn complete(
        &self,
        conn: &crate::db::PgConn,
        response: &StoredResponse,
        at: DateTime<Utc>,
    ) -> Result<(), TxError> {
        store_answer(conn, &self.answer_row(response, at)).await
    }

    /// The key's row with `response` as its stored answer.
    pub fn answer_row<'a>(
        &'a self,
        response: &'a StoredResponse,
        at: DateTime<Utc>,
    ) -> NewStoredAnswer<'a> {
        NewStoredAnswer {
            result_id: self.result_id(),
            tenant_id: self.request.tenant.as_uuid(),
            idempotency_key: self.request.key.as_str(),
            fingerprint: &self.request.fingerprint.0[..],
            wallet_id: self.request.wallet.map(|w| w.as_uuid()),
            state: "completed",
            response_status: i16::try_from(response.status).unwrap_or(500),
            response_body: &response.body,
            created_at: at,
            completed_at: at,
        }
    }

    /// The key's answer is settled (committed by us, or found stored): cache it for the next
    /// retry and clear our marker.
    pub async fn answered(mut self, stored: &StoredResponse) {
        self.armed = false;
        self.cache.store(&self.request, stored, self.marker).await;
    }

    /// Releases the key after an outcome that is not stored (a 4xx input error found late, a
    /// 5xx), so that a retry executes afresh. Best effort: if Redis is unreachable the marker
    /// lapses on its own.
    pub async fn abandon(mut self) {
        self.armed = false;
        if let Some(token) = self.marker {
            self.cache.unmark(&self.request, token).await;
        }
    }
}

/// Stores one answer in the transaction of its business writes: a plain `VALUES` row, which
/// a distributed database routes to the key's shard. A key whose row is already there is
/// [`TxError::KeyTaken`] (see [`Claim::complete`]).
async fn store_answer(
    mut conn: &crate::db::PgConn,
    row: &NewStoredAnswer<'_>,
) -> Result<(), TxError> {
    let inserted = diesel::insert_into(keys::table)
        .values(row)
        .execute(&mut conn)
        .await;
    inserted.map(drop).map_err(TxError::from)
}

/// Stores a batch's answers in one statement ([`store_answer`] for one); nothing when there
/// are none.
pub async fn store_answers(
    mut conn: &crate::db::PgConn,
    rows: &[NewStoredAnswer<'_>],
) -> Result<(), TxError> {
    match rows {
        [] => Ok(()),
        [row] => store_answer(conn, row).await,
        rows => {
            let inserted = InsertAnswers::new(rows).execute(&mut conn).await;
            inserted.map(drop).map_err(TxError::from)
        }
    }
}

/// Answers as one `INSERT … SELECT FROM unnest(…)`, a column per array: one statement of
/// fixed shape whatever the number of rows, so it is prepared once per connection (a multi-row
/// `VALUES` has a shape per row count and would be prepared each time).
struct InsertAnswers<'a> {
    result_ids: Vec<Uuid>,
    tenant_ids: Vec<Uuid>,
    keys: Vec<&'a str>,
    fingerprints: Vec<&'a [u8]>,
    wallet_ids: Vec<Option<Uuid>>,
    states: Vec<&'static str>,
    statuses: Vec<i16>,
    bodies: Vec<&'a [u8]>,
    created_at: Vec<DateTime<Utc>>,
    completed_at: Vec<DateTime<Utc>>,
}

impl<'a> InsertAnswers<'a> {
    fn new(rows: &'a [NewStoredAnswer<'_>]) -> Self {
        Self {
            result_ids: rows.iter().map(|r| r.result_id).collect(),
            tenant_ids: rows.iter().map(|r| r.tenant_id).collect(),
            keys: rows.iter().map(|r| r.idempotency_key).collect(),
            fingerprints: rows.iter().map(|r| r.fingerprint).collect(),
            wallet_ids: rows.iter().map(|r| r.wallet_id).collect(),
            states: rows.iter().map(|r| r.state).collect(),
            statuses: rows.iter().map(|r| r.response_status).collect(),
            bodies: rows.iter().map(|r| r.response_body).collect(),
            created_at: rows.iter().map(|r| r.created_at).collect(),
            completed_at: rows.iter().map(|r| r.completed_at).collect(),
        }
    }
}

impl QueryId for InsertAnswers<'_> {
    type QueryId = InsertAnswers<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for InsertAnswers<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::{Array, Binary, Nullable, SmallInt, Text, Timestamptz};
        out.push_sql(
            "INSERT INTO idempotency_keys (result_id, tenant_id, idempotency_key, fingerprint, \
             wallet_id, state, response_status, response_body, created_at, completed_at) \
             SELECT * FROM unnest(",
        );
        out.push_bind_param::<Array<diesel::sql_types::Uuid>, _>(&self.result_ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<diesel::sql_types::Uuid>, _>(&self.tenant_ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.keys)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Binary>, _>(&self.fingerprints)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Nullable<diesel::sql_types::Uuid>>, _>(&self.wallet_ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.states)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<SmallInt>, _>(&self.statuses)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Binary>, _>(&self.bodies)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamptz>, _>(&self.created_at)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamptz>, _>(&self.completed_at)?;
        out.push_sql(")");
        Ok(())
    }
}

impl Drop for Claim {
    /// A claim dropped while armed (an early return, a panic, a cancelled task) clears its
    /// marker in the background. The delete names our token, so it never clears a twin's.
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(token) = self.marker else {
            return;
        };
        let (cache, request) = (self.cache.clone(), self.request.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            tracing::warn!("idempotency claim dropped without an answer; clearing its marker");
            runtime.spawn(async move { cache.unmark(&request, token).await });
        }
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
