//! One device's connection, from the WebSocket upgrade to its end
//! ([`serve`]): authenticate, register in the connection table (replacing
//! an older connection of the device), start the [`Writer`], then read and
//! act on the device's frames ([`Connection`]) until it ends, and
//! unregister.
//!
//! Knows nothing of the accept loop, HTTP or how the cluster links nodes;
//! payloads are forwarded as opaque bytes and never logged.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::auth::{authenticate, Challenge};
use super::hub::Hub;
use super::kill::NORMAL_END;
use super::rendezvous::SLOT_TAKEN;
use super::routing::{count_refusal, remote_send, Out, Peer};
use super::writer::Writer;
use super::ws::{Ws, WsStream};
use crate::cluster::RemoteSend;
use crate::config::{CLUSTER_SUBSCRIBE_WAIT, MAX_ALLOW_IDS, MAX_WATCH_IDS};
use crate::rate_limit::TokenBucket;
use masq_core::crypto::DeviceId;
use masq_core::wire::relay_frame::{codes, Frame, UndeliverableReason};

/// Challenge, authenticate, then serve the connection until it ends.
pub(super) async fn serve<S>(ws: Ws<S>, hub: Arc<Hub>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let authenticated = authenticate(
        &mut sink,
        &mut stream,
        hub.config.handshake_timeout,
        &hub.metrics,
    )
    .await;
    let Some((device, challenge)) = authenticated else {
        return;
    };
    let (mut conn, queue) = Connection::register(hub, device, challenge);
    conn.wait_until_reachable_in_cluster().await;
    let ping_interval = conn.hub.config.ping_interval;
    let writer = Writer::new(sink, queue, conn.peer.clone(), ping_interval);
    let writer = tokio::spawn(writer.run());
    conn.read(stream).await;
    conn.peer.kill.kill(NORMAL_END, "bye");
    let _ = writer.await;
    conn.unregister();
}

/// The reading side of one authenticated connection: what it needs to act
/// on the device's frames.
struct Connection {
    /// The relay's shared state.
    hub: Arc<Hub>,
    /// The authenticated device.
    device: DeviceId,
    /// This connection as others reach it (its queue, allow list, presence
    /// states and kill).
    peer: Peer,
    /// The handshake's challenge, which rendezvous joins prove slot keys over.
    challenge: Challenge,
    /// The device's frame rate (`Send`s over it are refused).
    bucket: TokenBucket,
    /// The rendezvous slot this connection joined, if any (at most one).
    slot: Option<[u8; 32]>,
}

impl Connection {
    /// Registers the device's new connection, replacing an older one, and
    /// tells its watchers it is online; returns it and its queue's
    /// receiving end for the writer.
    ///
    /// `AuthOk` is queued first, before the connection is in the table (so
    /// no frame for the device can go ahead of it), and written by the
    /// writer, which starts after registration: a device that has seen
    /// `AuthOk` can be reached, so a message sent to it right after is never
    /// reported undeliverable.
    fn register(
        hub: Arc<Hub>,
        device: DeviceId,
        challenge: Challenge,
    ) -> (Self, mpsc::Receiver<Out>) {
        let conn_id = hub.next_conn.fetch_add(1, Ordering::Relaxed);
        let (peer, queue) = Peer::new(conn_id, hub.config.outbound_queue_frames);
        peer.push(Frame::AuthOk(device).encode(), &hub.metrics);
        if let Some(old) = hub.conns.insert(device, peer.clone()) {
            old.kill.kill(
                codes::REPLACED,
                "replaced by a newer connection of this device",
            );
        } else {
            hub.metrics.connections.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(device = %device.fingerprint(), "device connected");
        hub.notify_presence(device, true);
        let bucket = TokenBucket::new(hub.config.rate_per_sec, hub.config.rate_burst);
        let conn = Self {
            hub,
            device,
            peer,
            challenge,
            bucket,
            slot: None,
        };
        (conn, queue)
    }

    /// In a cluster, holds the writer (and so `AuthOk`) until other nodes
    /// can reach the device too. If Redis does not confirm within
    /// [`CLUSTER_SUBSCRIBE_WAIT`], goes on: the device is reachable on this
    /// node, and the cluster logs its trouble.
    async fn wait_until_reachable_in_cluster(&self) {
        if let Some(c) = &self.hub.cluster {
            let reachable = c.device_connected(self.device);
            let _ = tokio::time::timeout(CLUSTER_SUBSCRIBE_WAIT, reachable).await;
        }
    }

    /// Reads the device's frames and acts on them until the connection is
    /// killed, closed, idle too long, or the relay shuts down.
    async fn read<S>(&mut self, mut stream: WsStream<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let shutdown = self.hub.shutdown.clone();
        let idle = self.hub.config.idle_timeout;
        loop {
            let next = tokio::select! {
                _ = self.peer.kill.notified() => break,
                _ = shutdown.cancelled() => {
                    self.peer.kill.kill(codes::SHUTDOWN, "relay shutting down");
                    break;
                }
                n = tokio::time::timeout(idle, stream.next()) => n,
            };
            let msg = match next {
                Err(_) => {
                    self.peer.kill.kill(codes::IDLE, "idle timeout");
                    break;
                }
                Ok(None) | Ok(Some(Err(_))) => break,
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Binary(b) => self.on_binary(&b).await,
                Message::Text(_) => {
                    self.bad_frame(codes::BAD_FRAME, "text frames are not accepted".into())
                }
                Message::Close(_) => break,
                _ => {}
            }
            if self.peer.kill.reason().is_some() {
                break;
            }
        }
    }

    /// Decodes a binary message and acts on it.
    async fn on_binary(&mut self, bytes: &[u8]) {
        match Frame::decode(bytes) {
            Ok(frame) => {
                // A message for another node waits here for room in the
                // queue to Redis: the device is not read meanwhile.
                if let Some(send) = self.on_frame(frame) {
                    if let Some(c) = &self.hub.cluster {
                        c.send_to_device(send).await;
                    }
                }
            }
            Err(e) => self.bad_frame(codes::BAD_FRAME, format!("bad frame: {e}")),
        }
    }

    /// Acts on one frame from the device; a message for a device on
    /// another node is returned, for the cluster.
    fn on_frame(&mut self, frame: Frame) -> Option<RemoteSend> {
        match frame {
            Frame::Send {
                msg_id,
                to,
                payload,
            } => return self.on_send(msg_id, to, payload),
            Frame::Subscribe(ids) => self.on_subscribe(ids),
            Frame::Allow(ids) => self.on_allow(ids),
            Frame::RendezvousJoin { slot_public, proof } => {
                self.on_rendezvous_join(&slot_public, &proof)
            }
            Frame::RendezvousSend(payload) => self.on_rendezvous_send(payload),
            _ => self.bad_frame(
                codes::UNEXPECTED_FRAME,
                "frame type not accepted from devices".into(),
            ),
        }
        None
    }

    /// `Send`: forwards the payload to the recipient's connection here (or
    /// returns it for the cluster), or answers `Undeliverable`.
    fn on_send(&mut self, msg_id: u64, to: DeviceId, payload: Vec<u8>) -> Option<RemoteSend> {
        if !self.bucket.take() {
            self.refuse(msg_id, to, UndeliverableReason::RateLimited);
            return None;
        }
        if to == self.device {
            self.refuse(msg_id, to, UndeliverableReason::ToSelf);
            return None;
        }
        let m = &self.hub.metrics;
        match self.hub.conns.get(&to) {
            None if self.hub.cluster.is_some() => {
                m.cluster_sent.fetch_add(1, Ordering::Relaxed);
                let conn_id = self.peer.conn_id;
                return Some(remote_send(self.device, conn_id, msg_id, to, payload));
            }
            None => self.refuse(msg_id, to, UndeliverableReason::Offline),
            Some(t) => {
                let len = payload.len() as u64;
                let frame = Frame::Deliver {
                    from: self.device,
                    payload,
                }
                .encode();
                match t.deliver(self.device, frame, &self.hub.config) {
                    Ok(()) => {
                        m.messages_forwarded.fetch_add(1, Ordering::Relaxed);
                        m.bytes_forwarded.fetch_add(len, Ordering::Relaxed);
                    }
                    Err(reason) => self.refuse(msg_id, to, reason),
                }
            }
        }
        None
    }

    /// `Subscribe`: replaces the watch list and answers the watched
    /// devices' presence (asking the cluster about those not here).
    fn on_subscribe(&mut self, ids: Vec<DeviceId>) {
        if ids.len() > MAX_WATCH_IDS {
            return self.bad_frame(
                codes::TOO_MANY_WATCHED,
                format!(
                    "watch list too long: {} devices, at most {MAX_WATCH_IDS}; the previous list stays",
                    ids.len()
                ),
            );
        }
        let conn_id = self.peer.conn_id;
        self.hub.watchers.replace((self.device, conn_id), &ids);
        self.peer.presence.watch(&ids);
        let Some(online) = self.hub.conns.online(&ids) else {
            return;
        };
        let mut elsewhere = Vec::new();
        for (id, on) in ids.into_iter().zip(online) {
            if !on && self.hub.cluster.is_some() {
                elsewhere.push(id);
            } else {
                self.peer.presence.set(id, on);
            }
        }
        if let Some(c) = &self.hub.cluster {
            c.query_presence(self.device, conn_id, elsewhere);
        }
    }

    /// `Allow`: only these devices may send to this one from now on.
    fn on_allow(&mut self, ids: Vec<DeviceId>) {
        if ids.len() > MAX_ALLOW_IDS {
            return self.bad_frame(
                codes::TOO_MANY_ALLOWED,
                format!(
                    "allow list too long: {} devices, at most {MAX_ALLOW_IDS}; the previous list stays",
                    ids.len()
                ),
            );
        }
        self.peer.allow_only(ids);
    }

    /// `RendezvousJoin`: checks the slot-key proof, then joins the slot
    /// (the cluster's, or this node's) and tells both members when they meet.
    fn on_rendezvous_join(&mut self, slot_public: &[u8; 32], proof: &[u8; 32]) {
        let s = match self.challenge.verify_slot(slot_public, proof) {
            Ok(s) => s,
            Err(msg) => return self.bad_frame(codes::RENDEZVOUS_AUTH_FAILED, msg),
        };
        let ttl = self.hub.config.rendezvous_ttl;
        if let Some(c) = &self.hub.cluster {
            if self.slot.is_some() {
                return self.error(codes::RENDEZVOUS_REFUSED, SLOT_TAKEN.into());
            }
            self.slot = Some(s);
            c.rendezvous_join(self.device, self.peer.conn_id, s, ttl);
            return;
        }
        let met = match self.hub.slots.join(s, &self.peer, self.slot.is_some(), ttl) {
            Ok(met) => met,
            Err(msg) => return self.error(codes::RENDEZVOUS_REFUSED, msg.into()),
        };
        self.slot = Some(s);
        if let Some(other) = met {
            let m = &self.hub.metrics;
            other.push(Frame::RendezvousPeer { joined: true }.encode(), m);
            self.peer
                .push(Frame::RendezvousPeer { joined: true }.encode(), m);
        }
    }

    /// `RendezvousSend`: passes the payload to the other member of the slot.
    fn on_rendezvous_send(&mut self, payload: Vec<u8>) {
        let conn_id = self.peer.conn_id;
        let sent = match &self.hub.cluster {
            Some(c) => self.slot.map(|s| c.rendezvous_send(conn_id, s, payload)),
            None => self
                .slot
                .and_then(|s| self.hub.slots.other_member(s, conn_id))
                .map(|other| {
                    other.push(Frame::RendezvousData(payload).encode(), &self.hub.metrics);
                }),
        };
        if sent.is_none() {
            self.error(
                codes::NO_RENDEZVOUS,
                "no one else in the rendezvous slot".into(),
            );
        }
    }

    /// Ends the connection's registration: out of the table (unless a newer
    /// connection replaced it), watchers told it is offline (unless it moved
    /// to another node), out of watch lists and rendezvous slots.
    fn unregister(self) {
        let hub = &self.hub;
        let conn_id = self.peer.conn_id;
        if hub.conns.remove_if_current(self.device, conn_id) {
            hub.metrics.connections.fetch_sub(1, Ordering::Relaxed);
            // Replaced by a connection on another node: still online for watchers.
            let moved = self.peer.kill.reason().map(|(c, _)| c) == Some(codes::REPLACED);
            if !moved {
                hub.notify_presence(self.device, false);
            }
            if let Some(c) = &hub.cluster {
                c.device_disconnected(self.device, moved);
            }
        }
        if let Some(c) = &hub.cluster {
            c.rendezvous_leave(self.device, conn_id);
        }
        hub.watchers.forget((self.device, conn_id));
        if let Some(s) = self.slot {
            hub.slots.leave(s, conn_id, &hub.metrics);
        }
        tracing::debug!(device = %self.device.fingerprint(), "device disconnected");
    }

    /// Answers the device with an `Error` frame.
    fn error(&self, code: u16, message: String) {
        self.peer
            .push(Frame::Error { code, message }.encode(), &self.hub.metrics);
    }

    /// Counts a frame refused as bad and answers it with an `Error` frame.
    fn bad_frame(&self, code: u16, message: String) {
        self.hub
            .metrics
            .drops_bad_frame
            .fetch_add(1, Ordering::Relaxed);
        self.error(code, message);
    }

    /// Counts a refused send and answers it with `Undeliverable`.
    fn refuse(&self, msg_id: u64, to: DeviceId, reason: UndeliverableReason) {
        count_refusal(&self.hub.metrics, reason);
        self.peer.push(
            Frame::Undeliverable { msg_id, to, reason }.encode(),
            &self.hub.metrics,
        );
    }
}
