//! Pairing rendezvous slots on a single relay node ([`Slots`]): two
//! connections that proved the same slot key meet, then relay each other's
//! pairing frames. (In a cluster the slots are the cluster's.)
//!
//! Knows nothing of the slot-key proof (checked at join by the connection's
//! challenge), sockets or the connection table.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::metrics::Metrics;
use super::routing::Peer;
use masq_core::wire::relay_frame::Frame;

/// Members of a slot: a pairing is between two devices, so the slot is
/// sealed when the second one joins.
const SLOT_MEMBERS: usize = 2;

/// Why a join is refused (the slot's size or single use).
pub(super) const SLOT_TAKEN: &str = "rendezvous slot is full or already used";

/// A pairing rendezvous slot.
struct Slot {
    /// When the first member opened it (it lives `rendezvous_ttl`).
    created: Instant,
    /// The connections in it.
    members: Vec<Peer>,
    /// Two members have met; no one else may join.
    sealed: bool,
}

/// This node's rendezvous slots, by slot id.
#[derive(Default)]
pub(super) struct Slots {
    /// slot id → slot.
    by_id: Mutex<HashMap<[u8; 32], Slot>>,
}

impl Slots {
    /// Puts `me` in slot `s` (opening it if needed; slots older than `ttl`
    /// are dropped first). Refused if the slot is full or sealed, or if `me`
    /// is already in a slot (`already_joined`). On success, the member it
    /// met, if `me` is the second.
    pub(super) fn join(
        &self,
        s: [u8; 32],
        me: &Peer,
        already_joined: bool,
        ttl: Duration,
    ) -> Result<Option<Peer>, &'static str> {
        let Ok(mut slots) = self.by_id.lock() else {
            return Ok(None);
        };
        slots.retain(|_, sl| sl.created.elapsed() < ttl);
        let entry = slots.entry(s).or_insert_with(|| Slot {
            created: Instant::now(),
            members: Vec::new(),
            sealed: false,
        });
        if entry.sealed || entry.members.len() >= SLOT_MEMBERS || already_joined {
            return Err(SLOT_TAKEN);
        }
        entry.members.push(me.clone());
        if entry.members.len() == SLOT_MEMBERS {
            entry.sealed = true;
            return Ok(entry.members.first().cloned());
        }
        Ok(None)
    }

    /// The member of slot `s` other than connection `conn_id`.
    pub(super) fn other_member(&self, s: [u8; 32], conn_id: u64) -> Option<Peer> {
        self.by_id.lock().ok().and_then(|slots| {
            slots
                .get(&s)
                .and_then(|sl| sl.members.iter().find(|p| p.conn_id != conn_id).cloned())
        })
    }

    /// Takes connection `conn_id` out of slot `s` and tells the members
    /// left; a sealed slot left empty is removed.
    pub(super) fn leave(&self, s: [u8; 32], conn_id: u64, metrics: &Metrics) {
        let others: Vec<Peer> = match self.by_id.lock() {
            Ok(mut slots) => {
                let others = slots.get_mut(&s).map(|sl| {
                    sl.members.retain(|p| p.conn_id != conn_id);
                    sl.members.clone()
                });
                if slots
                    .get(&s)
                    .map(|sl| sl.members.is_empty() && sl.sealed)
                    .unwrap_or(false)
                {
                    slots.remove(&s);
                }
                others.unwrap_or_default()
            }
            Err(_) => return,
        };
        for o in others {
            o.push(Frame::RendezvousPeer { joined: false }.encode(), metrics);
        }
    }
}
