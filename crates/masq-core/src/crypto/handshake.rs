//! Session establishment between two devices that already know each other's
//! static X25519 public keys (learned while pairing): one round trip, in the
//! spirit of Noise KK, giving mutual authentication and the root key of a
//! Double Ratchet [`Session`].
//!
//! ```text
//! init     = 0x01 || S_i (32) || E_i (32) || proof (32)
//!   proof  = BLAKE3-keyed(derive(INIT_CTX, DH(e_i,S_r) || DH(s_i,S_r) || H(S_i||S_r||E_i)), "init")
//! response = 0x01 || E_r (32) || confirm (32)
//!   th     = BLAKE3(S_i || S_r || E_i || E_r)
//!   root   = derive(ROOT_CTX, DH(s_i,E_r) || DH(e_i,S_r) || DH(e_i,E_r) || DH(s_i,S_r) || th)
//!   confirm= BLAKE3-keyed(derive(CONFIRM_CTX, root), th)
//! ```
//!
//! The responder accepts an init only from the static key it expects and only
//! with a valid proof (which needs `s_i`); the initiator accepts the response
//! only with a valid confirmation (which needs `s_r` and `e_r`). `E_r` is also
//! the responder's first ratchet key. If both sides start at once, the device
//! with the lower DeviceId stays initiator ([`initiator_wins`]).
//!
//! Every key taken from a message (and the peer's static key) must give a
//! contributory DH: a low-order key is refused with
//! [`CryptoError::LowOrderKey`].

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::error::CryptoError;
use super::identity::{DeviceId, DeviceKeypair};
use super::kdf::{
    derive, HANDSHAKE_CONFIRM_CONTEXT, HANDSHAKE_INIT_CONTEXT, HANDSHAKE_ROOT_CONTEXT,
};
use super::ratchet::Session;
use super::{contributory_dh, random_bytes};

/// Handshake message version.
pub const HANDSHAKE_VERSION: u8 = 1;
/// Length of an init message.
pub const INIT_LEN: usize = 1 + 32 + 32 + 32;
/// Length of a response.
pub const RESPONSE_LEN: usize = 1 + 32 + 32;

/// Our side of a handshake we started, waiting for the response.
pub struct PendingHandshake {
    /// Our identity.
    local: DeviceKeypair,
    /// The peer's static key.
    remote: PublicKey,
    /// Our ephemeral secret (zeroized on drop).
    ephemeral: StaticSecret,
}

impl std::fmt::Debug for PendingHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingHandshake")
            .field("remote", &DeviceId::from_public(&self.remote))
            .finish()
    }
}

/// When both devices start a handshake at once, whether `me` keeps the initiator role.
pub fn initiator_wins(me: &DeviceId, other: &DeviceId) -> bool {
    me < other
}

fn dh(s: &StaticSecret, p: &PublicKey) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(s.diffie_hellman(p).to_bytes())
}

fn init_proof(
    dh2: &[u8; 32],
    dh4: &[u8; 32],
    s_i: &PublicKey,
    s_r: &PublicKey,
    e_i: &PublicKey,
) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(s_i.as_bytes());
    h.update(s_r.as_bytes());
    h.update(e_i.as_bytes());
    let th1 = h.finalize();
    let k = derive(HANDSHAKE_INIT_CONTEXT, &[dh2, dh4, th1.as_bytes()]);
    blake3::keyed_hash(&k, b"init")
}

fn root_and_confirm(
    dhs: [&[u8; 32]; 4],
    s_i: &PublicKey,
    s_r: &PublicKey,
    e_i: &PublicKey,
    e_r: &PublicKey,
) -> (Zeroizing<[u8; 32]>, blake3::Hash) {
    let mut h = blake3::Hasher::new();
    for k in [s_i, s_r, e_i, e_r] {
        h.update(k.as_bytes());
    }
    let th = h.finalize();
    let root = derive(
        HANDSHAKE_ROOT_CONTEXT,
        &[dhs[0], dhs[1], dhs[2], dhs[3], th.as_bytes()],
    );
    let ck = derive(HANDSHAKE_CONFIRM_CONTEXT, &[root.as_ref()]);
    (root, blake3::keyed_hash(&ck, th.as_bytes()))
}

/// Starts a handshake with `remote`: returns our pending state and the init message.
pub fn initiate(local: &DeviceKeypair, remote: &PublicKey) -> (PendingHandshake, Vec<u8>) {
    initiate_with(local, remote, StaticSecret::from(*random_bytes::<32>()))
}

/// As [`initiate`] with an explicit ephemeral secret (known-answer tests).
#[doc(hidden)]
pub fn initiate_with(
    local: &DeviceKeypair,
    remote: &PublicKey,
    ephemeral: StaticSecret,
) -> (PendingHandshake, Vec<u8>) {
    let e_i = PublicKey::from(&ephemeral);
    let dh2 = dh(&ephemeral, remote);
    let dh4 = local.diffie_hellman(remote);
    let proof = init_proof(&dh2, &dh4, &local.public(), remote, &e_i);
    let mut msg = Vec::with_capacity(INIT_LEN);
    msg.push(HANDSHAKE_VERSION);
    msg.extend_from_slice(local.public().as_bytes());
    msg.extend_from_slice(e_i.as_bytes());
    msg.extend_from_slice(proof.as_bytes());
    (
        PendingHandshake {
            local: local.clone(),
            remote: *remote,
            ephemeral,
        },
        msg,
    )
}

fn key_at(b: &[u8], at: usize) -> [u8; 32] {
    let mut k = [0u8; 32];
    k.copy_from_slice(&b[at..at + 32]);
    k
}

/// Answers an init from `remote`: returns our session and the response message.
pub fn respond(
    local: &DeviceKeypair,
    remote: &PublicKey,
    init: &[u8],
) -> Result<(Session, Vec<u8>), CryptoError> {
    respond_with(
        local,
        remote,
        init,
        StaticSecret::from(*random_bytes::<32>()),
    )
}

/// As [`respond`] with an explicit ephemeral secret (known-answer tests).
#[doc(hidden)]
pub fn respond_with(
    local: &DeviceKeypair,
    remote: &PublicKey,
    init: &[u8],
    ephemeral: StaticSecret,
) -> Result<(Session, Vec<u8>), CryptoError> {
    if init.is_empty() {
        return Err(CryptoError::Truncated);
    }
    if init[0] != HANDSHAKE_VERSION {
        return Err(CryptoError::BadVersion(init[0]));
    }
    if init.len() != INIT_LEN {
        return Err(CryptoError::Truncated);
    }
    let s_i = PublicKey::from(key_at(init, 1));
    if s_i.as_bytes() != remote.as_bytes() {
        return Err(CryptoError::Handshake("init from an unexpected device"));
    }
    let e_i = PublicKey::from(key_at(init, 33));
    let proof = blake3::Hash::from(key_at(init, 65));
    let s_r = local.public();
    // Keys from the wire: a low-order one would make its DH all zero.
    let dh2 = local.contributory_dh(&e_i)?;
    let dh4 = local.contributory_dh(&s_i)?;
    // blake3::Hash equality is constant-time.
    if init_proof(&dh2, &dh4, &s_i, &s_r, &e_i) != proof {
        return Err(CryptoError::Handshake("init proof does not verify"));
    }
    let e_r = PublicKey::from(&ephemeral);
    let dh1 = contributory_dh(&ephemeral, &s_i)?;
    let dh3 = contributory_dh(&ephemeral, &e_i)?;
    let (root, confirm) = root_and_confirm([&dh1, &dh2, &dh3, &dh4], &s_i, &s_r, &e_i, &e_r);
    let mut msg = Vec::with_capacity(RESPONSE_LEN);
    msg.push(HANDSHAKE_VERSION);
    msg.extend_from_slice(e_r.as_bytes());
    msg.extend_from_slice(confirm.as_bytes());
    let session = Session::new_responder(
        local.device_id(),
        DeviceId::from_public(&s_i),
        &root,
        ephemeral,
    );
    Ok((session, msg))
}

impl PendingHandshake {
    /// The peer this handshake is with.
    pub fn remote(&self) -> DeviceId {
        DeviceId::from_public(&self.remote)
    }

    /// Completes the handshake with the responder's message.
    pub fn finish(&self, response: &[u8]) -> Result<Session, CryptoError> {
        self.finish_with(response, StaticSecret::from(*random_bytes::<32>()))
    }

    /// As [`finish`](Self::finish) with an explicit first ratchet secret (known-answer tests).
    #[doc(hidden)]
    pub fn finish_with(
        &self,
        response: &[u8],
        ratchet: StaticSecret,
    ) -> Result<Session, CryptoError> {
        if response.is_empty() {
            return Err(CryptoError::Truncated);
        }
        if response[0] != HANDSHAKE_VERSION {
            return Err(CryptoError::BadVersion(response[0]));
        }
        if response.len() != RESPONSE_LEN {
            return Err(CryptoError::Truncated);
        }
        let e_r = PublicKey::from(key_at(response, 1));
        let confirm = blake3::Hash::from(key_at(response, 33));
        let s_i = self.local.public();
        let e_i = PublicKey::from(&self.ephemeral);
        let dh1 = self.local.contributory_dh(&e_r)?;
        let dh2 = contributory_dh(&self.ephemeral, &self.remote)?;
        let dh3 = contributory_dh(&self.ephemeral, &e_r)?;
        let dh4 = self.local.contributory_dh(&self.remote)?;
        let (root, expected) =
            root_and_confirm([&dh1, &dh2, &dh3, &dh4], &s_i, &self.remote, &e_i, &e_r);
        if expected != confirm {
            return Err(CryptoError::Handshake(
                "response confirmation does not verify",
            ));
        }
        Ok(Session::new_initiator_with(
            self.local.device_id(),
            DeviceId::from_public(&self.remote),
            &root,
            e_r,
            ratchet,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_then_ratchet_both_ways() {
        let a = DeviceKeypair::generate();
        let b = DeviceKeypair::generate();
        let (pending, init) = initiate(&a, &b.public());
        let (mut sb, resp) = respond(&b, &a.public(), &init).expect("respond");
        let mut sa = pending.finish(&resp).expect("finish");
        assert!(!sb.can_send());
        let m1 = sa.seal(b"hello b").expect("seal");
        assert_eq!(sb.open(&m1).expect("open"), b"hello b");
        let m2 = sb.seal(b"hello a").expect("seal");
        assert_eq!(sa.open(&m2).expect("open"), b"hello a");
    }

    #[test]
    fn wrong_keys_fail() {
        let a = DeviceKeypair::generate();
        let b = DeviceKeypair::generate();
        let mallory = DeviceKeypair::generate();
        // Mallory claims to be a.
        let (_, forged) = initiate(&mallory, &b.public());
        assert!(respond(&b, &a.public(), &forged).is_err());
        let mut tampered = initiate(&a, &b.public()).1;
        tampered[70] ^= 1;
        assert!(matches!(
            respond(&b, &a.public(), &tampered),
            Err(CryptoError::Handshake(_))
        ));
        // A response from someone else does not confirm.
        let (pending, init) = initiate(&a, &b.public());
        let (_, _) = respond(&b, &a.public(), &init).expect("respond");
        let (_, resp_m) = respond(&mallory, &a.public(), &init).unwrap_or_else(|_| {
            (
                Session::new_responder(
                    a.device_id(),
                    b.device_id(),
                    &[0; 32],
                    StaticSecret::from([1; 32]),
                ),
                vec![1; RESPONSE_LEN],
            )
        });
        assert!(pending.finish(&resp_m).is_err());
        assert!(
            initiator_wins(&a.device_id(), &b.device_id())
                != initiator_wins(&b.device_id(), &a.device_id())
        );
    }
}
