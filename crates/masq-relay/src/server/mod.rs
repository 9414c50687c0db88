//! The relay server: accepts WebSocket connections, authenticates devices by
//! their X25519 keys, forwards opaque payloads, tracks presence, runs pairing
//! rendezvous slots, and answers `GET /healthz` and `GET /metrics` on the same port.
//!
//! Each connection has a reader task and a writer task, owned by the
//! connection's handle; the writer drains a bounded queue (frames and bytes),
//! so a slow receiver costs bounded memory. Others' messages may fill only
//! their part of that queue, each sender at most its share
//! ([`SENDER_SHARE_DIVISOR`](crate::config::SENDER_SHARE_DIVISOR)), and only
//! senders the device allowed (`Allow`); past that a send is refused at the
//! sender, so no flood disconnects the recipient. Presence answers are not
//! queued frames: they are kept as one latest state per watched device and
//! written when there is room, so watching many devices cannot overflow the
//! watcher. Nothing is stored: a payload lives only while it is queued for
//! its recipient.
//!
//! Modules, each one job (none reaches back up to this root):
//! - `accept`: the accept loop, TLS, and plain HTTP vs the WebSocket upgrade.
//! - `connection`: one device's connection from upgrade to end: register,
//!   read and act on its frames, unregister.
//! - `auth`: the challenge and the device's proof (and slot-key proofs).
//! - `writer`: a connection's writer task (queue, presence, pings, close).
//! - `routing`: each connection's queue as others reach it, its allow list
//!   and senders' shares, the connection table, refusals.
//! - `presence`: watch lists and each connection's pending presence states.
//! - `rendezvous`: pairing slots on a single node.
//! - `cluster_events`: what other nodes ask of this node's connections.
//! - `hub`: the state all of these share.
//! - `metrics`: the counters and their `/metrics` text.
//! - `kill`, `ws`: stopping a connection with a reason; the WebSocket's
//!   types, timed writes and close frames.
//!
//! Architecture invariant: knows nothing of fjall, Automerge, envelopes or sync;
//! payloads are opaque bytes and are never logged.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Cluster;
use crate::config::{RelayConfig, SHUTDOWN_WAIT};
use hub::Hub;

mod accept;
mod auth;
mod cluster_events;
mod connection;
mod hub;
mod kill;
mod metrics;
mod presence;
mod rendezvous;
mod routing;
mod writer;
mod ws;

// The queue and timing limits live with the others in `config`; these
// paths are kept for the callers that name them here.
pub use crate::config::{
    CLUSTER_SUBSCRIBE_WAIT, CONTROL_RESERVE_BYTES, MAX_QUEUED_BYTES, WRITE_TIMEOUT,
};
pub use metrics::{Metrics, METRICS_CONTENT_TYPE};

/// A running relay. Dropping it stops accepting; [`shutdown`](Self::shutdown)
/// also closes every connection with a reason.
pub struct RelayHandle {
    /// Where it listens (the OS's port when the config asked for port 0).
    addr: SocketAddr,
    /// The relay's shutdown token (see `Hub::shutdown`).
    shutdown: CancellationToken,
    /// Owns the relay's long-lived tasks (accept loop, cluster events), so
    /// shutdown can wait for them; connection tasks are owned by the accept
    /// loop's `JoinSet` and end with it.
    tasks: TaskTracker,
    /// The relay's counters (the same ones `/metrics` renders).
    metrics: Arc<Metrics>,
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        // The tasks see it and end; connections are told "shutting down".
        self.shutdown.cancel();
    }
}

impl RelayHandle {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://` URL of the relay.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Closes every connection (close code 4009, "relay shutting down") and stops.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, self.tasks.wait()).await;
    }
}

/// Starts a relay.
pub async fn start(config: RelayConfig) -> std::io::Result<RelayHandle> {
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let metrics = Arc::new(Metrics::default());
    let (cluster, inbound) = match &config.cluster {
        Some(url) => {
            let (c, inbound) = Cluster::connect_retrying(url)
                .await
                .map_err(|e| std::io::Error::other(format!("cluster {url}: {e}")))?;
            (Some(c), Some(inbound))
        }
        None => (None, None),
    };
    let hub = Arc::new(Hub::new(config, metrics.clone(), shutdown.clone(), cluster));
    if let Some(inbound) = inbound {
        tasks.spawn(cluster_events::apply_cluster_events(hub.clone(), inbound));
    }
    tasks.spawn(accept::accept_loop(listener, hub));
    tracing::info!(%addr, "relay listening");
    Ok(RelayHandle {
        addr,
        shutdown,
        tasks,
        metrics,
    })
}
