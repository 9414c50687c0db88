//! What the other nodes of a cluster ask of this node's connections
//! ([`Inbound`] events from `cluster`), applied through the [`Hub`]:
//! deliveries (with the recipient's allow list and queue shares, and
//! refusals sent back), frames for one device or connection, presence, and
//! devices claimed by another node.
//!
//! Knows nothing of Redis or the channel layout (the cluster's), nor of
//! sockets.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::hub::Hub;
use super::routing::count_refusal;
use crate::cluster::Inbound;
use masq_core::crypto::DeviceId;
use masq_core::wire::relay_frame::{codes, Frame};

/// Applies what the cluster says to this node's connections, until the
/// relay shuts down or the cluster's queue ends.
pub(super) async fn apply_cluster_events(hub: Arc<Hub>, mut events: mpsc::Receiver<Inbound>) {
    loop {
        let ev = tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            ev = events.recv() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        apply(&hub, ev);
    }
}

/// Applies one event.
fn apply(hub: &Hub, ev: Inbound) {
    let m = &hub.metrics;
    match ev {
        Inbound::ToDevice { device, frame } => {
            if let Some(p) = hub.conns.get(&device) {
                p.push(frame, m);
            }
        }
        Inbound::Deliver {
            device,
            from,
            msg_id,
            frame,
        } => deliver(hub, device, from, msg_id, frame),
        Inbound::ToConn {
            device,
            conn_id,
            frame,
        } => {
            if let Some(p) = hub.conns.current(&device, conn_id) {
                p.push(frame, m);
            }
        }
        Inbound::PresenceTo {
            device,
            conn_id,
            id,
            online,
        } => {
            if let Some(p) = hub.conns.current(&device, conn_id) {
                p.presence.set(id, online);
            }
        }
        Inbound::Claimed(device) => {
            if let Some(p) = hub.conns.get(&device) {
                p.kill.kill(
                    codes::REPLACED,
                    "replaced by a newer connection of this device (on another relay node)",
                );
            }
        }
        Inbound::Presence { device, online } => hub.notify_presence(device, online),
    }
}

/// Another node's message `msg_id` from `from` for `device` here. The
/// recipient's node applies its allow list and queue shares, and answers a
/// refusal to the sender's node.
fn deliver(hub: &Hub, device: DeviceId, from: DeviceId, msg_id: u64, frame: Vec<u8>) {
    let m = &hub.metrics;
    let len = frame.len() as u64;
    // Not here (any more): the node that holds it now got the same publish;
    // the sender heard "offline" if none did.
    let Some(p) = hub.conns.get(&device) else {
        return;
    };
    match p.deliver(from, frame, &hub.config) {
        Ok(()) => {
            m.cluster_delivered.fetch_add(1, Ordering::Relaxed);
            m.messages_forwarded.fetch_add(1, Ordering::Relaxed);
            m.bytes_forwarded.fetch_add(len, Ordering::Relaxed);
        }
        Err(reason) => {
            count_refusal(m, reason);
            if let Some(c) = &hub.cluster {
                c.refuse(
                    from,
                    Frame::Undeliverable {
                        msg_id,
                        to: device,
                        reason,
                    }
                    .encode(),
                );
            }
        }
    }
}
