//! API keys: `wd_<key id, 32 hex>_<secret, 64 hex>`.
//!
//! The secret is 256 random bits and only its SHA-256 is stored. A slow password hash buys
//! nothing for a secret this long (nobody can guess 2^256), and SHA-256 keeps the per-request
//! cost negligible. The key id is public and selects the row; the hashes are compared in
//! constant time.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::db::PgConn;
use crate::db::models::ApiKeyRow;
use crate::db::schema::{api_keys, tenants};
use crate::domain::{KeyId, Scope, TenantId};

const PREFIX: &str = "wd_";
const SECRET_BYTES: usize = 32;

/// A key as handed to its owner, once.
#[derive(Debug, Serialize)]
pub struct IssuedKey {
    pub tenant_id: String,
    pub key_id: String,
    pub api_key: String,
}

/// The two halves of a presented bearer token.
#[derive(Debug)]
pub struct PresentedKey {
    pub key_id: KeyId,
    secret: [u8; SECRET_BYTES],
}

impl PresentedKey {
    /// Parses a bearer token; `None` for anything not shaped like one of our keys.
    pub fn parse(token: &str) -> Option<Self> {
        let rest = token.strip_prefix(PREFIX)?;
        let (id_hex, secret_hex) = rest.split_once('_')?;
        if id_hex.len() != 32 || secret_hex.len() != SECRET_BYTES * 2 {
            return None;
        }
        let key_id = KeyId::from_uuid(uuid::Uuid::try_parse(id_hex).ok()?);
        let mut secret = [0u8; SECRET_BYTES];
        hex::decode_to_slice(secret_hex, &mut secret).ok()?;
        Some(Self { key_id, secret })
    }

    /// Constant-time comparison with a stored hash.
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        hash_secret(&self.secret).ct_eq(stored_hash).into()
    }
}

fn hash_secret(secret: &[u8]) -> Vec<u8> {
    Sha256::digest(secret).to_vec()
}

fn new_key(tenant: TenantId) -> (KeyId, IssuedKey, Vec<u8>) {
    let key_id = KeyId::generate();
    let mut secret = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut secret);
    let api_key = format!(
        "{PREFIX}{}_{}",
        key_id.as_uuid().simple(),
        hex::encode(secret)
    );
    let issued = IssuedKey {
        tenant_id: tenant.to_string(),
        key_id: key_id.to_string(),
        api_key,
    };
    (key_id, issued, hash_secret(&secret))
}

fn scope_strings(scopes: &[Scope]) -> Vec<String> {
    scopes.iter().map(|s| s.as_str().to_owned()).collect()
}

/// Creates a tenant and its first key, in one transaction.
pub async fn create_tenant(
    conn: &mut PgConn,
    name: &str,
    scopes: &[Scope],
) -> anyhow::Result<IssuedKey> {
    let tenant = TenantId::generate();
    let name = name.to_owned();
    let scopes = scope_strings(scopes);
    conn.transaction(async |c| {
        diesel::insert_into(tenants::table)
            .values((tenants::id.eq(tenant.as_uuid()), tenants::name.eq(&name)))
            .execute(c)
            .await?;
        insert_key(c, tenant, &scopes).await
    })
    .await
}

/// Issues another key for an existing tenant.
pub async fn create_key(
    conn: &mut PgConn,
    tenant: TenantId,
    scopes: &[Scope],
) -> anyhow::Result<IssuedKey> {
    let exists: bool = diesel::select(diesel::dsl::exists(tenants::table.find(tenant.as_uuid())))
        .get_result(conn)
        .await?;
    anyhow::ensure!(exists, "no tenant {tenant}");
    insert_key(conn, tenant, &scope_strings(scopes)).await
}

async fn insert_key(
    conn: &mut PgConn,
    tenant: TenantId,
    scopes: &[String],
) -> anyhow::Result<IssuedKey> {
    let (key_id, issued, secret_hash) = new_key(tenant);
    diesel::insert_into(api_keys::table)
        .values((
            api_keys::id.eq(key_id.as_uuid()),
            api_keys::tenant_id.eq(tenant.as_uuid()),
            api_keys::secret_hash.eq(secret_hash),
            api_keys::scopes.eq(scopes),
        ))
        .execute(conn)
        .await?;
    Ok(issued)
}

/// What `revoke_key` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Revoked by this call.
    Now,
    /// Revoked earlier; nothing changed.
    Already,
    /// No key has this id.
    NoSuchKey,
}

/// Revokes a key. Idempotent: revoking a revoked key changes nothing and says so, so that the
/// caller can still (re)publish the revocation.
pub async fn revoke_key(conn: &mut PgConn, key: KeyId) -> anyhow::Result<Revoked> {
    let updated = diesel::update(
        api_keys::table
            .find(key.as_uuid())
            .filter(api_keys::revoked_at.is_null()),
    )
    .set(api_keys::revoked_at.eq(diesel::dsl::now))
    .execute(conn)
    .await?;
    if updated == 1 {
        return Ok(Revoked::Now);
    }
    Ok(match find_key(conn, key).await? {
        Some(_) => Revoked::Already,
        None => Revoked::NoSuchKey,
    })
}

/// Loads a key's row by its public id.
pub async fn find_key(conn: &mut PgConn, key: KeyId) -> QueryResult<Option<ApiKeyRow>> {
    api_keys::table
        .find(key.as_uuid())
        .select(ApiKeyRow::as_select())
        .first(conn)
        .await
        .optional()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_parse_and_match_their_hash() {
        let (key_id, issued, hash) = new_key(TenantId::generate());
        let presented = PresentedKey::parse(&issued.api_key).unwrap();
        assert_eq!(presented.key_id, key_id);
        assert!(presented.matches(&hash));
        let mut other = hash.clone();
        other[0] ^= 1;
        assert!(!presented.matches(&other));
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for token in [
            "",
            "wd_",
            "wd_abc_def",
            "Bearer x",
            &format!("wd_{}_{}", "0".repeat(32), "z".repeat(64)),
        ] {
            assert!(PresentedKey::parse(token).is_none(), "{token:?}");
        }
    }
}
