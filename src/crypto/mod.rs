//! Cryptography: device identities, session handshake, Double Ratchet and sealed
//! envelopes. Composes audited primitives only (x25519-dalek, XChaCha20-Poly1305,
//! BLAKE3); the exact construction is specified in `docs/crypto.md`.
//!
//! Architecture invariant: nothing here knows about tokio, sockets or fjall. State
//! goes in and out as bytes; the caller persists it.

pub mod identity;
pub mod pairing;

pub use identity::{safety_code, DeviceId, DeviceKeypair};

use zeroize::Zeroizing;

/// Fills `N` bytes from the operating system's CSPRNG.
///
/// Panics only if the OS has no entropy source at all, which no supported
/// platform lacks; there is no sane way to continue without one.
pub fn random_bytes<const N: usize>() -> Zeroizing<[u8; N]> {
    let mut buf = Zeroizing::new([0u8; N]);
    getrandom::getrandom(buf.as_mut()).expect("operating system CSPRNG unavailable");
    buf
}
