//! Typed identifiers, so a wallet id can never be passed where a tenant id is expected.
//! All are UUIDs. Wallet ids are v7 (time-ordered, so indexes stay append-mostly); an entry's
//! or hold's id is its idempotency key's result id, a v8 derived from the tenant and the key
//! (see `IdempotencyKey::result_id`), so a retry knows it without a lookup.

use std::fmt;

use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered (v7) id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// Parses an id from a URL path segment. `None` for anything that is not a UUID, which
            /// the API answers exactly like an unknown id (404).
            pub fn parse(text: &str) -> Option<Self> {
                Uuid::try_parse(text).ok().map(Self)
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            /// Lowercase hyphenated, as the API renders ids.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }
    };
}

uuid_id!(
    /// A tenant: the owner of API keys and wallets.
    TenantId
);
uuid_id!(
    /// An API key's public identifier (the secret part is never stored).
    KeyId
);
uuid_id!(
    /// A wallet.
    WalletId
);
uuid_id!(
    /// One ledger entry (a "transaction" in the API).
    TransactionId
);
uuid_id!(
    /// A hold: money reserved on a wallet until captured, voided or expired.
    HoldId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_render_lowercase_and_parse_back() {
        let id = WalletId::generate();
        let text = id.to_string();
        assert_eq!(text, text.to_lowercase());
        assert_eq!(WalletId::parse(&text), Some(id));
        assert_eq!(WalletId::parse(&text.to_uppercase()), Some(id));
        assert_eq!(WalletId::parse("not-a-uuid"), None);
        assert_eq!(id.as_uuid().get_version_num(), 7);
    }
}
