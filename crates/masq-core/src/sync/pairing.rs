//! Pairing two devices, sans I/O: commit, reveal, compare, confirm.
//!
//! The invite's holder is not trusted to be the user: an invite can be seen
//! over a shoulder, photographed, or taken by a relay that also holds it. So
//! the six-digit code the two screens show decides, and it is made such that
//! a man in the middle gets one guess at it (1 in 10^6), as Bluetooth's
//! numeric comparison and ZRTP do:
//!
//! 1. joiner → inviter: [`Commit`](PairMessage::Commit) `c = BLAKE3-derive_key(COMMIT_CONTEXT, reveal)`,
//!    where `reveal` is the encoded [`Reveal`](PairMessage::Reveal) it will send in step 3
//!    (its public key, name and 32 fresh random bytes `n_j`);
//! 2. inviter → joiner: [`Offer`](PairMessage::Offer): its key, name and fresh `n_i`;
//! 3. joiner → inviter: the `reveal` itself; the inviter checks it against `c`
//!    (in constant time) and refuses the pairing if it differs;
//! 4. both show `code = pairing_code(pk_j, pk_i, n_j, n_i)` and ask their user;
//! 5. the joiner's user says yes: joiner → inviter [`Confirm`](PairMessage::Confirm);
//! 6. the inviter's user says yes and the joiner's Confirm is in: the inviter
//!    stores the joiner and sends [`Welcome`](PairMessage::Welcome) (its other
//!    devices); the joiner stores the inviter and them on receiving it.
//!
//! Confirm and Welcome carry a MAC under [`confirmation_key`]: the two
//! devices' static-static X25519 secret and the transcript (commitment,
//! reveal, offer as sent and received). Whoever holds the invite and sits
//! on the path can seal messages in the channel, and could otherwise pass
//! the first three messages on untouched (so the codes match) and then
//! forge a Confirm, or swap the Welcome's list for a key of its own; it
//! cannot make these MACs, and a name changed on the way changes the
//! transcript, so the MAC fails and the pairing ends.
//!
//! A "no" on either side sends [`Decline`](PairMessage::Decline), and nothing
//! is stored on either side. Until both users have said yes, no record is
//! written and no introduction leaves either device.
//!
//! Why one guess: the joiner is bound to `n_j` before it sees `n_i`, and the
//! inviter sends `n_i` before it sees `n_j`. Someone in the middle who plays
//! the joiner towards the inviter must commit before learning the inviter's
//! nonce; playing the inviter towards the joiner, it must send its nonce
//! before the joiner's is revealed. Either way the code on one screen is
//! fixed before the attacker can steer the other, so trying keys offline
//! buys nothing.
//!
//! Every message travels sealed in the [`PairingChannel`] of the invite's
//! secret (the relay can neither read nor forge it), in the byte format of
//! [`wire::pairing`](crate::wire::pairing).
//!
//! Architecture invariant: no I/O, no clock, no storage. The caller moves
//! sealed messages between [`Exchange::take_messages`] and the relay's
//! rendezvous slot, asks its user, and stores the records once
//! [`Event::Agreed`] comes out.

use subtle::ConstantTimeEq;
use x25519_dalek::PublicKey;
use zeroize::Zeroizing;

use crate::crypto::pairing::{PairingChannel, PairingError, TO_INVITER, TO_JOINER};
use crate::crypto::{check_public_key, random_bytes, DeviceKeypair};
use crate::wire::device::{PeerInfo, WireError};
use crate::wire::invite::Invite;
use crate::wire::pairing::{welcome_list, PairMessage};

/// BLAKE3 context of the joiner's commitment.
pub const COMMIT_CONTEXT: &str = "masq 2026-12 pairing commitment v2";
/// BLAKE3 context of the code the users compare.
pub const CODE_CONTEXT: &str = "masq 2026-12 pairing code v2";
/// BLAKE3 context of the key that authenticates Confirm and Welcome.
pub const CONFIRMATION_KEY_CONTEXT: &str = "masq 2026-12 pairing confirmation key v2";

/// The key of the Confirm and Welcome MACs: `derive_key(CONFIRMATION_KEY_CONTEXT,
/// DH(s_me, S_other) || BLAKE3(commitment || reveal || offer))`, with the
/// reveal and offer as encoded messages (as sent, and as received).
pub fn confirmation_key(
    static_dh: &[u8; 32],
    commitment: &[u8; 32],
    reveal: &[u8],
    offer: &[u8],
) -> Zeroizing<[u8; 32]> {
    let mut th = blake3::Hasher::new();
    th.update(commitment);
    th.update(reveal);
    th.update(offer);
    let mut input = Zeroizing::new([0u8; 64]);
    input[..32].copy_from_slice(static_dh);
    input[32..].copy_from_slice(th.finalize().as_bytes());
    Zeroizing::new(blake3::derive_key(CONFIRMATION_KEY_CONTEXT, &*input))
}

/// The Confirm MAC: `BLAKE3-keyed(key, "confirm")`.
pub fn confirm_mac(key: &[u8; 32]) -> [u8; 32] {
    *blake3::keyed_hash(key, b"confirm").as_bytes()
}

/// The Welcome MAC: `BLAKE3-keyed(key, "welcome" || the encoded list)`.
pub fn welcome_mac(key: &[u8; 32], list: &[PeerInfo]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"welcome");
    h.update(&welcome_list(list));
    *h.finalize().as_bytes()
}

/// The commitment to an encoded `Reveal` message.
pub fn commitment(reveal: &[u8]) -> [u8; 32] {
    blake3::derive_key(COMMIT_CONTEXT, reveal)
}

/// The six-digit code of a pairing: `k = BLAKE3-derive_key(CODE_CONTEXT,
/// pk_joiner || pk_inviter || n_joiner || n_inviter)`, the first 8 bytes of
/// `k` as a big-endian u64, modulo 10^6, zero-padded to six digits.
pub fn pairing_code(
    joiner: &[u8; 32],
    inviter: &[u8; 32],
    joiner_nonce: &[u8; 32],
    inviter_nonce: &[u8; 32],
) -> String {
    let mut input = [0u8; 128];
    input[..32].copy_from_slice(joiner);
    input[32..64].copy_from_slice(inviter);
    input[64..96].copy_from_slice(joiner_nonce);
    input[96..].copy_from_slice(inviter_nonce);
    let k = blake3::derive_key(CODE_CONTEXT, &input);
    let mut first = [0u8; 8];
    first.copy_from_slice(&k[..8]);
    format!("{:06}", u64::from_be_bytes(first) % 1_000_000)
}

/// Which end of the invite this device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Made the invite.
    Inviter,
    /// Opened someone's invite.
    Joiner,
}

/// What the exchange asks of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Show `code` and who `peer` says it is; ask the user whether the other
    /// screen shows the same code, then call [`Exchange::confirm`].
    Compare {
        /// The six digits both screens must show.
        code: String,
        /// The other device, as it introduced itself.
        peer: PeerInfo,
    },
    /// Both users said yes: store `peer` (and, on the joiner, `others`, the
    /// inviter's other devices). The inviter then calls [`Exchange::welcome`].
    Agreed {
        /// The other device.
        peer: PeerInfo,
        /// The inviter's other devices (empty on the inviter).
        others: Vec<PeerInfo>,
        /// The code both users confirmed.
        code: String,
    },
}

/// Why a pairing ended without agreement. After any of these the exchange
/// is over and nothing was stored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExchangeError {
    /// A message did not open (wrong or forged invite).
    #[error(transparent)]
    Channel(#[from] PairingError),
    /// A message opened but is not a pairing v2 message.
    #[error("a malformed pairing message ({0}); is the other device's masq up to date?")]
    Wire(#[from] WireError),
    /// A message came that the exchange does not expect now.
    #[error("the other device sent {got} where {expected} was due")]
    OutOfOrder {
        /// What came.
        got: &'static str,
        /// What the exchange waited for.
        expected: &'static str,
    },
    /// A Confirm or Welcome whose MAC is wrong: not from the device whose
    /// code was compared, or the transcript differs (a name or nonce
    /// changed on the way).
    #[error("the other device's confirmation does not authenticate (someone in the middle?)")]
    BadConfirmation,
    /// The joiner's reveal is not what it committed to.
    #[error("the other device's reveal does not match its commitment")]
    CommitmentMismatch,
    /// The other device's public key is a low-order point.
    #[error("the other device's key is not usable (a low-order point)")]
    BadKey,
    /// Both ends are the same device.
    #[error("a device cannot pair with itself")]
    SelfPairing,
    /// The other device's user said no (or it gave up).
    #[error("the other device declined the pairing")]
    DeclinedThere,
    /// This device's user said no.
    #[error("the pairing was declined here")]
    DeclinedHere,
    /// Asked to confirm before there was a code, or after the end.
    #[error("there is no code to confirm now")]
    NothingToConfirm,
    /// The exchange already ended.
    #[error("the pairing is over")]
    Over,
}

/// Where the exchange is.
#[derive(Debug)]
enum State {
    /// Joiner: waiting for the inviter to be in the slot. Inviter: waiting
    /// for the joiner's commitment.
    Start,
    /// Joiner: committed; waiting for the inviter's offer.
    AwaitOffer,
    /// Inviter: offered; waiting for the reveal that matches `commitment`.
    AwaitReveal {
        /// The joiner's commitment.
        commitment: [u8; 32],
    },
    /// The code is out; waiting for the users.
    Comparing {
        /// The other device.
        peer: PeerInfo,
        /// The code shown.
        code: String,
        /// The key of the Confirm and Welcome MACs.
        key: Zeroizing<[u8; 32]>,
    },
    /// Both users said yes (the inviter may still owe its welcome, under
    /// this key).
    Agreed(Zeroizing<[u8; 32]>),
    /// Declined or broken.
    Failed,
}

/// One pairing, from either end.
pub struct Exchange {
    /// Inviter or joiner.
    role: Role,
    /// The channel of the invite's secret.
    channel: PairingChannel,
    /// This device's key pair (the MAC key needs its secret).
    kp: DeviceKeypair,
    /// This device, as introduced to the other.
    me: PeerInfo,
    /// This side's fresh nonce (secret until revealed or offered).
    nonce: Zeroizing<[u8; 32]>,
    /// The encoded reveal (the joiner's own, or the one the inviter got).
    reveal: Vec<u8>,
    /// The encoded offer (the inviter's own, or the one the joiner got).
    offer: Vec<u8>,
    /// The joiner's commitment (made, or received).
    commitment: [u8; 32],
    /// Where the exchange is.
    state: State,
    /// This device's user said yes.
    yes_here: bool,
    /// Inviter: the joiner's Confirm is in.
    yes_there: bool,
    /// Sealed messages for the rendezvous slot.
    outbox: Vec<Vec<u8>>,
}

impl Exchange {
    /// A pairing over `invite` as `role`, for the device `kp` introducing
    /// itself as `name`.
    pub fn new(role: Role, invite: &Invite, kp: &DeviceKeypair, name: &str) -> Self {
        Self::with_nonce(role, invite, kp, name, random_bytes::<32>())
    }

    /// As [`new`](Self::new) with a given nonce (known-answer tests only).
    #[doc(hidden)]
    pub fn with_nonce(
        role: Role,
        invite: &Invite,
        kp: &DeviceKeypair,
        name: &str,
        nonce: Zeroizing<[u8; 32]>,
    ) -> Self {
        let me = PeerInfo {
            public_key: *kp.public().as_bytes(),
            name: name.to_string(),
        };
        let (reveal, offer) = match role {
            Role::Joiner => (
                PairMessage::Reveal {
                    peer: me.clone(),
                    nonce: *nonce,
                }
                .encode(),
                Vec::new(),
            ),
            Role::Inviter => (
                Vec::new(),
                PairMessage::Offer {
                    peer: me.clone(),
                    nonce: *nonce,
                }
                .encode(),
            ),
        };
        Self {
            role,
            channel: PairingChannel::new(&invite.secret, invite.slot),
            kp: kp.clone(),
            me,
            nonce,
            commitment: commitment(&reveal),
            reveal,
            offer,
            state: State::Start,
            yes_here: false,
            yes_there: false,
            outbox: Vec::new(),
        }
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the exchange ended (agreed, declined or broken).
    pub fn is_over(&self) -> bool {
        matches!(self.state, State::Agreed(_) | State::Failed)
    }

    /// Whether the two devices have started talking and not ended: the
    /// other side leaving the slot now ends the pairing.
    pub fn is_under_way(&self) -> bool {
        !matches!(self.state, State::Start) && !self.is_over()
    }

    /// Whether the code is out and this device's user has not answered yet.
    pub fn awaits_answer(&self) -> bool {
        matches!(self.state, State::Comparing { .. }) && !self.yes_here
    }

    /// Sealed messages to send into the rendezvous slot, in order.
    pub fn take_messages(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.outbox)
    }

    fn send(&mut self, m: &PairMessage) {
        self.send_bytes(&m.encode());
    }

    fn send_bytes(&mut self, plaintext: &[u8]) {
        let direction = match self.role {
            Role::Inviter => TO_JOINER,
            Role::Joiner => TO_INVITER,
        };
        self.outbox.push(self.channel.seal(direction, plaintext));
    }

    /// The MAC key, once the other device's key is known (checked).
    fn key_with(&self, peer: &PeerInfo) -> Zeroizing<[u8; 32]> {
        let dh = self.kp.diffie_hellman(&PublicKey::from(peer.public_key));
        confirmation_key(&dh, &self.commitment, &self.reveal, &self.offer)
    }

    /// The relay says the other device is in the slot: the joiner commits
    /// (the inviter waits for that commitment).
    pub fn on_peer_present(&mut self) {
        if self.role == Role::Joiner && matches!(self.state, State::Start) {
            let c = self.commitment;
            self.send(&PairMessage::Commit(c));
            self.state = State::AwaitOffer;
        }
    }

    /// One sealed message from the slot. An error ends the exchange.
    pub fn on_message(&mut self, sealed: &[u8]) -> Result<Option<Event>, ExchangeError> {
        if self.is_over() {
            return Err(ExchangeError::Over);
        }
        let r = self.step(sealed);
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    fn step(&mut self, sealed: &[u8]) -> Result<Option<Event>, ExchangeError> {
        let direction = match self.role {
            Role::Inviter => TO_INVITER,
            Role::Joiner => TO_JOINER,
        };
        let plain = Zeroizing::new(self.channel.open(direction, sealed)?);
        let message = PairMessage::decode(&plain)?;
        if message == PairMessage::Decline {
            return Err(ExchangeError::DeclinedThere);
        }
        let state = std::mem::replace(&mut self.state, State::Failed);
        match (self.role, state, message) {
            (Role::Inviter, State::Start, PairMessage::Commit(c)) => {
                self.commitment = c;
                let offer = self.offer.clone();
                self.send_bytes(&offer);
                self.state = State::AwaitReveal { commitment: c };
                Ok(None)
            }
            (
                Role::Inviter,
                State::AwaitReveal { commitment: c },
                PairMessage::Reveal { peer, nonce },
            ) => {
                if !bool::from(commitment(&plain).ct_eq(&c)) {
                    return Err(ExchangeError::CommitmentMismatch);
                }
                self.check_peer(&peer)?;
                self.reveal = plain.to_vec();
                let code = pairing_code(&peer.public_key, &self.me.public_key, &nonce, &self.nonce);
                self.state = State::Comparing {
                    peer: peer.clone(),
                    code: code.clone(),
                    key: self.key_with(&peer),
                };
                Ok(Some(Event::Compare { code, peer }))
            }
            (Role::Joiner, State::AwaitOffer, PairMessage::Offer { peer, nonce }) => {
                self.check_peer(&peer)?;
                self.offer = plain.to_vec();
                let reveal = self.reveal.clone();
                self.send_bytes(&reveal);
                let code = pairing_code(&self.me.public_key, &peer.public_key, &self.nonce, &nonce);
                self.state = State::Comparing {
                    peer: peer.clone(),
                    code: code.clone(),
                    key: self.key_with(&peer),
                };
                Ok(Some(Event::Compare { code, peer }))
            }
            (Role::Inviter, State::Comparing { peer, code, key }, PairMessage::Confirm(mac)) => {
                if !bool::from(confirm_mac(&key).ct_eq(&mac)) {
                    return Err(ExchangeError::BadConfirmation);
                }
                self.yes_there = true;
                Ok(self.agree_if_both(peer, code, key))
            }
            (
                Role::Joiner,
                State::Comparing { peer, code, key },
                PairMessage::Welcome(others, mac),
            ) if self.yes_here => {
                if !bool::from(welcome_mac(&key, &others).ct_eq(&mac)) {
                    return Err(ExchangeError::BadConfirmation);
                }
                self.state = State::Agreed(key);
                Ok(Some(Event::Agreed { peer, others, code }))
            }
            (_, state, message) => Err(ExchangeError::OutOfOrder {
                got: name_of(&message),
                expected: expected_in(self.role, &state, self.yes_here),
            }),
        }
    }

    fn check_peer(&self, peer: &PeerInfo) -> Result<(), ExchangeError> {
        check_public_key(&PublicKey::from(peer.public_key)).map_err(|_| ExchangeError::BadKey)?;
        if peer.public_key == self.me.public_key {
            return Err(ExchangeError::SelfPairing);
        }
        Ok(())
    }

    /// Inviter: agreed once both users said yes.
    fn agree_if_both(
        &mut self,
        peer: PeerInfo,
        code: String,
        key: Zeroizing<[u8; 32]>,
    ) -> Option<Event> {
        if self.yes_here && self.yes_there {
            self.state = State::Agreed(key);
            Some(Event::Agreed {
                peer,
                others: Vec::new(),
                code,
            })
        } else {
            self.state = State::Comparing { peer, code, key };
            None
        }
    }

    /// This device's user answered: `yes` when both screens show the same
    /// code. A no sends [`Decline`](PairMessage::Decline) and ends the
    /// exchange ([`ExchangeError::DeclinedHere`]).
    pub fn confirm(&mut self, yes: bool) -> Result<Option<Event>, ExchangeError> {
        let State::Comparing { .. } = self.state else {
            return Err(if self.is_over() {
                ExchangeError::Over
            } else {
                ExchangeError::NothingToConfirm
            });
        };
        if !yes {
            self.send(&PairMessage::Decline);
            self.state = State::Failed;
            return Err(ExchangeError::DeclinedHere);
        }
        if self.yes_here {
            return Ok(None);
        }
        self.yes_here = true;
        match self.role {
            Role::Joiner => {
                let State::Comparing { key, .. } = &self.state else {
                    return Err(ExchangeError::NothingToConfirm);
                };
                let mac = confirm_mac(key);
                self.send(&PairMessage::Confirm(mac));
                Ok(None)
            }
            Role::Inviter => {
                let State::Comparing { peer, code, key } =
                    std::mem::replace(&mut self.state, State::Failed)
                else {
                    return Err(ExchangeError::NothingToConfirm);
                };
                Ok(self.agree_if_both(peer, code, key))
            }
        }
    }

    /// Inviter, after [`Event::Agreed`]: the welcome that tells the joiner
    /// of this device's other devices (and that this user said yes).
    pub fn welcome(&mut self, others: Vec<PeerInfo>) {
        if let (Role::Inviter, State::Agreed(key)) = (self.role, &self.state) {
            let mac = welcome_mac(key, &others);
            self.send(&PairMessage::Welcome(others, mac));
        }
    }

    /// Gives up (the invite expired, the user went away): the other device
    /// is told, if it can still hear, and the exchange is over.
    pub fn abandon(&mut self) {
        if !self.is_over() {
            if !matches!(self.state, State::Start) {
                self.send(&PairMessage::Decline);
            }
            self.state = State::Failed;
        }
    }
}

fn name_of(m: &PairMessage) -> &'static str {
    match m {
        PairMessage::Commit(_) => "a commitment",
        PairMessage::Offer { .. } => "an offer",
        PairMessage::Reveal { .. } => "a reveal",
        PairMessage::Confirm(_) => "a confirmation",
        PairMessage::Decline => "a decline",
        PairMessage::Welcome(..) => "a welcome",
    }
}

fn expected_in(role: Role, state: &State, yes_here: bool) -> &'static str {
    match (role, state) {
        (Role::Inviter, State::Start) => "a commitment",
        (Role::Joiner, State::Start) => "nothing (the inviter speaks second)",
        (_, State::AwaitOffer) => "an offer",
        (_, State::AwaitReveal { .. }) => "a reveal",
        (Role::Inviter, State::Comparing { .. }) => "a confirmation",
        (Role::Joiner, State::Comparing { .. }) if yes_here => "a welcome",
        (Role::Joiner, State::Comparing { .. }) => "nothing before this user's answer",
        (_, State::Agreed(_) | State::Failed) => "nothing (the pairing is over)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another device's key and name, as a welcome lists it.
    fn info(name: &str) -> PeerInfo {
        PeerInfo {
            public_key: *DeviceKeypair::generate().public().as_bytes(),
            name: name.into(),
        }
    }

    fn end(role: Role, invite: &Invite, name: &str) -> Exchange {
        Exchange::new(role, invite, &DeviceKeypair::generate(), name)
    }

    /// Moves every pending message from `from` to `to`; the events `to` gave.
    fn deliver(
        from: &mut Exchange,
        to: &mut Exchange,
    ) -> Vec<Result<Option<Event>, ExchangeError>> {
        from.take_messages()
            .iter()
            .map(|m| to.on_message(m))
            .collect()
    }

    fn code_of(e: &Result<Option<Event>, ExchangeError>) -> String {
        match e {
            Ok(Some(Event::Compare { code, .. })) => code.clone(),
            other => panic!("expected a code, got {other:?}"),
        }
    }

    /// Runs the exchange up to both codes: (inviter, joiner, codes).
    fn to_codes(invite: &Invite) -> (Exchange, Exchange, String, String) {
        let mut inviter = end(Role::Inviter, invite, "laptop");
        let mut joiner = end(Role::Joiner, invite, "phone");
        joiner.on_peer_present();
        assert_eq!(deliver(&mut joiner, &mut inviter), vec![Ok(None)]);
        let offered = deliver(&mut inviter, &mut joiner);
        let joiner_code = code_of(&offered[0]);
        let revealed = deliver(&mut joiner, &mut inviter);
        let inviter_code = code_of(&revealed[0]);
        (inviter, joiner, inviter_code, joiner_code)
    }

    /// What the channel carries, opened (as whoever holds the invite can).
    fn opened(ch: &PairingChannel, direction: u8, sealed: &[u8]) -> PairMessage {
        PairMessage::decode(&ch.open(direction, sealed).unwrap()).unwrap()
    }

    #[test]
    fn both_users_say_yes_then_both_agree_and_the_joiner_learns_the_other_devices() {
        let invite = Invite::new("ws://127.0.0.1:1", 0);
        let (mut inviter, mut joiner, a, b) = to_codes(&invite);
        assert_eq!(a, b, "honest devices show the same code");
        assert_eq!(a.len(), 6);
        // The joiner's yes alone stores nothing anywhere.
        assert_eq!(joiner.confirm(true), Ok(None));
        assert_eq!(deliver(&mut joiner, &mut inviter), vec![Ok(None)]);
        // The inviter's yes completes it there...
        let Ok(Some(Event::Agreed { peer, others, code })) = inviter.confirm(true) else {
            panic!("the inviter agrees once both said yes");
        };
        assert_eq!(
            (peer.name.as_str(), others.len(), code),
            ("phone", 0, a.clone())
        );
        inviter.welcome(vec![info("desktop")]);
        // ...and its welcome completes it on the joiner.
        let got = deliver(&mut inviter, &mut joiner);
        let Ok(Some(Event::Agreed { peer, others, .. })) = &got[0] else {
            panic!("the joiner agrees on the welcome: {got:?}");
        };
        assert_eq!(
            (peer.name.as_str(), others[0].name.as_str()),
            ("laptop", "desktop")
        );
        assert!(inviter.is_over() && joiner.is_over());
    }

    #[test]
    fn the_inviter_may_say_yes_first() {
        let invite = Invite::new("ws://127.0.0.1:1", 0);
        let (mut inviter, mut joiner, _, _) = to_codes(&invite);
        assert_eq!(
            inviter.confirm(true),
            Ok(None),
            "the joiner has not said yes"
        );
        assert!(
            inviter.take_messages().is_empty(),
            "no welcome before both said yes"
        );
        joiner.confirm(true).unwrap();
        let got = deliver(&mut joiner, &mut inviter);
        assert!(matches!(got[0], Ok(Some(Event::Agreed { .. }))), "{got:?}");
    }

    #[test]
    fn a_no_on_either_side_ends_it_on_both_without_agreement() {
        let invite = Invite::new("ws://127.0.0.1:1", 0);
        let (mut inviter, mut joiner, _, _) = to_codes(&invite);
        assert_eq!(joiner.confirm(false), Err(ExchangeError::DeclinedHere));
        assert_eq!(
            deliver(&mut joiner, &mut inviter),
            vec![Err(ExchangeError::DeclinedThere)]
        );
        assert_eq!(inviter.confirm(true), Err(ExchangeError::Over));

        let (mut inviter, mut joiner, _, _) = to_codes(&invite);
        joiner.confirm(true).unwrap();
        assert_eq!(inviter.confirm(false), Err(ExchangeError::DeclinedHere));
        assert_eq!(
            deliver(&mut inviter, &mut joiner),
            vec![Err(ExchangeError::DeclinedThere)]
        );
    }

    #[test]
    fn a_welcome_before_the_joiners_yes_is_refused() {
        let invite = Invite::new("ws://127.0.0.1:1", 0);
        let (_, mut joiner, _, _) = to_codes(&invite);
        // A forged early welcome (whoever holds the invite can seal one).
        let ch = PairingChannel::new(&invite.secret, invite.slot);
        let early = ch.seal(TO_JOINER, &PairMessage::Welcome(vec![], [0; 32]).encode());
        assert!(matches!(
            joiner.on_message(&early),
            Err(ExchangeError::OutOfOrder { .. })
        ));
        assert!(joiner.is_over());
    }

    #[test]
    fn a_reveal_that_differs_from_the_commitment_is_refused() {
        let invite = Invite::new("ws://127.0.0.1:1", 0);
        let ch = PairingChannel::new(&invite.secret, invite.slot);
        let mut inviter = end(Role::Inviter, &invite, "laptop");
        let phone = info("phone");
        let honest = PairMessage::Reveal {
            peer: phone.clone(),
            nonce: [1; 32],
        };
        let c = commitment(&honest.encode());
        inviter
            .on_message(&ch.seal(TO_INVITER, &PairMessage::Commit(c).encode()))
            .unwrap();
        // Having seen the offer, the attacker would like another nonce.
        let other = PairMessage::Reveal {
            peer: phone,
            nonce: [2; 32],
        };
        assert_eq!(
            inviter.on_message(&ch.seal(TO_INVITER, &other.encode())),
            Err(ExchangeError::CommitmentMismatch)
        );
    }

    /// Whoever holds the invite sits between the two devices and runs one
    /// exchange with each, under its own keys and the victims' names: the
    /// codes differ unless its single guess hits (one in a million).
    #[test]
    fn a_man_in_the_middle_with_keys_of_its_own_gets_different_codes() {
        let invite = Invite::new("ws://127.0.0.1:1", 0);
        let mut inviter = end(Role::Inviter, &invite, "laptop");
        let mut joiner = end(Role::Joiner, &invite, "phone");
        let mut as_joiner = end(Role::Joiner, &invite, "phone");
        let mut as_inviter = end(Role::Inviter, &invite, "laptop");
        as_joiner.on_peer_present();
        joiner.on_peer_present();
        deliver(&mut as_joiner, &mut inviter);
        deliver(&mut joiner, &mut as_inviter);
        let c1 = code_of(&deliver(&mut inviter, &mut as_joiner)[0]);
        code_of(&deliver(&mut as_inviter, &mut joiner)[0]);
        let inviter_code = code_of(&deliver(&mut as_joiner, &mut inviter)[0]);
        let joiner_code = code_of(&deliver(&mut joiner, &mut as_inviter)[0]);
        assert_eq!(c1, inviter_code);
        assert_ne!(
            inviter_code, joiner_code,
            "one in a million: the screens differ"
        );
        // The users see different codes and say no: nothing agreed.
        assert_eq!(inviter.confirm(false), Err(ExchangeError::DeclinedHere));
        assert_eq!(joiner.confirm(false), Err(ExchangeError::DeclinedHere));
    }

    /// Whoever holds the invite and carries the messages passes the first
    /// three on untouched (the codes match, the users say yes), then tries
    /// to forge what follows: a Confirm before the joiner's user answered,
    /// a Welcome that brings in a key of its own. Neither authenticates.
    #[test]
    fn an_attacker_on_the_path_cannot_forge_the_confirmation_or_the_welcome() {
        let invite = Invite::new("ws://127.0.0.1:1", 0);
        let ch = PairingChannel::new(&invite.secret, invite.slot);
        // A Confirm the joiner never sent: refused, and nothing is agreed.
        let (mut inviter, _joiner, _, _) = to_codes(&invite);
        inviter.confirm(true).unwrap();
        let forged = ch.seal(TO_INVITER, &PairMessage::Confirm([7; 32]).encode());
        assert_eq!(
            inviter.on_message(&forged),
            Err(ExchangeError::BadConfirmation)
        );
        assert!(inviter.take_messages().is_empty(), "no welcome went out");
        // The real welcome, its list swapped for the attacker's key.
        let (mut inviter, mut joiner, _, _) = to_codes(&invite);
        joiner.confirm(true).unwrap();
        deliver(&mut joiner, &mut inviter);
        inviter.confirm(true).unwrap();
        inviter.welcome(vec![info("desktop")]);
        let real = inviter.take_messages().remove(0);
        let PairMessage::Welcome(_, mac) = opened(&ch, TO_JOINER, &real) else {
            panic!("expected the welcome");
        };
        let swapped = PairMessage::Welcome(vec![info("desktop")], mac);
        assert_eq!(
            joiner.on_message(&ch.seal(TO_JOINER, &swapped.encode())),
            Err(ExchangeError::BadConfirmation)
        );
        assert!(joiner.is_over(), "the joiner stores nothing");
    }

    /// The inviter's name is not in the commitment; changed on the way, it
    /// changes the joiner's transcript, and the joiner's Confirm fails.
    #[test]
    fn a_name_changed_on_the_way_fails_the_confirmation() {
        let invite = Invite::new("ws://127.0.0.1:1", 0);
        let ch = PairingChannel::new(&invite.secret, invite.slot);
        let mut inviter = end(Role::Inviter, &invite, "laptop");
        let mut joiner = end(Role::Joiner, &invite, "phone");
        joiner.on_peer_present();
        deliver(&mut joiner, &mut inviter);
        let offer = inviter.take_messages().remove(0);
        let PairMessage::Offer { mut peer, nonce } = opened(&ch, TO_JOINER, &offer) else {
            panic!("expected the offer");
        };
        peer.name = "your bank".into();
        let renamed = ch.seal(TO_JOINER, &PairMessage::Offer { peer, nonce }.encode());
        let shown = joiner.on_message(&renamed);
        let Ok(Some(Event::Compare { peer, .. })) = &shown else {
            panic!("{shown:?}");
        };
        assert_eq!(peer.name, "your bank");
        let revealed = deliver(&mut joiner, &mut inviter);
        assert_eq!(
            code_of(&revealed[0]),
            code_of(&shown),
            "the keys and nonces are intact"
        );
        joiner.confirm(true).unwrap();
        assert_eq!(
            deliver(&mut joiner, &mut inviter),
            vec![Err(ExchangeError::BadConfirmation)]
        );
    }

    #[test]
    fn out_of_order_forged_and_self_pairing_messages_end_the_exchange() {
        let invite = Invite::new("ws://127.0.0.1:1", 0);
        let ch = PairingChannel::new(&invite.secret, invite.slot);
        let kp = DeviceKeypair::generate();
        let mut inviter = Exchange::new(Role::Inviter, &invite, &kp, "laptop");
        assert!(matches!(
            inviter.on_message(&ch.seal(TO_INVITER, &PairMessage::Confirm([0; 32]).encode())),
            Err(ExchangeError::OutOfOrder { .. })
        ));
        let mut inviter = Exchange::new(Role::Inviter, &invite, &kp, "laptop");
        assert!(matches!(
            inviter.on_message(&ch.seal(TO_JOINER, &PairMessage::Commit([0; 32]).encode())),
            Err(ExchangeError::Channel(PairingError::Auth))
        ));
        let other = Invite::new("ws://127.0.0.1:1", 0);
        let mut inviter = Exchange::new(Role::Inviter, &other, &kp, "laptop");
        assert!(matches!(
            inviter.on_message(&ch.seal(TO_INVITER, &PairMessage::Commit([0; 32]).encode())),
            Err(ExchangeError::Channel(PairingError::Auth))
        ));
        // A pairing v1 hello (SyncPayload::Introduce) is refused by version.
        let mut inviter = Exchange::new(Role::Inviter, &invite, &kp, "laptop");
        assert!(matches!(
            inviter.on_message(&ch.seal(TO_INVITER, &[1, 3, 0, 0])),
            Err(ExchangeError::Wire(WireError::BadVersion(1)))
        ));
        // A joiner whose offer names its own key.
        let mut joiner = Exchange::new(Role::Joiner, &invite, &kp, "laptop");
        joiner.on_peer_present();
        let me = PeerInfo {
            public_key: *kp.public().as_bytes(),
            name: "laptop".into(),
        };
        let offer = PairMessage::Offer {
            peer: me,
            nonce: [0; 32],
        };
        assert_eq!(
            joiner.on_message(&ch.seal(TO_JOINER, &offer.encode())),
            Err(ExchangeError::SelfPairing)
        );
        // A low-order key.
        let mut joiner = end(Role::Joiner, &invite, "phone");
        joiner.on_peer_present();
        let offer = PairMessage::Offer {
            peer: PeerInfo {
                public_key: [0; 32],
                name: "x".into(),
            },
            nonce: [0; 32],
        };
        assert_eq!(
            joiner.on_message(&ch.seal(TO_JOINER, &offer.encode())),
            Err(ExchangeError::BadKey)
        );
        assert_eq!(joiner.confirm(true), Err(ExchangeError::Over));
    }

    #[test]
    fn the_code_binds_both_keys_and_both_nonces() {
        let base = pairing_code(&[1; 32], &[2; 32], &[3; 32], &[4; 32]);
        assert_ne!(base, pairing_code(&[2; 32], &[1; 32], &[3; 32], &[4; 32]));
        assert_ne!(base, pairing_code(&[1; 32], &[2; 32], &[4; 32], &[3; 32]));
        assert_ne!(base, pairing_code(&[1; 32], &[2; 32], &[3; 32], &[5; 32]));
        assert_eq!(base.len(), 6);
    }
}
