//! Session establishment between two devices that already know each other's
//! static X25519 public keys (learned while pairing): one round trip, in the
//! spirit of Noise KK, giving mutual authentication and the root key of a
//! Double Ratchet [`Session`].
//!
//! ```text
//! init     = 0x02 || S_i (32) || E_i (32) || stamp (8, u64 BE) || proof (32)
//!   proof  = BLAKE3-keyed(derive(INIT_CTX, DH(e_i,S_r) || DH(s_i,S_r) || H(S_i||S_r||E_i||stamp)), "init")
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
//! The init's `stamp` must grow from one init to the next (the initiator
//! starts from its wall clock in milliseconds; see `sync::link`), so that the
//! responder can refuse an init older than one it already answered. The
//! proof covers it. A refused init is answered by a [`refuse`]al that only
//! the responder can make and only the initiator can check:
//!
//! ```text
//! refusal = 0x01 || BLAKE3(init) (32) || mark (8, u64 BE) || mac (32)
//!   mac   = BLAKE3-keyed(derive(REFUSAL_CTX, DH(s_r,S_i)), S_r || S_i || BLAKE3(init) || mark)
//! ```
//!
//! `mark` is the highest stamp of the initiator's inits that the responder
//! answered or saw lose the tie-break: the initiator starts over above it
//! ([`read_refusal`]).
//!
//! Every key taken from a message (and the peer's static key) must give a
//! contributory DH: a low-order key is refused with
//! [`CryptoError::LowOrderKey`].

use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::error::CryptoError;
use super::identity::{DeviceId, DeviceKeypair};
use super::kdf::{
    derive, HANDSHAKE_CONFIRM_CONTEXT, HANDSHAKE_INIT_CONTEXT, HANDSHAKE_REFUSAL_CONTEXT,
    HANDSHAKE_ROOT_CONTEXT,
};
use super::ratchet::Session;
use super::{contributory_dh, random_bytes};

/// Init message version (2: with a stamp; an init of version 1 is refused
/// as [`CryptoError::BadVersion`]).
pub const INIT_VERSION: u8 = 2;
/// Response message version.
pub const RESPONSE_VERSION: u8 = 1;
/// Refusal message version.
pub const REFUSAL_VERSION: u8 = 1;
/// Length of an init message.
pub const INIT_LEN: usize = 1 + 32 + 32 + 8 + 32;
/// Length of a response.
pub const RESPONSE_LEN: usize = 1 + 32 + 32;
/// Length of a refusal.
pub const REFUSAL_LEN: usize = 1 + 32 + 8 + 32;

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
    stamp: u64,
) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(s_i.as_bytes());
    h.update(s_r.as_bytes());
    h.update(e_i.as_bytes());
    h.update(&stamp.to_be_bytes());
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

/// Starts a handshake with `remote`: returns our pending state and the init
/// message. `stamp` must be higher than that of every earlier init to
/// `remote` (see the module docs).
pub fn initiate(
    local: &DeviceKeypair,
    remote: &PublicKey,
    stamp: u64,
) -> (PendingHandshake, Vec<u8>) {
    initiate_with(
        local,
        remote,
        stamp,
        StaticSecret::from(*random_bytes::<32>()),
    )
}

/// As [`initiate`] with an explicit ephemeral secret (known-answer tests).
#[doc(hidden)]
pub fn initiate_with(
    local: &DeviceKeypair,
    remote: &PublicKey,
    stamp: u64,
    ephemeral: StaticSecret,
) -> (PendingHandshake, Vec<u8>) {
    let e_i = PublicKey::from(&ephemeral);
    let dh2 = dh(&ephemeral, remote);
    let dh4 = local.diffie_hellman(remote);
    let proof = init_proof(&dh2, &dh4, &local.public(), remote, &e_i, stamp);
    let mut msg = Vec::with_capacity(INIT_LEN);
    msg.push(INIT_VERSION);
    msg.extend_from_slice(local.public().as_bytes());
    msg.extend_from_slice(e_i.as_bytes());
    msg.extend_from_slice(&stamp.to_be_bytes());
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

/// A handshake message's version byte and length: an unknown version is
/// named as such, any other length is truncated.
fn check_header(msg: &[u8], version: u8, len: usize) -> Result<(), CryptoError> {
    match msg.first() {
        None => Err(CryptoError::Truncated),
        Some(&v) if v != version => Err(CryptoError::BadVersion(v)),
        Some(_) if msg.len() != len => Err(CryptoError::Truncated),
        Some(_) => Ok(()),
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut n = [0u8; 8];
    n.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(n)
}

/// The stamp of an init of the right version and length (authentic only
/// once [`respond`] accepted the init).
pub fn init_stamp(init: &[u8]) -> Option<u64> {
    (init.len() == INIT_LEN && init[0] == INIT_VERSION).then(|| u64_at(init, 65))
}

fn refusal_mac(
    dh: &[u8; 32],
    refuser: &PublicKey,
    refused: &PublicKey,
    init_hash: &[u8; 32],
    mark: u64,
) -> blake3::Hash {
    let key = derive(HANDSHAKE_REFUSAL_CONTEXT, &[dh]);
    let mut h = blake3::Hasher::new_keyed(&key);
    h.update(refuser.as_bytes());
    h.update(refused.as_bytes());
    h.update(init_hash);
    h.update(&mark.to_be_bytes());
    h.finalize()
}

/// The answer to an init from `remote` that is authentic but stamped at or
/// below `mark` (the highest stamp of its inits answered or seen losing
/// before): tells the initiator, in a way only it can check, to start over
/// above `mark`.
pub fn refuse(
    local: &DeviceKeypair,
    remote: &PublicKey,
    init: &[u8],
    mark: u64,
) -> Result<Vec<u8>, CryptoError> {
    let dh = local.contributory_dh(remote)?;
    let init_hash = *blake3::hash(init).as_bytes();
    let mac = refusal_mac(&dh, &local.public(), remote, &init_hash, mark);
    let mut msg = Vec::with_capacity(REFUSAL_LEN);
    msg.push(REFUSAL_VERSION);
    msg.extend_from_slice(&init_hash);
    msg.extend_from_slice(&mark.to_be_bytes());
    msg.extend_from_slice(mac.as_bytes());
    Ok(msg)
}

/// Checks `remote`'s refusal of our `init`: returns its mark (the next init
/// must be stamped above it). A refusal of another init, or one `remote`
/// did not make, is an error.
pub fn read_refusal(
    local: &DeviceKeypair,
    remote: &PublicKey,
    init: &[u8],
    refusal: &[u8],
) -> Result<u64, CryptoError> {
    check_header(refusal, REFUSAL_VERSION, REFUSAL_LEN)?;
    let init_hash = *blake3::hash(init).as_bytes();
    // blake3::Hash equality is constant-time.
    if blake3::Hash::from(key_at(refusal, 1)) != blake3::Hash::from(init_hash) {
        return Err(CryptoError::Handshake("refusal of another init"));
    }
    let mark = u64_at(refusal, 33);
    let dh = local.contributory_dh(remote)?;
    if refusal_mac(&dh, remote, &local.public(), &init_hash, mark)
        != blake3::Hash::from(key_at(refusal, 41))
    {
        return Err(CryptoError::Handshake("refusal does not verify"));
    }
    Ok(mark)
}

/// Checks an init from `remote` without answering it (an init that lost
/// the tie-break): returns its stamp once its proof holds.
pub fn verify_init(
    local: &DeviceKeypair,
    remote: &PublicKey,
    init: &[u8],
) -> Result<u64, CryptoError> {
    Ok(check_init(local, remote, init)?.stamp)
}

/// An init whose proof holds, and what answering it needs.
struct CheckedInit {
    e_i: PublicKey,
    stamp: u64,
    dh2: Zeroizing<[u8; 32]>,
    dh4: Zeroizing<[u8; 32]>,
}

fn check_init(
    local: &DeviceKeypair,
    remote: &PublicKey,
    init: &[u8],
) -> Result<CheckedInit, CryptoError> {
    check_header(init, INIT_VERSION, INIT_LEN)?;
    let s_i = PublicKey::from(key_at(init, 1));
    if s_i.as_bytes() != remote.as_bytes() {
        return Err(CryptoError::Handshake("init from an unexpected device"));
    }
    let e_i = PublicKey::from(key_at(init, 33));
    let stamp = u64_at(init, 65);
    // Keys from the wire: a low-order one would make its DH all zero.
    let dh2 = local.contributory_dh(&e_i)?;
    let dh4 = local.contributory_dh(&s_i)?;
    // blake3::Hash equality is constant-time.
    if init_proof(&dh2, &dh4, &s_i, &local.public(), &e_i, stamp)
        != blake3::Hash::from(key_at(init, 73))
    {
        return Err(CryptoError::Handshake("init proof does not verify"));
    }
    Ok(CheckedInit {
        e_i,
        stamp,
        dh2,
        dh4,
    })
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
    let CheckedInit { e_i, dh2, dh4, .. } = check_init(local, remote, init)?;
    let s_i = *remote;
    let s_r = local.public();
    let e_r = PublicKey::from(&ephemeral);
    let dh1 = contributory_dh(&ephemeral, &s_i)?;
    let dh3 = contributory_dh(&ephemeral, &e_i)?;
    let (root, confirm) = root_and_confirm([&dh1, &dh2, &dh3, &dh4], &s_i, &s_r, &e_i, &e_r);
    let mut msg = Vec::with_capacity(RESPONSE_LEN);
    msg.push(RESPONSE_VERSION);
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
        check_header(response, RESPONSE_VERSION, RESPONSE_LEN)?;
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
        let (pending, init) = initiate(&a, &b.public(), 1);
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
        let (_, forged) = initiate(&mallory, &b.public(), 1);
        assert!(respond(&b, &a.public(), &forged).is_err());
        let mut tampered = initiate(&a, &b.public(), 1).1;
        tampered[80] ^= 1; // a proof byte
        assert!(matches!(
            respond(&b, &a.public(), &tampered),
            Err(CryptoError::Handshake(_))
        ));
        // A response from someone else does not confirm.
        let (pending, init) = initiate(&a, &b.public(), 1);
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

    #[test]
    fn the_stamp_is_read_from_the_init_and_covered_by_its_proof() {
        let a = DeviceKeypair::generate();
        let b = DeviceKeypair::generate();
        let (_, init) = initiate(&a, &b.public(), 0x0102_0304_0506_0708);
        assert_eq!(init.len(), INIT_LEN);
        assert_eq!(init_stamp(&init), Some(0x0102_0304_0506_0708));
        respond(&b, &a.public(), &init).expect("respond");
        // A replay with a newer stamp written in fails the proof.
        let mut newer = init.clone();
        newer[65] ^= 0x80;
        assert!(matches!(
            respond(&b, &a.public(), &newer),
            Err(CryptoError::Handshake(_))
        ));
        // Version 1 (no stamp) is refused as such.
        let mut v1 = init;
        v1[0] = 1;
        assert_eq!(
            respond(&b, &a.public(), &v1).err(),
            Some(CryptoError::BadVersion(1))
        );
    }

    #[test]
    fn a_refusal_is_checked_by_the_initiator_only_for_its_own_init() {
        let a = DeviceKeypair::generate();
        let b = DeviceKeypair::generate();
        let mallory = DeviceKeypair::generate();
        let (_, init) = initiate(&a, &b.public(), 7);
        let refusal = refuse(&b, &a.public(), &init, 99).expect("refuse");
        assert_eq!(refusal.len(), REFUSAL_LEN);
        assert_eq!(read_refusal(&a, &b.public(), &init, &refusal), Ok(99));
        // Of another init of A's: refused.
        let (_, other) = initiate(&a, &b.public(), 8);
        assert!(read_refusal(&a, &b.public(), &other, &refusal).is_err());
        // A mark changed on the way, or a refusal made by someone else.
        let mut raised = refusal.clone();
        raised[40] ^= 1;
        assert!(read_refusal(&a, &b.public(), &init, &raised).is_err());
        let forged = refuse(&mallory, &a.public(), &init, 99).expect("refuse");
        assert!(read_refusal(&a, &b.public(), &init, &forged).is_err());
        // A's own refusal reflected back to it does not pass as B's.
        let own = refuse(&a, &b.public(), &init, 99).expect("refuse");
        assert!(read_refusal(&a, &b.public(), &init, &own).is_err());
        assert!(read_refusal(&a, &b.public(), &init, &refusal[..40]).is_err());
    }
}
