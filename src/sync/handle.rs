//! The sync engine's handle: what the store daemon, a peer-mode client,
//! the demo and the benches hold. Starting it spawns the engine's task
//! ([`super::engine`]); the handle tells the task of peers and preferences
//! changed elsewhere, reads its status, and stops it (on drop too).

use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::engine::{spawn, EngineConfig, Signals};
use super::status::EngineStatus;
use crate::error::Result;
use crate::store::Store;

/// A running sync engine. Dropping it stops the task.
pub struct SyncEngine {
    /// Peers were added or removed outside the engine (pairing, CLI). A
    /// `Notify` keeps at most one wake-up pending however often it is
    /// told, so the engine's inbox is bounded by construction.
    peers_changed: Arc<Notify>,
    /// This store's sync choices changed in the store (admin op, CLI):
    /// the engine reads them again and tells its peers. A `Notify` too.
    prefs_changed: Arc<Notify>,
    /// Asks the task to stop (it closes its relay connection first).
    stop: CancellationToken,
    /// Latest status.
    status: watch::Receiver<EngineStatus>,
    /// The task; aborted on drop.
    task: Option<JoinHandle<()>>,
}

impl Drop for SyncEngine {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl SyncEngine {
    /// Starts syncing `store` through the relay at `relay_url` with default settings.
    pub fn start(store: Store, relay_url: String) -> Result<Self> {
        Self::start_with(store, EngineConfig::new(relay_url))
    }

    /// Starts syncing `store` as configured.
    pub fn start_with(store: Store, config: EngineConfig) -> Result<Self> {
        let peers_changed = Arc::new(Notify::new());
        let prefs_changed = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let (status_tx, status_rx) = watch::channel(EngineStatus::default());
        let task = spawn(
            store,
            config,
            Signals {
                peers_changed: peers_changed.clone(),
                prefs_changed: prefs_changed.clone(),
                stop: stop.clone(),
                status: status_tx,
            },
        )?;
        Ok(Self {
            peers_changed,
            prefs_changed,
            stop,
            status: status_rx,
            task: Some(task),
        })
    }

    /// The latest status.
    pub fn status(&self) -> EngineStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status update (for tests that wait on
    /// a status change).
    #[cfg(feature = "internals")]
    pub fn watch_status(&self) -> watch::Receiver<EngineStatus> {
        self.status.clone()
    }

    /// Tells the engine the set of peers changed (after pairing or removal).
    pub fn peers_changed(&self) {
        self.peers_changed.notify_one();
    }

    /// Tells the engine this store's sync choices changed in the store.
    pub fn prefs_changed(&self) {
        self.prefs_changed.notify_one();
    }

    /// Stops the engine and waits for its task.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}
