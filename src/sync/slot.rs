//! The sync engine of a store that starts syncing once it knows a relay.

use std::time::Duration;

use super::engine::EngineConfig;
use super::handle::SyncEngine;
use super::peers;
use super::status::EngineStatus;
use crate::error::Result;
use crate::store::Store;

/// The sync engine of a store that starts syncing once it knows a relay
/// (after pairing, or `--relay`): shared by the store daemon and peer-mode
/// clients, which both pair at run time.
pub struct EngineSlot {
    /// The store to sync.
    store: Store,
    /// Resync interval for the engine when it starts.
    resync_interval: Duration,
    /// The engine, once started.
    engine: tokio::sync::Mutex<Option<SyncEngine>>,
}

impl EngineSlot {
    /// An empty slot for `store`.
    pub fn new(store: Store, resync_interval: Duration) -> Self {
        Self {
            store,
            resync_interval,
            engine: tokio::sync::Mutex::new(None),
        }
    }

    /// Starts the engine if a relay is configured and it is not running;
    /// otherwise tells the running engine the set of peers changed.
    pub async fn ensure(&self) -> Result<()> {
        let mut engine = self.engine.lock().await;
        if let Some(e) = engine.as_ref() {
            e.peers_changed();
        } else if let Some(url) = peers::relay_url(self.store.db())? {
            *engine = Some(SyncEngine::start_with(
                self.store.clone(),
                EngineConfig {
                    relay_url: url,
                    resync_interval: self.resync_interval,
                },
            )?);
        }
        Ok(())
    }

    /// Tells the running engine, if any, that this store's sync choices
    /// changed (an engine that starts later reads them itself).
    pub async fn prefs_changed(&self) {
        if let Some(e) = self.engine.lock().await.as_ref() {
            e.prefs_changed();
        }
    }

    /// The engine's status, if it runs.
    pub async fn status(&self) -> Option<EngineStatus> {
        self.engine.lock().await.as_ref().map(|e| e.status())
    }

    /// Stops the engine, if it runs, and waits for it.
    pub async fn shutdown(&self) {
        if let Some(e) = self.engine.lock().await.take() {
            e.shutdown().await;
        }
    }
}
