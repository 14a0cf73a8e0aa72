//! The client's `Idempotency-Key`: 1–255 printable ASCII characters (API.md, Idempotency).

use std::fmt;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::TenantId;

/// Longest key the contract accepts.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 255;

/// Why a header value is not a usable key. Both map to 400 `idempotency_key_invalid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdempotencyKeyError {
    /// Empty, or longer than [`IDEMPOTENCY_KEY_LEN_MAX`].
    #[error("Idempotency-Key must be 1 to 255 characters long")]
    Length,
    /// A byte outside printable ASCII (0x20..=0x7E): control characters, CR/LF, non-ASCII.
    #[error("Idempotency-Key may contain printable ASCII characters only")]
    Charset,
}

/// A validated idempotency key. Keys are scoped to a tenant by the storage, not by this type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses raw header bytes (not a `&str`: a non-UTF-8 header is just another invalid key).
    pub fn parse(raw: &[u8]) -> Result<Self, IdempotencyKeyError> {
        if raw.is_empty() || raw.len() > IDEMPOTENCY_KEY_LEN_MAX {
            return Err(IdempotencyKeyError::Length);
        }
        if !raw.iter().all(|b| (0x20..=0x7E).contains(b)) {
            return Err(IdempotencyKeyError::Charset);
        }
        let text = std::str::from_utf8(raw).map_err(|_| IdempotencyKeyError::Charset)?;
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of what this key's request produces (its ledger entry or hold) and of its row in
    /// the key table: derived from the tenant and the key alone, so a lookup by that id finds
    /// the key row (and through it the wallet) without knowing the wallet, and the key table
    /// can be distributed apart from the wallets (docs/scale-out.md). SHA-256 over a label, the
    /// tenant's 16 bytes and the key, first 16 bytes, stamped as an RFC 9562 version 8 UUID;
    /// the database computes the same (`walletd_result_id`) and checks every key row by it.
    pub fn result_id(&self, tenant: TenantId) -> Uuid {
        let digest = Sha256::new()
            .chain_update(b"walletd-result-id")
            .chain_update(tenant.as_uuid().as_bytes())
            .chain_update(self.0.as_bytes())
            .finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn result_id_is_the_one_the_database_derives() {
        // SELECT walletd_result_id('0190d3a8-0000-7000-8000-000000000001', 'k-1')
        let tenant = TenantId::parse("0190d3a8-0000-7000-8000-000000000001").unwrap();
        let key = IdempotencyKey::parse(b"k-1").unwrap();
        let id = key.result_id(tenant);
        assert_eq!(id.to_string(), "0d551d3d-ec34-8a6b-ad16-fa6cf8328266");
        assert_eq!(id.get_version_num(), 8);
        let other = IdempotencyKey::parse(b"k-2").unwrap();
        assert_ne!(other.result_id(tenant), id);
    }

    #[test]
    fn bounds_are_inclusive() {
        assert!(IdempotencyKey::parse(b"a").is_ok());
        assert!(IdempotencyKey::parse("k".repeat(255).as_bytes()).is_ok());
        assert_eq!(IdempotencyKey::parse(b""), Err(IdempotencyKeyError::Length));
        assert_eq!(
            IdempotencyKey::parse("k".repeat(256).as_bytes()),
            Err(IdempotencyKeyError::Length)
        );
    }

    #[test]
    fn control_and_non_ascii_bytes_are_rejected() {
        for raw in [
            &b"a\r\nb"[..],
            b"tab\there",
            b"\x00",
            b"\x7f",
            "caf\u{e9}".as_bytes(),
        ] {
            assert_eq!(
                IdempotencyKey::parse(raw),
                Err(IdempotencyKeyError::Charset),
                "{raw:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn printable_ascii_keys_round_trip(key in "[ -~]{1,255}") {
            let parsed = IdempotencyKey::parse(key.as_bytes()).unwrap();
            prop_assert_eq!(parsed.as_str(), key.as_str());
        }

        #[test]
        fn parse_accepts_only_printable_ascii(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let ok = !raw.is_empty() && raw.len() <= 255 && raw.iter().all(|b| (0x20..=0x7E).contains(b));
            prop_assert_eq!(IdempotencyKey::parse(&raw).is_ok(), ok);
        }
    }
}
