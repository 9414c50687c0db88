//! When a device starts a handshake, whose handshake wins when two cross,
//! and when an unanswered one is sent again. The handshake itself (the
//! cryptography) is [`crate::crypto::handshake`]; these are the rules around
//! it, the same on every platform.
//!
//! - A device starts a handshake with an online peer it has no session
//!   with, unless one of its own is in flight.
//! - Two inits cross (both started): the init of the device that
//!   [`initiator_wins`](crate::crypto::handshake::initiator_wins) is the one
//!   answered; the other device drops its own and answers.
//! - An init unanswered for [`HANDSHAKE_RESEND_AFTER`] is sent again (the
//!   peer may not have known us yet and dropped it), and no sooner: a resend
//!   that crossed a slow response would replace the session it created.
//! - A responder whose initiator never spoke first (so it cannot send) is
//!   silent; the next resync round drops that session and starts afresh as
//!   initiator.
//! - A session that is stuck (since the last resync round, envelopes from
//!   the peer kept failing to open and none opened) is dropped on the next
//!   resync round and a fresh handshake started. Two devices end up on
//!   different sessions when one's disk goes back to an older copy of
//!   itself (a restored backup): its ratchets are older than the peer's,
//!   and without this rule neither could ever open the other's envelopes
//!   again. Found by the simulator's disk rollbacks.

use std::time::Duration;

use crate::crypto::handshake::initiator_wins;
use crate::crypto::DeviceId;

/// How long an init may go unanswered before it is sent again.
pub const HANDSHAKE_RESEND_AFTER: Duration = Duration::from_secs(2);

/// Envelopes from the peer that must fail to open, with none opening,
/// within one resync round before the session counts as stuck. More than
/// one, so a lone stray (a late duplicate of an old envelope) never costs a
/// handshake; a forger who can send this many while dropping every real
/// envelope could stop sync anyway by dropping them.
pub const STUCK_AFTER_REFUSALS: u32 = 3;

/// What to do with a peer's init that arrives while ours is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossingInit {
    /// Theirs wins: drop ours and answer theirs.
    AnswerTheirs,
    /// Ours wins: ignore theirs (they will answer ours). `resend`: ours has
    /// gone unanswered long enough that it was probably dropped, so send it
    /// again now.
    KeepOurs {
        /// Send our init again.
        resend: bool,
    },
}

/// The rule for crossing inits. `ours_sent_at` and `now` are times since
/// any fixed instant of the caller's.
pub fn on_crossing_init(
    me: &DeviceId,
    from: &DeviceId,
    ours_sent_at: Duration,
    now: Duration,
) -> CrossingInit {
    if initiator_wins(me, from) {
        CrossingInit::KeepOurs {
            resend: init_is_stale(ours_sent_at, now),
        }
    } else {
        CrossingInit::AnswerTheirs
    }
}

/// Whether an init sent at `sent_at` has gone unanswered long enough to be
/// sent again.
pub fn init_is_stale(sent_at: Duration, now: Duration) -> bool {
    now.saturating_sub(sent_at) > HANDSHAKE_RESEND_AFTER
}

/// Whether a peer's session is a silent responder's: online, not syncing,
/// no handshake of ours in flight, and a session that cannot send (its
/// initiator's first message never came).
pub fn responder_is_silent(
    online: bool,
    ready: bool,
    ours_in_flight: bool,
    can_send: bool,
) -> bool {
    online && !ready && !ours_in_flight && !can_send
}

/// Whether a session is stuck: online, no handshake of ours in flight, at
/// least [`STUCK_AFTER_REFUSALS`] of the peer's envelopes refused since the
/// last one that opened, and none opened since the last resync round.
pub fn session_is_stuck(
    online: bool,
    ours_in_flight: bool,
    refused_since_opened: u32,
    opened_this_round: bool,
) -> bool {
    online && !ours_in_flight && !opened_this_round && refused_since_opened >= STUCK_AFTER_REFUSALS
}

#[cfg(test)]
mod tests {
    //! Two devices and the real handshake, with the network replaced by
    //! hand-carried packets: simultaneous starts, lost inits, timers.
    use super::*;
    use crate::crypto::handshake::{initiate, respond, PendingHandshake};
    use crate::crypto::{DeviceKeypair, Session};

    struct Side {
        kp: DeviceKeypair,
        pending: Option<(PendingHandshake, Vec<u8>, Duration)>,
        session: Option<Session>,
    }

    impl Side {
        fn new() -> Self {
            Side {
                kp: DeviceKeypair::generate(),
                pending: None,
                session: None,
            }
        }
        fn id(&self) -> DeviceId {
            self.kp.device_id()
        }
        /// Start a handshake at `now`; the init to carry.
        fn start(&mut self, peer: &Side, now: Duration) -> Vec<u8> {
            let (p, init) = initiate(&self.kp, &peer.kp.public(), now.as_millis() as u64);
            self.pending = Some((p, init.clone(), now));
            init
        }
        /// An init arrives: the response to carry, or the init to resend, or nothing.
        fn on_init(&mut self, peer: &Side, init: &[u8], now: Duration) -> Packet {
            let me = self.id();
            if let Some((_, ours, sent_at)) = &mut self.pending {
                match on_crossing_init(&me, &peer.id(), *sent_at, now) {
                    CrossingInit::KeepOurs { resend: true } => {
                        *sent_at = now;
                        return Packet::Init(ours.clone());
                    }
                    CrossingInit::KeepOurs { resend: false } => return Packet::None,
                    CrossingInit::AnswerTheirs => {}
                }
            }
            let (session, resp) = respond(&self.kp, &peer.kp.public(), init).unwrap();
            self.pending = None;
            self.session = Some(session);
            Packet::Response(resp)
        }
        fn on_response(&mut self, resp: &[u8]) {
            let (p, _, _) = self.pending.take().expect("a response to our init");
            self.session = Some(p.finish(resp).unwrap());
        }
        fn tick(&mut self, now: Duration) -> Option<Vec<u8>> {
            match &mut self.pending {
                Some((_, init, sent_at)) if init_is_stale(*sent_at, now) => {
                    *sent_at = now;
                    Some(init.clone())
                }
                _ => None,
            }
        }
    }

    #[derive(Debug)]
    enum Packet {
        None,
        Init(Vec<u8>),
        Response(Vec<u8>),
    }

    fn assert_talk(a: &mut Side, b: &mut Side) {
        let (sa, sb) = (a.session.as_mut().unwrap(), b.session.as_mut().unwrap());
        // The initiator speaks first; then both ways.
        let (first, second) = if sa.can_send() { (sa, sb) } else { (sb, sa) };
        let env = first.seal(b"hello").unwrap();
        assert_eq!(second.open(&env).unwrap(), b"hello");
        let env = second.seal(b"back").unwrap();
        assert_eq!(first.open(&env).unwrap(), b"back");
    }

    #[test]
    fn simultaneous_starts_end_in_one_session() {
        let t0 = Duration::from_secs(100);
        let (mut a, mut b) = (Side::new(), Side::new());
        let ia = a.start(&b, t0);
        let ib = b.start(&a, t0);
        // Both inits cross; exactly one side answers.
        let ra = a.on_init(&b, &ib, t0);
        let rb = b.on_init(&a, &ia, t0);
        let answers = [&ra, &rb]
            .iter()
            .filter(|p| matches!(p, Packet::Response(_)))
            .count();
        assert_eq!(answers, 1, "{ra:?} {rb:?}");
        match (ra, rb) {
            (Packet::Response(r), Packet::None) => b.on_response(&r),
            (Packet::None, Packet::Response(r)) => a.on_response(&r),
            other => panic!("unexpected {other:?}"),
        }
        assert!(a.pending.is_none() && b.pending.is_none());
        assert_talk(&mut a, &mut b);
    }

    #[test]
    fn a_lost_init_is_sent_again_after_the_resend_delay_and_not_before() {
        let t0 = Duration::from_secs(5);
        let (mut a, mut b) = (Side::new(), Side::new());
        let _lost = a.start(&b, t0);
        assert_eq!(
            a.tick(t0 + HANDSHAKE_RESEND_AFTER),
            None,
            "not before the delay"
        );
        let again = a
            .tick(t0 + HANDSHAKE_RESEND_AFTER + Duration::from_millis(1))
            .unwrap();
        // The next tick right after does not resend again.
        assert_eq!(
            a.tick(t0 + HANDSHAKE_RESEND_AFTER + Duration::from_millis(2)),
            None
        );
        let Packet::Response(r) = b.on_init(&a, &again, t0 + Duration::from_secs(3)) else {
            panic!("b answers");
        };
        a.on_response(&r);
        assert_talk(&mut a, &mut b);
    }

    #[test]
    fn a_winner_whose_init_was_dropped_resends_it_when_the_loser_starts() {
        // The winner's init was dropped (the loser did not know it yet).
        // Later the loser starts its own: the winner keeps its own and, as
        // it is stale, sends it again; the loser answers it.
        let (mut a, mut b) = (Side::new(), Side::new());
        if !initiator_wins(&a.id(), &b.id()) {
            std::mem::swap(&mut a, &mut b);
        }
        let t0 = Duration::from_secs(1);
        let _dropped = a.start(&b, t0);
        let t1 = t0 + Duration::from_secs(10);
        let ib = b.start(&a, t1);
        let Packet::Init(again) = a.on_init(&b, &ib, t1) else {
            panic!("the winner resends its stale init");
        };
        let Packet::Response(r) = b.on_init(&a, &again, t1) else {
            panic!("the loser answers the winner's init");
        };
        a.on_response(&r);
        assert!(b.pending.is_none());
        assert_talk(&mut a, &mut b);
    }

    #[test]
    fn a_fresh_winning_init_is_not_resent_on_a_crossing() {
        let me = DeviceKeypair::generate().device_id();
        let other = DeviceKeypair::generate().device_id();
        let (winner, loser) = if initiator_wins(&me, &other) {
            (me, other)
        } else {
            (other, me)
        };
        let t = Duration::from_secs(50);
        assert_eq!(
            on_crossing_init(&winner, &loser, t, t + Duration::from_secs(1)),
            CrossingInit::KeepOurs { resend: false }
        );
        assert_eq!(
            on_crossing_init(&loser, &winner, t, t + Duration::from_secs(1)),
            CrossingInit::AnswerTheirs
        );
    }

    #[test]
    fn only_a_responder_that_cannot_send_is_silent() {
        assert!(responder_is_silent(true, false, false, false));
        assert!(!responder_is_silent(false, false, false, false), "offline");
        assert!(!responder_is_silent(true, true, false, false), "syncing");
        assert!(
            !responder_is_silent(true, false, true, false),
            "ours in flight"
        );
        assert!(!responder_is_silent(true, false, false, true), "can send");
    }
}
