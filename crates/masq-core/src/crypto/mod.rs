//! Cryptography: device identities, session handshake, Double Ratchet and sealed
//! envelopes. Composes audited primitives only (x25519-dalek, XChaCha20-Poly1305,
//! BLAKE3); the exact construction is specified in `docs/crypto.md`.
//!
//! - [`identity`]: device key pairs, DeviceIds, fingerprints, safety codes.
//! - [`kdf`]: every key derivation and its domain string.
//! - [`handshake`]: one-round-trip mutual authentication → session root key.
//! - [`ratchet`]: the Double Ratchet [`Session`].
//! - [`envelope`]: the sealed envelope's bytes and padding.
//! - [`pairing`]: the invite-secret channel used once while pairing.
//! - [`relay_auth`]: the proofs that answer the relay's challenge.
//!
//! Architecture invariant: nothing here knows about tokio, sockets or fjall. State
//! goes in and out as bytes; the caller persists it.

pub mod entropy;
pub mod envelope;
pub mod error;
pub mod handshake;
pub mod identity;
pub mod kdf;
pub mod known_answers;
pub mod pairing;
pub mod ratchet;
pub mod relay_auth;

pub use error::CryptoError;
pub use identity::{safety_code, DeviceId, DeviceKeypair};
pub use ratchet::Session;

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// X25519 Diffie-Hellman that refuses a non-contributory result
/// (x25519-dalek's `SharedSecret::was_contributory`: the peer's key is of
/// small order, so the output is all zero whatever our secret):
/// [`CryptoError::LowOrderKey`]. Every DH with a key that came from outside
/// goes through here.
pub fn contributory_dh(
    secret: &StaticSecret,
    public: &PublicKey,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let shared = secret.diffie_hellman(public);
    if !shared.was_contributory() {
        return Err(CryptoError::LowOrderKey);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// Refuses a low-order public key before it is stored (pairing,
/// introductions): a DH with a fresh random secret must be contributory.
pub fn check_public_key(public: &PublicKey) -> Result<(), CryptoError> {
    contributory_dh(&StaticSecret::from(*random_bytes::<32>()), public).map(|_| ())
}

/// `N` random bytes: from the operating system's CSPRNG, or the source a
/// simulation installed on this thread ([`entropy::with_source`]).
pub fn random_bytes<const N: usize>() -> Zeroizing<[u8; N]> {
    let mut buf = Zeroizing::new([0u8; N]);
    entropy::fill(buf.as_mut());
    buf
}
