//! Which apps may use the store: browser origins (pending, approved, denied)
//! and native apps with their tokens. Records live in the store's `meta`
//! keyspace (`app_origin/<origin>`, `app_native/<name>`); a native app's token
//! is kept only as its BLAKE3 hash, so reading the database does not reveal it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::Db;
use crate::store::validate_name;

const ORIGIN: &[u8] = b"app_origin/";
const NATIVE: &[u8] = b"app_native/";
/// Longest origin accepted (`scheme://host:port`).
pub const MAX_ORIGIN_LEN: usize = 256;
/// Pending origins remembered at most; past this the oldest pending ones are
/// forgotten, so a page cycling through origins cannot grow the database.
pub const MAX_PENDING_ORIGINS: usize = 64;

/// Where an origin stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginState {
    /// Asked, not yet answered by the user.
    Pending,
    /// May use its namespace.
    Approved,
    /// Refused.
    Denied,
}

/// A browser origin's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginRecord {
    /// `scheme://host[:port]`.
    pub origin: String,
    /// The namespace it asked for, or was granted.
    pub app: String,
    /// Where it stands.
    pub state: OriginState,
    /// When it first asked (seconds since the epoch).
    pub since: i64,
}

/// A native app's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeRecord {
    /// App name (its namespace).
    pub name: String,
    /// BLAKE3 of the token, hex.
    pub token_hash: String,
    /// When it was added.
    pub since: i64,
}

fn key(prefix: &[u8], rest: &str) -> Vec<u8> {
    [prefix, rest.as_bytes()].concat()
}

/// Checks that `origin` looks like `http(s)://host[:port]` with nothing after.
pub fn validate_origin(origin: &str) -> Result<()> {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let ok = origin.len() <= MAX_ORIGIN_LEN
        && rest
            .map(|r| {
                !r.is_empty()
                    && r.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
            })
            .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: "origin",
            name: origin.chars().take(80).collect(),
            rule: "scheme://host[:port], scheme http or https",
        })
    }
}

fn hash_token(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// The record of an origin.
pub fn origin(db: &Db, origin: &str) -> Result<Option<OriginRecord>> {
    match db.meta.get(key(ORIGIN, origin))? {
        None => Ok(None),
        Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
    }
}

/// Every record under `prefix`.
fn records<T: serde::de::DeserializeOwned>(db: &Db, prefix: &[u8]) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for g in db.meta.prefix(prefix) {
        let (_, v) = g.into_inner()?;
        out.push(serde_json::from_slice(&v)?);
    }
    Ok(out)
}

/// Every origin record.
pub fn origins(db: &Db) -> Result<Vec<OriginRecord>> {
    records(db, ORIGIN)
}

fn put_origin(db: &Db, rec: &OriginRecord) -> Result<()> {
    let mut b = db.batch();
    b.insert(&db.meta, key(ORIGIN, &rec.origin), serde_json::to_vec(rec)?);
    db.commit(b)
}

/// Records that `origin` asks for namespace `app` (no-op if it has a record).
pub fn request(db: &Db, origin_name: &str, app: &str) -> Result<OriginRecord> {
    validate_origin(origin_name)?;
    validate_name("app", app)?;
    if let Some(r) = origin(db, origin_name)? {
        return Ok(r);
    }
    let mut pending: Vec<OriginRecord> = origins(db)?
        .into_iter()
        .filter(|r| r.state == OriginState::Pending)
        .collect();
    if pending.len() >= MAX_PENDING_ORIGINS {
        pending.sort_by_key(|r| r.since);
        let mut b = db.batch();
        for r in &pending[..pending.len() + 1 - MAX_PENDING_ORIGINS] {
            b.remove(&db.meta, key(ORIGIN, &r.origin));
        }
        db.commit(b)?;
    }
    let rec = OriginRecord {
        origin: origin_name.to_string(),
        app: app.to_string(),
        state: OriginState::Pending,
        since: crate::sync::peers::now(),
    };
    put_origin(db, &rec)?;
    Ok(rec)
}

/// Approves `origin` for namespace `app` (default: the one it asked for).
pub fn approve(db: &Db, origin_name: &str, app: Option<&str>) -> Result<OriginRecord> {
    validate_origin(origin_name)?;
    let existing = origin(db, origin_name)?;
    let app = match (app, &existing) {
        (Some(a), _) => a.to_string(),
        (None, Some(r)) => r.app.clone(),
        (None, None) => {
            return Err(Error::BadOp(format!(
                "{origin_name} has not asked for access yet: give the app name too"
            )))
        }
    };
    validate_name("app", &app)?;
    let rec = OriginRecord {
        origin: origin_name.to_string(),
        app,
        state: OriginState::Approved,
        since: existing
            .map(|r| r.since)
            .unwrap_or_else(crate::sync::peers::now),
    };
    put_origin(db, &rec)?;
    Ok(rec)
}

/// Denies `origin` (it must have a record).
pub fn deny(db: &Db, origin_name: &str) -> Result<OriginRecord> {
    let mut rec = origin(db, origin_name)?
        .ok_or_else(|| Error::BadOp(format!("no app from {origin_name:?} has asked")))?;
    rec.state = OriginState::Denied;
    put_origin(db, &rec)?;
    Ok(rec)
}

/// Adds a native app; returns its token (64 hex chars), which is not stored.
pub fn add_native(db: &Db, name: &str) -> Result<String> {
    validate_name("app", name)?;
    if db.meta.get(key(NATIVE, name))?.is_some() {
        return Err(Error::BadOp(format!(
            "app {name:?} already has a token (revoke it first)"
        )));
    }
    let token = hex::encode(*crate::crypto::random_bytes::<32>());
    let rec = NativeRecord {
        name: name.to_string(),
        token_hash: hash_token(&token),
        since: crate::sync::peers::now(),
    };
    let mut b = db.batch();
    b.insert(&db.meta, key(NATIVE, name), serde_json::to_vec(&rec)?);
    db.commit(b)?;
    Ok(token)
}

/// Every native app.
pub fn natives(db: &Db) -> Result<Vec<NativeRecord>> {
    records(db, NATIVE)
}

/// The native app a token belongs to.
pub fn native_for_token(db: &Db, token: &str) -> Result<Option<String>> {
    let h = hash_token(token);
    Ok(natives(db)?
        .into_iter()
        .find(|r| r.token_hash == h)
        .map(|r| r.name))
}

/// Revokes an origin (it becomes denied; `approve` can let it in again) or a
/// native app by name (its token is forgotten). Errors if neither exists.
pub fn revoke(db: &Db, who: &str) -> Result<()> {
    if origin(db, who)?.is_some() {
        deny(db, who)?;
        return Ok(());
    }
    if db.meta.get(key(NATIVE, who))?.is_none() {
        return Err(Error::BadOp(format!("no app or origin {who:?}")));
    }
    let mut b = db.batch();
    b.remove(&db.meta, key(NATIVE, who));
    db.commit(b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::storage::Durability;

    #[test]
    fn origins_tokens_and_the_pending_cap() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Durability::Buffered).unwrap();
        for bad in [
            "javascript:alert(1)",
            "http://",
            "http://a/b",
            "file:///etc",
        ] {
            assert!(request(&db, bad, "app").is_err(), "{bad}");
        }
        // A page cycling through origins cannot grow the registry without bound.
        for i in 0..(MAX_PENDING_ORIGINS + 10) {
            request(&db, &format!("http://p{i}.example"), "x").unwrap();
        }
        let pending = origins(&db).unwrap();
        assert!(pending.len() <= MAX_PENDING_ORIGINS, "{}", pending.len());
        // Approval keeps the asked-for namespace unless told otherwise.
        let last = format!("http://p{}.example", MAX_PENDING_ORIGINS + 9);
        assert_eq!(approve(&db, &last, None).unwrap().app, "x");
        assert!(approve(&db, "http://never.example", None).is_err());
        // Tokens: only the hash is stored; revoking forgets it.
        let token = add_native(&db, "notes").unwrap();
        assert!(add_native(&db, "notes").is_err());
        assert_eq!(
            native_for_token(&db, &token).unwrap().as_deref(),
            Some("notes")
        );
        assert!(!natives(&db).unwrap()[0].token_hash.contains(&token));
        revoke(&db, "notes").unwrap();
        assert_eq!(native_for_token(&db, &token).unwrap(), None);
        revoke(&db, &last).unwrap();
        assert_eq!(
            origin(&db, &last).unwrap().unwrap().state,
            OriginState::Denied
        );
        assert!(revoke(&db, "nobody").is_err());
    }
}
