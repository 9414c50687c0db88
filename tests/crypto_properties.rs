//! Double Ratchet properties: random interleavings with loss, reordering and
//! duplication; forward secrecy; post-compromise recovery; bad input.
#![allow(clippy::unwrap_used)]

use masq_core::crypto::handshake::{initiate, respond};
use masq_core::crypto::ratchet::MAX_SKIPPED_CHAINS;
use masq_core::crypto::{CryptoError, DeviceKeypair, Session};
use proptest::prelude::*;

fn pair() -> (Session, Session) {
    let a = DeviceKeypair::generate();
    let b = DeviceKeypair::generate();
    let (pending, init) = initiate(&a, &b.public(), 1);
    let (sb, resp) = respond(&b, &a.public(), &init).unwrap();
    (pending.finish(&resp).unwrap(), sb)
}

#[derive(Debug, Clone)]
enum Step {
    /// a (true) or b (false) seals a message.
    Send(bool),
    /// Deliver the in-flight message at this index (mod len) to its recipient.
    Deliver(usize),
    /// Deliver it again (duplicate).
    Duplicate(usize),
    /// Lose it.
    Drop(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => any::<bool>().prop_map(Step::Send),
        4 => any::<usize>().prop_map(Step::Deliver),
        1 => any::<usize>().prop_map(Step::Duplicate),
        1 => any::<usize>().prop_map(Step::Drop),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Every delivered message decrypts exactly once, in any order, unless
    /// its sending chain is no longer among the receiver's last
    /// `MAX_SKIPPED_CHAINS` receiving chains (its skipped key expired): then
    /// it is refused as a replay. A model of the ratchet keys says which.
    #[test]
    fn every_delivered_message_decrypts_exactly_once(steps in prop::collection::vec(step(), 1..120)) {
        let (mut a, mut b) = pair();
        // The model: each side's current sending key (a number) and the
        // peer keys it stepped to (its receiving chains, oldest first). a
        // starts knowing b's initial key 0; b learns a's key 0 from `first`.
        let mut model = [Side { my_key: 0, peer_keys: vec![0] }, Side { my_key: 0, peer_keys: vec![] }];
        let first = a.seal(b"first").unwrap();
        prop_assert_eq!(b.open(&first).unwrap(), b"first");
        model[1].received(0);
        let mut flight: Vec<InFlight> = Vec::new();
        let mut counter = 0u32;
        for s in steps {
            match s {
                Step::Send(from_a) => {
                    counter += 1;
                    let pt = format!("m{counter}").into_bytes();
                    let env = if from_a { a.seal(&pt) } else { b.seal(&pt) }.unwrap();
                    let key = model[usize::from(!from_a)].my_key;
                    flight.push(InFlight { from_a, pt, env, key, delivered: false });
                }
                Step::Deliver(i) | Step::Duplicate(i) if !flight.is_empty() => {
                    let i = i % flight.len();
                    let InFlight { from_a, pt, env, key, delivered } = flight[i].clone();
                    let rx = if from_a { &mut b } else { &mut a };
                    let res = rx.open(&env);
                    let side = &mut model[usize::from(from_a)];
                    if delivered || side.expired(key) {
                        prop_assert_eq!(res, Err(CryptoError::Replay));
                    } else {
                        prop_assert_eq!(res.unwrap(), pt);
                        side.received(key);
                    }
                    flight[i].delivered = true;
                }
                Step::Drop(i) if !flight.is_empty() => {
                    let i = i % flight.len();
                    if !flight[i].delivered {
                        flight.remove(i);
                    }
                }
                _ => {}
            }
        }
        // Everything still in flight and undelivered decrypts, in any order
        // (newest first here), unless its chain expired meanwhile.
        for InFlight { from_a, pt, env, key, delivered } in flight.into_iter().rev() {
            let rx = if from_a { &mut b } else { &mut a };
            let side = &mut model[usize::from(from_a)];
            if !delivered {
                let res = rx.open(&env);
                if side.expired(key) {
                    prop_assert_eq!(res, Err(CryptoError::Replay));
                } else {
                    prop_assert_eq!(res.unwrap(), pt);
                    side.received(key);
                }
            }
        }
    }
}

/// A sealed message not yet delivered, or delivered and kept to try again.
#[derive(Clone)]
struct InFlight {
    /// Sealed by a (true) or b.
    from_a: bool,
    /// What was sealed.
    pt: Vec<u8>,
    /// The envelope.
    env: Vec<u8>,
    /// The sender's ratchet key in the model when it sealed.
    key: u32,
    /// Opened once already.
    delivered: bool,
}

/// One side of the ratchet model of `every_delivered_message_decrypts_exactly_once`.
struct Side {
    /// The ratchet key it sends under now.
    my_key: u32,
    /// The peer's ratchet keys it stepped to, oldest first (the last is current).
    peer_keys: Vec<u32>,
}

impl Side {
    /// A message under the peer's `key` opened: a new key is a DH ratchet
    /// step, after which this side sends under a new key of its own.
    fn received(&mut self, key: u32) {
        if !self.peer_keys.contains(&key) {
            self.peer_keys.push(key);
            self.my_key += 1;
        }
    }

    /// Whether messages under the peer's `key` can no longer be opened: an
    /// older chain than the last `MAX_SKIPPED_CHAINS` (current included).
    fn expired(&self, key: u32) -> bool {
        match self.peer_keys.iter().position(|k| *k == key) {
            Some(pos) => pos + MAX_SKIPPED_CHAINS < self.peer_keys.len(),
            None => false,
        }
    }
}

#[test]
fn forward_secrecy_state_after_n_cannot_read_earlier_messages() {
    let (mut a, mut b) = pair();
    let early: Vec<Vec<u8>> = (0..5)
        .map(|i| a.seal(format!("early {i}").as_bytes()).unwrap())
        .collect();
    for e in &early {
        b.open(e).unwrap();
    }
    // A round trip so the DH ratchet turns.
    let r = b.seal(b"reply").unwrap();
    a.open(&r).unwrap();
    let later = a.seal(b"later").unwrap();
    b.open(&later).unwrap();
    // The attacker copies b's whole state now.
    let stolen = Session::from_bytes(&b.to_bytes()).unwrap();
    for e in &early {
        let mut s = stolen.clone();
        assert!(
            s.open(e).is_err(),
            "a stolen state must not decrypt earlier messages"
        );
    }
}

#[test]
fn post_compromise_one_round_trip_locks_out_an_old_copy() {
    let (mut a, mut b) = pair();
    let m = a.seal(b"hi").unwrap();
    b.open(&m).unwrap();
    // The attacker copies a's full state.
    let mut stolen = Session::from_bytes(&a.to_bytes()).unwrap();
    // One DH ratchet round trip with fresh keys.
    let r = b.seal(b"round").unwrap();
    a.open(&r).unwrap();
    let m2 = a.seal(b"after").unwrap();
    b.open(&m2).unwrap();
    let r2 = b.seal(b"new secret").unwrap();
    assert_eq!(a.open(&r2).unwrap(), b"new secret");
    assert!(
        stolen.open(&r2).is_err(),
        "an old copy must not decrypt after a DH round trip"
    );
}

#[test]
fn bad_envelopes_have_distinct_errors_and_change_nothing() {
    let (mut a, mut b) = pair();
    let good1 = a.seal(b"one").unwrap();
    let good2 = a.seal(b"two").unwrap();
    let before = b.to_bytes();
    // Truncated.
    assert_eq!(b.open(&good1[..50]), Err(CryptoError::Truncated));
    // Tampered ciphertext and tampered header.
    let mut t = good1.clone();
    let last = t.len() - 1;
    t[last] ^= 1;
    assert_eq!(b.open(&t), Err(CryptoError::AuthFailed));
    let mut h = good1.clone();
    h[100] ^= 1;
    assert!(matches!(
        b.open(&h),
        Err(CryptoError::AuthFailed) | Err(CryptoError::TooManySkipped)
    ));
    // Wrong version.
    let mut v = good1.clone();
    v[0] = 9;
    assert_eq!(b.open(&v), Err(CryptoError::BadVersion(9)));
    // Wrong recipient and unknown sender.
    let mut wr = good1.clone();
    wr[40] ^= 1;
    assert_eq!(b.open(&wr), Err(CryptoError::WrongRecipient));
    let mut us = good1.clone();
    us[5] ^= 1;
    assert_eq!(b.open(&us), Err(CryptoError::UnknownSender));
    // Too far ahead.
    let mut far = good1.clone();
    far[101..105].copy_from_slice(&5000u32.to_be_bytes());
    assert_eq!(b.open(&far), Err(CryptoError::TooManySkipped));
    assert_eq!(
        *b.to_bytes(),
        *before,
        "no bad input may change the session"
    );
    // Good messages still decrypt, then a replay is detected.
    assert_eq!(b.open(&good2).unwrap(), b"two");
    assert_eq!(b.open(&good1).unwrap(), b"one");
    assert_eq!(b.open(&good1), Err(CryptoError::Replay));
    // Garbage never panics.
    for len in 0..300usize {
        let g: Vec<u8> = (0..len).map(|i| (i * 73 % 256) as u8).collect();
        let _ = b.open(&g);
    }
}

#[test]
fn session_state_round_trips_and_debug_hides_secrets() {
    let (mut a, mut b) = pair();
    let m = a.seal(b"x").unwrap();
    b.open(&m).unwrap();
    let copy = Session::from_bytes(&a.to_bytes()).unwrap();
    assert_eq!(*copy.to_bytes(), *a.to_bytes());
    let dbg = format!("{a:?}");
    assert!(dbg.contains("redacted"));
    assert!(Session::from_bytes(&[1, 2, 3]).is_err());
    let mut bytes = a.to_bytes().to_vec();
    bytes.push(0);
    assert!(Session::from_bytes(&bytes).is_err());
}
