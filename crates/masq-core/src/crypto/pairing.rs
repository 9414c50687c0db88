//! The pairing channel: a symmetric AEAD channel keyed by the invite's one-time
//! 256-bit secret, used once to exchange the two devices' static public keys
//! through the relay's rendezvous slot. The relay never sees the secret, so it
//! can neither read nor forge these messages; whoever else holds the invite
//! can, which is why the exchange in it (`masq_core::sync::pairing`) makes
//! the users compare a code and authenticates its last messages with the
//! devices' own keys.
//!
//! Construction: `K = BLAKE3-derive_key(PAIRING_KEY_CONTEXT, secret)`; each
//! message is `nonce(24) || XChaCha20-Poly1305(K, nonce, plaintext, ad)` with
//! `ad = "masq-pair-v1" || slot(32) || direction(1)` (1: joiner→inviter,
//! 2: inviter→joiner), so a message cannot be reflected or moved to another slot.
//!
//! The slot itself is keyed by the secret too: the slot key pair's secret is
//! `BLAKE3-derive_key(SLOT_KEY_CONTEXT, secret)` and the slot id is
//! `BLAKE3(slot public key)`. The relay admits to a slot only a connection
//! that proves the slot secret (the relay-auth challenge-response over its
//! own challenge, [`slot_proof`](super::relay_auth::slot_proof)), so whoever learns only the
//! slot id (a bystander, the relay) can neither join nor block the slot.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::crypto::random_bytes;

/// BLAKE3 context for the pairing key.
pub const PAIRING_KEY_CONTEXT: &str = "masq 2026-11 pairing key v1";
/// BLAKE3 context for the rendezvous slot's X25519 secret.
pub const SLOT_KEY_CONTEXT: &str = "masq 2026-11 pairing slot key v1";

/// The rendezvous slot secret of an invite secret (an X25519 secret: the
/// relay client proves it when joining; wiped on drop).
pub fn slot_secret(secret: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(blake3::derive_key(SLOT_KEY_CONTEXT, secret))
}

/// The slot id named by a slot public key: `BLAKE3(slot_public)`.
pub fn slot_id_of_public(slot_public: &[u8; 32]) -> [u8; 32] {
    *blake3::hash(slot_public).as_bytes()
}

/// The slot id for a slot secret (as [`slot_secret`] gives).
pub fn slot_id_of_secret(slot_secret: &[u8; 32]) -> [u8; 32] {
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*slot_secret));
    slot_id_of_public(public.as_bytes())
}

/// The slot id of an invite secret.
pub fn slot_id(secret: &[u8; 32]) -> [u8; 32] {
    slot_id_of_secret(&slot_secret(secret))
}
/// Direction byte: joiner to inviter.
pub const TO_INVITER: u8 = 1;
/// Direction byte: inviter to joiner.
pub const TO_JOINER: u8 = 2;

/// Why a pairing message did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PairingError {
    /// Too short to hold a nonce and tag.
    #[error("pairing message truncated")]
    Truncated,
    /// Wrong secret, wrong slot, wrong direction or tampered.
    #[error("pairing message failed authentication (wrong or forged invite)")]
    Auth,
}

/// The channel for one invite.
pub struct PairingChannel {
    /// Derived key; wiped on drop.
    key: Zeroizing<[u8; 32]>,
    /// The rendezvous slot id, bound into every message.
    slot: [u8; 32],
}

impl PairingChannel {
    /// Derives the channel from the invite secret and slot.
    pub fn new(secret: &[u8; 32], slot: [u8; 32]) -> Self {
        Self {
            key: Zeroizing::new(blake3::derive_key(PAIRING_KEY_CONTEXT, secret)),
            slot,
        }
    }

    fn ad(&self, direction: u8) -> Vec<u8> {
        let mut ad = b"masq-pair-v1".to_vec();
        ad.extend_from_slice(&self.slot);
        ad.push(direction);
        ad
    }

    /// Seals `plaintext` for `direction` (under a random nonce it carries).
    pub fn seal(&self, direction: u8, plaintext: &[u8]) -> Vec<u8> {
        self.seal_with_nonce(direction, plaintext, *random_bytes::<24>())
    }

    /// As [`seal`](Self::seal) with a given nonce (known-answer tests only:
    /// a nonce must never repeat under one key).
    #[doc(hidden)]
    pub fn seal_with_nonce(&self, direction: u8, plaintext: &[u8], nonce: [u8; 24]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new((&*self.key).into());
        let ad = self.ad(direction);
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let ct = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &ad,
                },
            )
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a message sealed for `direction`.
    pub fn open(&self, direction: u8, bytes: &[u8]) -> Result<Vec<u8>, PairingError> {
        if bytes.len() < 24 + 16 {
            return Err(PairingError::Truncated);
        }
        let (nonce, ct) = bytes.split_at(24);
        let nonce = XNonce::try_from(nonce).map_err(|_| PairingError::Truncated)?;
        let cipher = XChaCha20Poly1305::new((&*self.key).into());
        let ad = self.ad(direction);
        cipher
            .decrypt(&nonce, Payload { msg: ct, aad: &ad })
            .map_err(|_| PairingError::Auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let ch = PairingChannel::new(&[1; 32], [2; 32]);
        let m = ch.seal(TO_INVITER, b"hello");
        assert_eq!(ch.open(TO_INVITER, &m).unwrap(), b"hello");
        assert_eq!(ch.open(TO_JOINER, &m), Err(PairingError::Auth));
        assert_eq!(
            PairingChannel::new(&[9; 32], [2; 32]).open(TO_INVITER, &m),
            Err(PairingError::Auth)
        );
        assert_eq!(
            PairingChannel::new(&[1; 32], [3; 32]).open(TO_INVITER, &m),
            Err(PairingError::Auth)
        );
        assert_eq!(ch.open(TO_INVITER, &m[..10]), Err(PairingError::Truncated));
    }

    #[test]
    fn slot_id_depends_on_the_secret_only() {
        assert_eq!(slot_id(&[1; 32]), slot_id(&[1; 32]));
        assert_ne!(slot_id(&[1; 32]), slot_id(&[2; 32]));
        assert_eq!(slot_id(&[1; 32]), slot_id_of_secret(&slot_secret(&[1; 32])));
    }
}
