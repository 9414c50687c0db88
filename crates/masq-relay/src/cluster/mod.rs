//! Several relay nodes acting as one, over Redis pub/sub (`masq relay
//! --cluster redis://HOST:PORT`). No home-made cluster protocol, and nothing
//! stored in Redis but presence keys that expire.
//!
//! Channels and keys (all prefixed `masq:`):
//! - `masq:dev:<device hex>`: the node holding a device's connection is
//!   subscribed. Messages: `0 ‖ frame` (a frame to push to the device as is,
//!   e.g. an `Undeliverable` answer), `2 ‖ msg id(8) ‖ Deliver frame` (another
//!   device's message: this node applies the recipient's allow list and
//!   queue shares, and publishes a refusal back on the sender's channel as
//!   `0 ‖ Undeliverable`), or `1 ‖ node id` (a newer connection of this device
//!   opened on that node: any other node closes its own, as one relay does).
//!   A `PUBLISH` that reached nobody means the device is offline everywhere.
//! - `masq:presence`: every node is subscribed; `device(32) ‖ online(1) ‖ node id`.
//! - `masq:presence:<device hex>` = node id, expiring after
//!   `PRESENCE_TTL` unless the node refreshes it; read when a device
//!   subscribes to the presence of devices held by other nodes.
//! - `masq:slot:<slot hex>` (counter, expires with the rendezvous TTL) and the
//!   channel of the same name: pairing rendezvous across nodes. Messages:
//!   `kind(1) ‖ member tag(24) ‖ data` (0 joined, 1 data, 2 left).
//!
//! Redis comes with the `cluster` cargo feature (off by default; CI turns it
//! on). Without it, [`Cluster`] is a type with no values, so the server's
//! `Option<Cluster>` is always `None`, and `--cluster` is refused at start
//! with a message that says how to build it in.
//!
//! - `redis_link`: the link itself (feature `cluster`).
//! - `disabled`: the stand-in without it.
//!
//! Architecture invariant: the cluster knows Redis and the channel layout; it
//! never touches the relay's connection table. It hands frames for local
//! devices to the server as [`Inbound`] events.

use masq_core::crypto::DeviceId;

#[cfg(not(feature = "cluster"))]
mod disabled;
#[cfg(feature = "cluster")]
mod redis_link;

#[cfg(not(feature = "cluster"))]
pub use disabled::{Cluster, ClusterError};
#[cfg(feature = "cluster")]
pub use redis_link::*;

/// What the cluster asks the local server to do.
#[derive(Debug)]
pub enum Inbound {
    /// A message for a device on this node: deliver it if the device
    /// allows `from` and has room, else answer `from` with a refusal.
    Deliver {
        /// The recipient.
        device: DeviceId,
        /// The sender (as in the `Deliver` frame).
        from: DeviceId,
        /// The sender's message id (for the refusal).
        msg_id: u64,
        /// The encoded `Deliver` frame.
        frame: Vec<u8>,
    },
    /// The presence of `id` for one connection that asked (Subscribe).
    PresenceTo {
        /// The watcher.
        device: DeviceId,
        /// Its connection.
        conn_id: u64,
        /// The watched device.
        id: DeviceId,
        /// Whether it is online.
        online: bool,
    },
    /// Push `frame` to the device's current connection on this node.
    ToDevice {
        /// The device.
        device: DeviceId,
        /// Encoded frame.
        frame: Vec<u8>,
    },
    /// Push `frame` to one connection (if it is still the device's current one).
    ToConn {
        /// The device.
        device: DeviceId,
        /// Its connection.
        conn_id: u64,
        /// Encoded frame.
        frame: Vec<u8>,
    },
    /// Another node now holds the device: close the local connection.
    Claimed(DeviceId),
    /// A device came online or went offline on another node.
    Presence {
        /// The device.
        device: DeviceId,
        /// Whether it is online now.
        online: bool,
    },
}

/// A device's message for a device on another node, waiting to be published.
pub struct RemoteSend {
    /// The recipient.
    pub to: DeviceId,
    /// The sender.
    pub from: DeviceId,
    /// The sender's message id.
    pub msg_id: u64,
    /// The encoded frame for it (`Deliver`).
    pub frame: Vec<u8>,
    /// Sent back to the server if no node holds the recipient.
    pub if_offline: Inbound,
}
