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
//!
//! Architecture invariant: nothing here knows about tokio, sockets or fjall. State
//! goes in and out as bytes; the caller persists it.

pub mod envelope;
pub mod error;
pub mod handshake;
pub mod identity;
pub mod kdf;
pub mod pairing;
pub mod ratchet;

pub use error::CryptoError;
pub use identity::{safety_code, DeviceId, DeviceKeypair};
pub use ratchet::Session;

use zeroize::Zeroizing;

/// Fills `N` bytes from the operating system's CSPRNG.
///
/// Panics only if the OS has no entropy source at all, which no supported
/// platform lacks; there is no sane way to continue without one.
pub fn random_bytes<const N: usize>() -> Zeroizing<[u8; N]> {
    let mut buf = Zeroizing::new([0u8; N]);
    #[allow(clippy::expect_used)]
    getrandom::getrandom(buf.as_mut()).expect("operating system CSPRNG unavailable");
    buf
}
