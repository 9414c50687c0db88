//! The naming rule for apps and buckets, the same on every device (an app
//! name is part of every record key and of the sync protocol, a bucket name
//! of its shard documents' ids).

use crate::doc::{DocError, Result};

/// Longest app or bucket name.
pub const MAX_NAME_LEN: usize = 64;

/// Checks an app or bucket name (`what` names it in the error): 1–64 of
/// `[A-Za-z0-9._-]`.
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(DocError::InvalidName {
            what,
            name: name.to_string(),
            rule: "1-64 characters of A-Z a-z 0-9 . _ -",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        assert!(validate_name("app", "notes").is_ok());
        assert!(validate_name("app", "a.b_c-D9").is_ok());
        assert!(validate_name("app", &"x".repeat(MAX_NAME_LEN)).is_ok());
        for bad in ["", "a b", "a/b", "é", "a\0"] {
            assert_eq!(
                validate_name("app", bad).unwrap_err().code(),
                "invalid_name"
            );
        }
        assert!(validate_name("bucket", &"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }
}
