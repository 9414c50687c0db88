//! [`Hub`]: the state the relay's tasks share (config, the tables of
//! connections, watchers and rendezvous slots, counters, the shutdown token,
//! the cluster link), and what needs more than one of those tables at once.
//!
//! Knows nothing of sockets or frames' handling: connections and the
//! cluster's events act through it.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::presence::Watchers;
use super::rendezvous::Slots;
use super::routing::ConnectionTable;
use crate::cluster::Cluster;
use crate::config::RelayConfig;
use masq_core::crypto::DeviceId;

/// Shared relay state.
pub(super) struct Hub {
    /// The relay's limits and options.
    pub(super) config: RelayConfig,
    /// This node's connections, by device.
    pub(super) conns: ConnectionTable,
    /// Who watches whose presence.
    pub(super) watchers: Watchers,
    /// Pairing rendezvous slots (single node; a cluster keeps its own).
    pub(super) slots: Slots,
    /// The counters (shared with `RelayHandle::metrics`).
    pub(super) metrics: Arc<Metrics>,
    /// The next connection's id (ids start at 1 and are never reused).
    pub(super) next_conn: AtomicU64,
    /// Sockets being handled, plain HTTP requests included (checked against
    /// `max_connections` before a WebSocket upgrade).
    pub(super) open_sockets: AtomicUsize,
    /// Cancelled once, when the relay shuts down: every task of the relay
    /// watches it (the one way to stop).
    pub(super) shutdown: CancellationToken,
    /// The link to the other nodes (`--cluster`), if any.
    pub(super) cluster: Option<Cluster>,
}

impl Hub {
    /// A hub with empty tables.
    pub(super) fn new(
        config: RelayConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        cluster: Option<Cluster>,
    ) -> Self {
        Self {
            config,
            conns: ConnectionTable::default(),
            watchers: Watchers::default(),
            slots: Slots::default(),
            metrics,
            next_conn: AtomicU64::new(1),
            open_sockets: AtomicUsize::new(0),
            shutdown,
            cluster,
        }
    }

    /// Tells the connections here that watch `device` that it went online
    /// or offline.
    pub(super) fn notify_presence(&self, device: DeviceId, online: bool) {
        let watchers = self.watchers.of(device);
        for p in self.conns.current_of(&watchers) {
            p.presence.set(device, online);
        }
    }
}
