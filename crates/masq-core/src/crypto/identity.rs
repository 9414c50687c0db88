//! Device identity: a long-lived X25519 key pair per device.
//!
//! A device is named by its [`DeviceId`], the BLAKE3 hash of its X25519 public key.
//! People compare devices by [`DeviceId::fingerprint`] and, while pairing, by the
//! six-digit [`safety_code`] both devices derive from their two public keys.
//!
//! Architecture invariant: this module knows nothing of storage, sockets or tokio;
//! persisting the key pair is the caller's job (see `storage`).

use std::fmt;

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::crypto::random_bytes;

/// Domain string for the safety code derivation (BLAKE3 `derive_key` context).
pub const SAFETY_CODE_CONTEXT: &str = "masq 2026-11 safety code v1";

/// A device's static X25519 key pair. The secret half is zeroized on drop
/// (x25519-dalek's `zeroize` feature) and never printed by `Debug`.
#[derive(Clone)]
pub struct DeviceKeypair {
    /// The secret scalar; only ever used for Diffie-Hellman.
    secret: StaticSecret,
    /// The public key, cached so it is not recomputed per use.
    public: PublicKey,
}

impl DeviceKeypair {
    /// Generates a fresh key pair from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let bytes = random_bytes::<32>();
        Self::from_secret_bytes(*bytes)
    }

    /// Rebuilds a key pair from its 32 secret bytes (as stored on disk).
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// The 32 secret bytes, for persisting. Wrapped so they are wiped after use.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        DeviceId::from_public(&self.public)
    }

    /// X25519 Diffie-Hellman with another public key. The output is wiped on drop.
    pub fn diffie_hellman(&self, their_public: &PublicKey) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.diffie_hellman(their_public).to_bytes())
    }

    /// Diffie-Hellman that refuses a low-order `their_public`
    /// ([`CryptoError::LowOrderKey`](crate::crypto::CryptoError::LowOrderKey)).
    pub fn contributory_dh(
        &self,
        their_public: &PublicKey,
    ) -> Result<Zeroizing<[u8; 32]>, crate::crypto::CryptoError> {
        crate::crypto::contributory_dh(&self.secret, their_public)
    }
}

impl fmt::Debug for DeviceKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKeypair")
            .field("device_id", &self.device_id())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// A device's id: BLAKE3-256 of its X25519 public key. Shown as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub [u8; 32]);

impl DeviceId {
    /// Length in bytes on the wire.
    pub const LEN: usize = 32;

    /// The id of the device holding `public`.
    pub fn from_public(public: &PublicKey) -> Self {
        Self(*blake3::hash(public.as_bytes()).as_bytes())
    }

    /// Raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Short human-readable fingerprint: the first 10 bytes as five groups of
    /// four hex digits, e.g. `3f2a-91c0-5d7e-0b44-e1a9`.
    pub fn fingerprint(&self) -> String {
        let h = hex::encode(&self.0[..10]);
        h.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or("????"))
            .collect::<Vec<_>>()
            .join("-")
    }

    /// Parses the 64-character hex form (as printed by `Display`).
    pub fn parse(s: &str) -> Option<Self> {
        let bytes = hex::decode(s.trim()).ok()?;
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(arr))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.fingerprint())
    }
}

/// The six-digit safety code two devices show while pairing. It depends only on
/// the two public keys, not on their order, so both screens show the same code;
/// a relay in the middle would make the codes differ.
///
/// Construction: `k = BLAKE3-derive_key(SAFETY_CODE_CONTEXT, min(pk_a, pk_b) || max(pk_a, pk_b))`,
/// code = first 8 bytes of `k` as big-endian u64, modulo 10^6, zero-padded.
pub fn safety_code(a: &PublicKey, b: &PublicKey) -> String {
    let (lo, hi) = if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    let mut input = [0u8; 64];
    input[..32].copy_from_slice(lo.as_bytes());
    input[32..].copy_from_slice(hi.as_bytes());
    let k = blake3::derive_key(SAFETY_CODE_CONTEXT, &input);
    let mut first = [0u8; 8];
    first.copy_from_slice(&k[..8]);
    format!("{:06}", u64::from_be_bytes(first) % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_is_hash_of_public_key_and_round_trips() {
        let kp = DeviceKeypair::from_secret_bytes([7u8; 32]);
        let id = kp.device_id();
        assert_eq!(id.0, *blake3::hash(kp.public().as_bytes()).as_bytes());
        assert_eq!(DeviceId::parse(&id.to_string()), Some(id));
        assert_eq!(id.fingerprint().len(), 24);
        assert!(!format!("{kp:?}").contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn safety_code_is_symmetric_and_key_dependent() {
        let a = DeviceKeypair::generate();
        let b = DeviceKeypair::generate();
        let c = DeviceKeypair::generate();
        let ab = safety_code(&a.public(), &b.public());
        assert_eq!(ab, safety_code(&b.public(), &a.public()));
        assert_eq!(ab.len(), 6);
        // A different peer almost surely gives another code (1e-6 chance of a clash).
        assert_ne!(ab, safety_code(&a.public(), &c.public()));
    }

    #[test]
    fn dh_agrees() {
        let a = DeviceKeypair::generate();
        let b = DeviceKeypair::generate();
        assert_eq!(
            *a.diffie_hellman(&b.public()),
            *b.diffie_hellman(&a.public())
        );
    }
}
