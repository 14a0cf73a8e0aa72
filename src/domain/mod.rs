//! Pure domain types and their parsers. Nothing here touches the network or the database;
//! once a value exists it is valid, so the rest of the code never re-checks it.

pub mod idempotency_key;
pub mod ids;
pub mod jcs;
pub mod metadata;
pub mod money;
pub mod scope;
pub mod text;

pub use idempotency_key::IdempotencyKey;
pub use ids::{HoldId, KeyId, TenantId, TransactionId, WalletId};
pub use metadata::{Metadata, MetadataError};
pub use money::{Currency, Money, MoneyError, NonNegativeAmount, PendingAmount};
pub use scope::Scope;
pub use text::BoundedText;
