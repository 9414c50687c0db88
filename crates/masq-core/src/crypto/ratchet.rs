//! The Double Ratchet (Signal specification, revision 4) with X25519 DH
//! ratchet steps, BLAKE3 root and chain KDFs ([`super::kdf`]) and
//! XChaCha20-Poly1305 message encryption inside an [`Envelope`].
//!
//! [`Session`] is transactional: [`Session::seal`] and [`Session::open`] work
//! on a copy and only replace `self` on success, so a bad envelope never
//! changes state. Callers that must persist state *with* the effect of a
//! message (the sync engine) clone the session, open on the clone, persist
//! the clone's [`Session::to_bytes`] atomically with the effect, then keep it.
//!
//! Secrets (root, chain and skipped message keys, the DH ratchet secret) are
//! zeroized when dropped or replaced and never printed by `Debug`.

use std::collections::VecDeque;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::Tag;
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use super::envelope::{unpad, Envelope, RatchetHeader, NONCE_LEN};
use super::error::CryptoError;
use super::identity::DeviceId;
use super::kdf::{kdf_ck, kdf_rk, message_key_material};
use super::{contributory_dh, random_bytes};

/// Most message keys skipped in one chain step (Signal's MAX_SKIP).
pub const MAX_SKIP: u32 = 1000;
/// Most skipped message keys kept in total; the oldest are dropped first.
pub const MAX_SKIPPED_TOTAL: usize = 2000;
/// Skipped message keys are kept for the receiving chains of this many
/// peer ratchet keys (the current one and the ones before it); a DH ratchet
/// step drops those of older chains. A message that late is refused (as a
/// replay: its chain is past) and its content comes again through sync, so
/// a key that will never be used does not stay on disk for good (Signal
/// recommends deleting skipped keys after some ratchet steps).
pub const MAX_SKIPPED_CHAINS: usize = 4;
/// Previous peer ratchet keys remembered for replay detection.
pub const MAX_PAST_RATCHET_KEYS: usize = 64;
/// Session serialization format version.
pub const STATE_VERSION: u8 = 1;

/// A skipped message key: (ratchet public key, message number, key).
#[derive(Clone)]
struct Skipped {
    dh: [u8; 32],
    n: u32,
    mk: Zeroizing<[u8; 32]>,
}

/// One side of a Double Ratchet session with one peer.
#[derive(Clone)]
pub struct Session {
    /// This device.
    local: DeviceId,
    /// The peer.
    peer: DeviceId,
    /// Our current DH ratchet key pair (secret zeroized on drop by x25519-dalek).
    dhs: StaticSecret,
    /// Its public half.
    dhs_pub: PublicKey,
    /// The peer's current ratchet public key, once known.
    dhr: Option<PublicKey>,
    /// Root key.
    rk: Zeroizing<[u8; 32]>,
    /// Sending chain key (None until the first DH ratchet step on the responder).
    cks: Option<Zeroizing<[u8; 32]>>,
    /// Receiving chain key.
    ckr: Option<Zeroizing<[u8; 32]>>,
    /// Messages sent in the current sending chain.
    ns: u32,
    /// Messages received in the current receiving chain.
    nr: u32,
    /// Messages in the previous sending chain.
    pn: u32,
    /// Skipped message keys, oldest first.
    skipped: VecDeque<Skipped>,
    /// The peer's previous ratchet public keys (newest last), to tell a replay
    /// of an old chain from a new ratchet step.
    past_dhr: VecDeque<[u8; 32]>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("ns", &self.ns)
            .field("nr", &self.nr)
            .field("skipped", &self.skipped.len())
            .field("secrets", &"<redacted>")
            .finish()
    }
}

fn random_secret() -> StaticSecret {
    StaticSecret::from(*random_bytes::<32>())
}

fn dh(secret: &StaticSecret, public: &PublicKey) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(secret.diffie_hellman(public).to_bytes())
}

impl Session {
    /// Initializes the initiator ("Alice"): knows the shared root `sk` and the
    /// responder's first ratchet key; takes a fresh ratchet key pair.
    pub fn new_initiator(
        local: DeviceId,
        peer: DeviceId,
        sk: &[u8; 32],
        their_ratchet: PublicKey,
    ) -> Self {
        Self::new_initiator_with(local, peer, sk, their_ratchet, random_secret())
    }

    /// As [`new_initiator`](Self::new_initiator) with an explicit ratchet secret (known-answer tests).
    #[doc(hidden)]
    pub fn new_initiator_with(
        local: DeviceId,
        peer: DeviceId,
        sk: &[u8; 32],
        their_ratchet: PublicKey,
        dhs: StaticSecret,
    ) -> Self {
        let dhs_pub = PublicKey::from(&dhs);
        let (rk, cks) = kdf_rk(sk, &dh(&dhs, &their_ratchet));
        Self {
            local,
            peer,
            dhs,
            dhs_pub,
            dhr: Some(their_ratchet),
            rk,
            cks: Some(cks),
            ckr: None,
            ns: 0,
            nr: 0,
            pn: 0,
            skipped: VecDeque::new(),
            past_dhr: VecDeque::new(),
        }
    }

    /// Initializes the responder ("Bob") with the shared root and its first ratchet key pair.
    pub fn new_responder(
        local: DeviceId,
        peer: DeviceId,
        sk: &[u8; 32],
        ratchet: StaticSecret,
    ) -> Self {
        let dhs_pub = PublicKey::from(&ratchet);
        Self {
            local,
            peer,
            dhs: ratchet,
            dhs_pub,
            dhr: None,
            rk: Zeroizing::new(*sk),
            cks: None,
            ckr: None,
            ns: 0,
            nr: 0,
            pn: 0,
            skipped: VecDeque::new(),
            past_dhr: VecDeque::new(),
        }
    }

    /// This device.
    pub fn local(&self) -> DeviceId {
        self.local
    }

    /// The peer.
    pub fn peer(&self) -> DeviceId {
        self.peer
    }

    /// Whether this side can send (the responder can after the first message arrives).
    pub fn can_send(&self) -> bool {
        self.cks.is_some()
    }

    /// Encrypts `plaintext` into an envelope (see [`super::envelope`]).
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.seal_with_nonce(plaintext, *super::random_bytes::<NONCE_LEN>())
    }

    /// As [`seal`](Self::seal) with a given nonce (known-answer tests only:
    /// a nonce must never repeat under one key).
    #[doc(hidden)]
    pub fn seal_with_nonce(
        &mut self,
        plaintext: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Vec<u8>, CryptoError> {
        let cks = self.cks.as_ref().ok_or(CryptoError::NotReady)?;
        let (next, mk) = kdf_ck(cks);
        let env = Envelope {
            sender: self.local,
            recipient: self.peer,
            header: RatchetHeader {
                dh: *self.dhs_pub.as_bytes(),
                pn: self.pn,
                n: self.ns,
            },
            nonce: Some(nonce),
            ciphertext: Vec::new(),
        };
        let ad = env.header_bytes();
        // The key only: the nonce is random and carried in the envelope (see
        // `envelope`), so a message key used twice after a rollback never
        // meets the same nonce again.
        let (key, _) = message_key_material(&mk);
        let cipher = XChaCha20Poly1305::new((&*key).into());
        // header || padded plaintext, encrypted in place, then the tag: one buffer, no copies.
        let target = super::envelope::padme(plaintext.len() + 1);
        let mut out = Vec::with_capacity(ad.len() + target + super::envelope::TAG_LEN);
        out.extend_from_slice(&ad);
        out.extend_from_slice(plaintext);
        out.push(0x80);
        out.resize(ad.len() + target, 0);
        let tag = cipher
            .encrypt_inout_detached(&XNonce::from(nonce), &ad, (&mut out[ad.len()..]).into())
            .map_err(|_| CryptoError::AuthFailed)?;
        out.extend_from_slice(&tag);
        self.cks = Some(next);
        self.ns = self.ns.checked_add(1).ok_or(CryptoError::TooManySkipped)?;
        Ok(out)
    }

    /// Decrypts an envelope. On any error the session is unchanged.
    pub fn open(&mut self, bytes: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.open_inner_with(bytes, None)
    }

    /// As [`open`](Self::open), with the ratchet secret a DH ratchet step
    /// takes, if the envelope makes one (known-answer tests only: a
    /// ratchet secret must be fresh and random).
    #[doc(hidden)]
    pub fn open_with_ratchet_secret(
        &mut self,
        bytes: &[u8],
        next: [u8; 32],
    ) -> Result<Vec<u8>, CryptoError> {
        self.open_inner_with(bytes, Some(StaticSecret::from(next)))
    }

    fn open_inner_with(
        &mut self,
        bytes: &[u8],
        next_secret: Option<StaticSecret>,
    ) -> Result<Vec<u8>, CryptoError> {
        let env = Envelope::decode(bytes)?;
        if env.recipient != self.local {
            return Err(CryptoError::WrongRecipient);
        }
        if env.sender != self.peer {
            return Err(CryptoError::UnknownSender);
        }
        let mut next = self.clone();
        let pt = next.open_inner(&env, next_secret)?;
        *self = next;
        Ok(pt)
    }

    fn decrypt(mk: &[u8; 32], env: &Envelope) -> Result<Vec<u8>, CryptoError> {
        let (key, derived) = message_key_material(mk);
        // Version 2 carries its nonce; version 1 derived it from the key.
        let nonce = env.nonce.unwrap_or(derived);
        let cipher = XChaCha20Poly1305::new((&*key).into());
        let ad = env.header_bytes();
        let split = env
            .ciphertext
            .len()
            .checked_sub(super::envelope::TAG_LEN)
            .ok_or(CryptoError::Truncated)?;
        let mut buf = env.ciphertext[..split].to_vec();
        let tag = Tag::try_from(&env.ciphertext[split..]).map_err(|_| CryptoError::Truncated)?;
        cipher
            .decrypt_inout_detached(&XNonce::from(nonce), &ad, buf.as_mut_slice().into(), &tag)
            .map_err(|_| CryptoError::AuthFailed)?;
        unpad(buf)
    }

    fn open_inner(
        &mut self,
        env: &Envelope,
        next_secret: Option<StaticSecret>,
    ) -> Result<Vec<u8>, CryptoError> {
        let h = env.header;
        // A skipped key?
        if let Some(pos) = self.skipped.iter().position(|s| s.dh == h.dh && s.n == h.n) {
            let pt = Self::decrypt(&self.skipped[pos].mk, env)?;
            self.skipped.remove(pos); // erased on use (Zeroizing drops)
            return Ok(pt);
        }
        let current = self.dhr.map(|d| *d.as_bytes() == h.dh).unwrap_or(false);
        if current {
            if h.n < self.nr {
                return Err(CryptoError::Replay);
            }
        } else {
            // A new ratchet key from the peer — unless it is one we already moved past.
            if self.past_dhr.contains(&h.dh) {
                return Err(CryptoError::Replay);
            }
            self.skip_until(h.pn)?;
            self.dh_ratchet(
                PublicKey::from(h.dh),
                next_secret.unwrap_or_else(random_secret),
            )?;
        }
        self.skip_until(h.n)?;
        let ckr = self.ckr.as_ref().ok_or(CryptoError::BadState)?;
        let (next, mk) = kdf_ck(ckr);
        let pt = Self::decrypt(&mk, env)?;
        self.ckr = Some(next);
        self.nr += 1;
        Ok(pt)
    }

    /// Stores message keys of the receiving chain up to (not including) `until`.
    fn skip_until(&mut self, until: u32) -> Result<(), CryptoError> {
        let Some(mut ck) = self.ckr.clone() else {
            return Ok(());
        };
        if until < self.nr {
            return Ok(());
        }
        if until - self.nr > MAX_SKIP {
            return Err(CryptoError::TooManySkipped);
        }
        let dh = self.dhr.map(|d| *d.as_bytes()).unwrap_or([0; 32]);
        while self.nr < until {
            let (next, mk) = kdf_ck(&ck);
            self.skipped.push_back(Skipped { dh, n: self.nr, mk });
            if self.skipped.len() > MAX_SKIPPED_TOTAL {
                self.skipped.pop_front();
            }
            ck = next;
            self.nr += 1;
        }
        self.ckr = Some(ck);
        Ok(())
    }

    /// A DH ratchet step to the peer's new key `their` (from an envelope
    /// header): refused, before anything changes, if it is of low order.
    fn dh_ratchet(&mut self, their: PublicKey, next: StaticSecret) -> Result<(), CryptoError> {
        let dh_recv = contributory_dh(&self.dhs, &their)?;
        self.pn = self.ns;
        self.ns = 0;
        self.nr = 0;
        if let Some(old) = self.dhr.replace(their) {
            self.past_dhr.push_back(*old.as_bytes());
            if self.past_dhr.len() > MAX_PAST_RATCHET_KEYS {
                self.past_dhr.pop_front();
            }
        }
        // Skipped keys of chains older than the last MAX_SKIPPED_CHAINS expire.
        let kept: Vec<[u8; 32]> = self
            .past_dhr
            .iter()
            .rev()
            .take(MAX_SKIPPED_CHAINS - 1)
            .copied()
            .chain(std::iter::once(*their.as_bytes()))
            .collect();
        self.skipped.retain(|s| kept.contains(&s.dh));
        let (rk, ckr) = kdf_rk(&self.rk, &dh_recv);
        self.rk = rk;
        self.ckr = Some(ckr);
        self.dhs = next;
        self.dhs_pub = PublicKey::from(&self.dhs);
        let dh_send = contributory_dh(&self.dhs, &their)?;
        let (rk, cks) = kdf_rk(&self.rk, &dh_send);
        self.rk = rk;
        self.cks = Some(cks);
        Ok(())
    }

    /// Bytes of [`to_bytes`](Self::to_bytes)' output: version, both device
    /// ids, the ratchet secret, the peer's ratchet key (flag + 32), the root
    /// key, both chain keys (flag + 32 each), four counters, the skipped keys
    /// (32 + 4 + 32 each) and the past ratchet keys (count + 32 each).
    pub fn serialized_len(&self) -> usize {
        1 + 32
            + 32
            + 32
            + 33
            + 32
            + 33
            + 33
            + 16
            + self.skipped.len() * 68
            + 4
            + self.past_dhr.len() * 32
    }

    /// Serializes the whole state (versioned; see `docs/crypto.md`). Wiped
    /// on drop; its buffer is allocated at its exact size once, so growing it
    /// never leaves an unwiped copy of the secrets behind in freed memory.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(self.serialized_len()));
        out.push(STATE_VERSION);
        out.extend_from_slice(&self.local.0);
        out.extend_from_slice(&self.peer.0);
        out.extend_from_slice(&self.dhs.to_bytes());
        let opt = |out: &mut Vec<u8>, v: Option<&[u8; 32]>| match v {
            Some(k) => {
                out.push(1);
                out.extend_from_slice(k);
            }
            None => {
                out.push(0);
                out.extend_from_slice(&[0; 32]);
            }
        };
        opt(&mut out, self.dhr.as_ref().map(|d| d.as_bytes()));
        out.extend_from_slice(self.rk.as_ref());
        opt(&mut out, self.cks.as_deref());
        opt(&mut out, self.ckr.as_deref());
        for v in [self.ns, self.nr, self.pn, self.skipped.len() as u32] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        for s in &self.skipped {
            out.extend_from_slice(&s.dh);
            out.extend_from_slice(&s.n.to_be_bytes());
            out.extend_from_slice(s.mk.as_ref());
        }
        out.extend_from_slice(&(self.past_dhr.len() as u32).to_be_bytes());
        for k in &self.past_dhr {
            out.extend_from_slice(k);
        }
        out
    }

    /// Restores a session from [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let mut r = StateReader { b: bytes };
        if r.take(1)?[0] != STATE_VERSION {
            return Err(CryptoError::BadState);
        }
        let local = DeviceId(r.k32()?);
        let peer = DeviceId(r.k32()?);
        let mut secret = Zeroizing::new(r.k32()?);
        let dhs = StaticSecret::from(*secret);
        secret.zeroize();
        let dhr = r.opt()?.map(|k| PublicKey::from(*k));
        let rk = Zeroizing::new(r.k32()?);
        let cks = r.opt()?;
        let ckr = r.opt()?;
        let (ns, nr, pn, count) = (r.u32()?, r.u32()?, r.u32()?, r.u32()? as usize);
        if count > MAX_SKIPPED_TOTAL {
            return Err(CryptoError::BadState);
        }
        let mut skipped = VecDeque::with_capacity(count);
        for _ in 0..count {
            let dh = r.k32()?;
            let n = r.u32()?;
            let mk = Zeroizing::new(r.k32()?);
            skipped.push_back(Skipped { dh, n, mk });
        }
        let past = r.u32()? as usize;
        if past > MAX_PAST_RATCHET_KEYS {
            return Err(CryptoError::BadState);
        }
        let mut past_dhr = VecDeque::with_capacity(past);
        for _ in 0..past {
            past_dhr.push_back(r.k32()?);
        }
        if !r.b.is_empty() {
            return Err(CryptoError::BadState);
        }
        let dhs_pub = PublicKey::from(&dhs);
        Ok(Self {
            local,
            peer,
            dhs,
            dhs_pub,
            dhr,
            rk,
            cks,
            ckr,
            ns,
            nr,
            pn,
            skipped,
            past_dhr,
        })
    }
}

/// Reads serialized session state.
struct StateReader<'a> {
    b: &'a [u8],
}

impl<'a> StateReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CryptoError> {
        if self.b.len() < n {
            return Err(CryptoError::BadState);
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn k32(&mut self) -> Result<[u8; 32], CryptoError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, CryptoError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn opt(&mut self) -> Result<Option<Zeroizing<[u8; 32]>>, CryptoError> {
        let flag = self.take(1)?[0];
        let v = Zeroizing::new(self.k32()?);
        match flag {
            0 => Ok(None),
            1 => Ok(Some(v)),
            _ => Err(CryptoError::BadState),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key skipped in one receiving chain opens its message while that
    /// chain is among the last MAX_SKIPPED_CHAINS, and is gone after.
    #[test]
    fn skipped_keys_expire_after_some_ratchet_steps() {
        let (a_id, b_id) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let sk = [7u8; 32];
        let b_ratchet = random_secret();
        let mut a = Session::new_initiator(a_id, b_id, &sk, PublicKey::from(&b_ratchet));
        let mut b = Session::new_responder(b_id, a_id, &sk, b_ratchet);
        let late: Vec<Vec<u8>> = (0..3).map(|i| a.seal(&[i]).unwrap()).collect();
        assert_eq!(b.open(&late[2]).unwrap(), [2]); // 0 and 1 skipped
                                                    // Each round moves b to a new receiving chain (a answers with a new key).
        let round = |a: &mut Session, b: &mut Session| {
            let back = b.seal(b"ping").unwrap();
            assert_eq!(a.open(&back).unwrap(), b"ping");
            let next = a.seal(b"pong").unwrap();
            assert_eq!(b.open(&next).unwrap(), b"pong");
        };
        for _ in 0..MAX_SKIPPED_CHAINS - 1 {
            round(&mut a, &mut b);
        }
        assert_eq!(
            b.open(&late[0]).unwrap(),
            [0],
            "still within the kept chains"
        );
        round(&mut a, &mut b);
        assert!(matches!(b.open(&late[1]), Err(CryptoError::Replay)));
        assert!(b.skipped.is_empty());
    }

    /// A session that skipped keys and stepped its DH ratchet many times
    /// serializes into a buffer that never grew (no unwiped copy left
    /// behind), and reads back to a session that still opens what the peer
    /// sends.
    #[test]
    fn serialization_never_reallocates_and_round_trips() {
        let (a_id, b_id) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let sk = [7u8; 32];
        let b_ratchet = random_secret();
        let mut a = Session::new_initiator(a_id, b_id, &sk, PublicKey::from(&b_ratchet));
        let mut b = Session::new_responder(b_id, a_id, &sk, b_ratchet);
        for round in 0..40u32 {
            // a sends three, b sees only the last: two keys skipped.
            let sent: Vec<Vec<u8>> = (0..3).map(|i| a.seal(&[i]).unwrap()).collect();
            assert_eq!(b.open(&sent[2]).unwrap(), [2]);
            // b answers: a DH ratchet step on both sides.
            let back = b.seal(&round.to_be_bytes()).unwrap();
            assert_eq!(a.open(&back).unwrap(), round.to_be_bytes());
        }
        assert!(!b.skipped.is_empty() && !b.past_dhr.is_empty());
        for s in [&a, &b] {
            let bytes = s.to_bytes();
            assert_eq!(bytes.len(), s.serialized_len());
            assert_eq!(bytes.capacity(), bytes.len(), "the buffer grew");
        }
        let mut b2 = Session::from_bytes(&b.to_bytes()).unwrap();
        let msg = a.seal(b"after").unwrap();
        assert_eq!(b2.open(&msg).unwrap(), b"after");
    }
}
