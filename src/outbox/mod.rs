//! The transactional outbox (API.md Part 3): events written in the transaction of the change
//! they describe, and published by the [`relay`] only once that transaction committed.
//!
//! This module is the storage side: what an event row is, how one transaction writes its
//! events (one statement), and the relay's reads and writes of the table. The event's JSON is
//! rendered once, when it is written, and published byte for byte: a consumer gets exactly
//! what was committed, never a read-back that could see a later state.

pub mod relay;
mod store;
pub mod tail;

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{self, Array, BigInt, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use serde::Serialize;
use uuid::Uuid;

use crate::db::PgConn;
use crate::db::schema::outbox_events;
use crate::representation::render_timestamp;
pub use store::{PublishedKey, UnpublishedEvent};

/// Largest event the database accepts (`outbox_events.payload`): the biggest change (an entry
/// with 16 KiB of metadata, and its wallet) is far below it.
pub const EVENT_BYTES_MAX: usize = 131_072;

/// What happened (API.md Part 3, `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    WalletCreated,
    WalletDebited,
    WalletCredited,
    WalletReversed,
    HoldCreated,
    HoldCaptured,
    HoldVoided,
    HoldExpired,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::WalletCreated => "wallet.created",
            EventType::WalletDebited => "wallet.debited",
            EventType::WalletCredited => "wallet.credited",
            EventType::WalletReversed => "wallet.reversed",
            EventType::HoldCreated => "hold.created",
            EventType::HoldCaptured => "hold.captured",
            EventType::HoldVoided => "hold.voided",
            EventType::HoldExpired => "hold.expired",
        }
    }
}

/// One event, rendered, waiting for its transaction's INSERT.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub wallet_id: Uuid,
    /// The wallet's version right after the change: the per-wallet publishing order.
    pub wallet_version: i64,
    pub event_id: Uuid,
    pub tenant_id: Uuid,
    pub event_type: EventType,
    /// The event's JSON, exactly as it will be published.
    pub payload: String,
    pub occurred_at: DateTime<Utc>,
}

/// The published form: `{"event_id","type","tenant_id","wallet_id","occurred_at","data"}`.
#[derive(Serialize)]
struct Envelope<'a> {
    event_id: String,
    #[serde(rename = "type")]
    event_type: &'static str,
    tenant_id: String,
    wallet_id: String,
    occurred_at: String,
    data: &'a serde_json::Value,
}

impl NewEvent {
    /// Renders an event; `data` is already complete (the transaction, hold or wallet with its
    /// `wallet` snapshot).
    pub fn render(
        event_type: EventType,
        tenant_id: Uuid,
        wallet_id: Uuid,
        wallet_version: i64,
        occurred_at: DateTime<Utc>,
        data: &serde_json::Value,
    ) -> anyhow::Result<Self> {
        let event_id = Uuid::now_v7();
        let payload = serde_json::to_string(&Envelope {
            event_id: event_id.hyphenated().to_string(),
            event_type: event_type.as_str(),
            tenant_id: tenant_id.hyphenated().to_string(),
            wallet_id: wallet_id.hyphenated().to_string(),
            occurred_at: render_timestamp(occurred_at),
            data,
        })?;
        anyhow::ensure!(
            payload.len() <= EVENT_BYTES_MAX,
            "event {event_id} is {} bytes, over {EVENT_BYTES_MAX}",
            payload.len()
        );
        Ok(Self {
            wallet_id,
            wallet_version,
            event_id,
            tenant_id,
            event_type,
            payload,
            occurred_at,
        })
    }
}

/// A transaction's events as one `INSERT … SELECT FROM unnest(…)`, a column per array: one
/// statement of fixed shape whatever the number of events, so it is prepared once per
/// connection (a multi-row `VALUES` has a shape per row count and would be prepared each time).
struct InsertEvents<'a> {
    wallet_ids: Vec<Uuid>,
    wallet_versions: Vec<i64>,
    event_ids: Vec<Uuid>,
    tenant_ids: Vec<Uuid>,
    event_types: Vec<&'static str>,
    payloads: Vec<&'a str>,
    occurred_at: Vec<DateTime<Utc>>,
}

impl<'a> InsertEvents<'a> {
    fn new(events: &'a [NewEvent]) -> Self {
        Self {
            wallet_ids: events.iter().map(|e| e.wallet_id).collect(),
            wallet_versions: events.iter().map(|e| e.wallet_version).collect(),
            event_ids: events.iter().map(|e| e.event_id).collect(),
            tenant_ids: events.iter().map(|e| e.tenant_id).collect(),
            event_types: events.iter().map(|e| e.event_type.as_str()).collect(),
            payloads: events.iter().map(|e| e.payload.as_str()).collect(),
            occurred_at: events.iter().map(|e| e.occurred_at).collect(),
        }
    }
}

impl QueryId for InsertEvents<'_> {
    type QueryId = InsertEvents<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for InsertEvents<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO outbox_events \
             (wallet_id, wallet_version, event_id, tenant_id, event_type, payload, occurred_at) \
             SELECT * FROM unnest(",
        );
        out.push_bind_param::<Array<sql_types::Uuid>, _>(&self.wallet_ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<BigInt>, _>(&self.wallet_versions)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<sql_types::Uuid>, _>(&self.event_ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<sql_types::Uuid>, _>(&self.tenant_ids)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.event_types)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.payloads)?;
        out.push_sql(", ");
        out.push_bind_param::<Array<Timestamptz>, _>(&self.occurred_at)?;
        out.push_sql(")");
        Ok(())
    }
}

/// One `outbox_events` row as a transaction writes it (unpublished).
#[derive(Insertable)]
#[diesel(table_name = outbox_events)]
struct EventRow<'a> {
    wallet_id: Uuid,
    wallet_version: i64,
    event_id: Uuid,
    tenant_id: Uuid,
    event_type: &'static str,
    payload: &'a str,
    occurred_at: DateTime<Utc>,
}

/// Writes a transaction's events (unpublished), all in one statement; nothing when there are
/// none. One event (a single debit's) is a plain `VALUES` row, which a distributed database
/// routes to the wallet's shard by its `wallet_id`; more (a batch's) are one `unnest` statement.
pub async fn insert(mut conn: &PgConn, events: &[NewEvent]) -> QueryResult<()> {
    match events {
        [] => {}
        [event] => {
            diesel::insert_into(outbox_events::table)
                .values(EventRow {
                    wallet_id: event.wallet_id,
                    wallet_version: event.wallet_version,
                    event_id: event.event_id,
                    tenant_id: event.tenant_id,
                    event_type: event.event_type.as_str(),
                    payload: &event.payload,
                    occurred_at: event.occurred_at,
                })
                .execute(&mut conn)
                .await?;
        }
        events => {
            InsertEvents::new(events).execute(&mut conn).await?;
        }
    }
    Ok(())
}
