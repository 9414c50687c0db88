//! The sync engine: the tokio shell around the core's sans-I/O device
//! (`masq_core::device::Device`, which holds every rule: links, sessions,
//! sync states, the gate, membership, notes). One task per store owns the
//! relay connection, the timers and the store's change notices; it hands
//! each to the device with the time, over the store as its host
//! ([`StoreHost`]: fjall commits, locked documents), then sends what the
//! device left to send. The device commits before it emits, and this
//! host's commits are synchronous, so nothing leaves before the state that
//! sealed it is on disk.
//!
//! Blocking work (fjall, Automerge) runs under `block_in_place`, so the engine
//! needs tokio's multi-thread runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use masq_core::device::meta::ReadError;
use masq_core::device::{Device, Now, Out, RelayEvent};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::core::StoreHost;

use super::status::EngineStatus;
use super::transport::{Transport, TransportEvent};
use crate::crypto::DeviceId;
use crate::error::{Error, Result};
use crate::store::Store;

/// The engine checks for stale inits every half of this.
pub use masq_core::sync::handshake_rules::HANDSHAKE_RESEND_AFTER;
/// First reconnect delay after losing the relay; doubles up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Relay URL (ws://...).
    pub relay_url: String,
    /// How often every ready peer is offered every document again from the
    /// persisted sync states, recovering from messages lost in transit
    /// (Automerge's sync assumes a reliable stream; the relay may drop).
    pub resync_interval: Duration,
}

impl EngineConfig {
    /// Defaults for `relay_url`.
    pub fn new(relay_url: impl Into<String>) -> Self {
        Self {
            relay_url: relay_url.into(),
            resync_interval: RESYNC_INTERVAL,
        }
    }
}

/// Default [`EngineConfig::resync_interval`].
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Changed documents are offered to peers at most this often: every change
/// made within one window travels in one sealed message per peer (a burst of
/// 100 000 small changes is a few thousand messages, not 100 000), at the cost
/// of up to this much added latency.
pub const SYNC_DEBOUNCE: Duration = Duration::from_millis(20);

/// What ties the engine's task to its handle ([`super::handle::SyncEngine`]).
pub(super) struct Signals {
    /// Peers were added or removed outside the engine (pairing, CLI). A
    /// `Notify` keeps at most one wake-up pending however often it is
    /// told, so the engine's inbox is bounded by construction.
    pub peers_changed: Arc<Notify>,
    /// This store's sync choices changed in the store (admin op, CLI).
    pub prefs_changed: Arc<Notify>,
    /// Asks the task to stop (it closes its relay connection first).
    pub stop: CancellationToken,
    /// Where the task publishes its status.
    pub status: watch::Sender<EngineStatus>,
}

/// Opens the device over `store` and spawns the engine's task.
pub(super) fn spawn(
    store: Store,
    config: EngineConfig,
    signals: Signals,
) -> Result<JoinHandle<()>> {
    let host = StoreHost::new(store);
    let epoch = std::time::Instant::now();
    let now = Now {
        mono: epoch.elapsed(),
        unix_ms: unix_ms(),
    };
    let mut device = Device::open(&host, now).map_err(|e| match e {
        ReadError::Storage(e) => e,
        ReadError::Malformed(what) => Error::Storage(format!("stored {what} is malformed")),
    })?;
    device.set_resync_interval(config.resync_interval);
    let engine = Engine {
        host,
        device,
        epoch,
        status: signals.status.clone(),
    };
    Ok(tokio::spawn(engine.run(config, signals)))
}

struct Engine {
    /// The store, as the core device's host (records, documents, commits).
    host: StoreHost,
    /// The device: links, sync states, the gate, and every rule of the
    /// protocol (`masq_core::device`). This shell feeds it and sends what it
    /// leaves in `take_out` (its commits are synchronous fjall commits, so
    /// what it emits is already backed by the disk).
    device: Device,
    /// The engine's clock origin: the device's monotonic time is a
    /// duration since it.
    epoch: std::time::Instant,
    /// Where the status goes after every step.
    status: watch::Sender<EngineStatus>,
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

impl Engine {
    /// Now, as the device takes it.
    fn now(&self) -> Now {
        Now {
            mono: self.epoch.elapsed(),
            unix_ms: unix_ms(),
        }
    }

    /// Runs one device step (blocking: fjall, Automerge), logs a storage
    /// failure (the store goes on serving), sends what the step left, and
    /// publishes the status.
    async fn step(
        &mut self,
        t: &mut Transport,
        what: &str,
        f: impl FnOnce(&mut Device, &StoreHost, Now) -> Result<()>,
    ) {
        let now = self.now();
        let (device, host) = (&mut self.device, &self.host);
        if let Err(e) = blocking(|| f(device, host, now)) {
            tracing::warn!("sync step '{what}' failed: {e}");
            self.device.note_error(format!("{what}: {e}"));
        }
        self.send_out(t).await;
        self.publish_status();
    }

    /// Sends what the device left to send, in order.
    async fn send_out(&mut self, t: &mut Transport) {
        for out in self.device.take_out() {
            let sent = match out {
                Out::Packet { to, bytes } => t.send(to, bytes).await,
                Out::Allow(ids) => t.allow(ids).await,
                Out::Watch(ids) => t.watch(ids).await,
            };
            if let Err(e) = sent {
                tracing::debug!("send to the relay failed: {e}");
            }
        }
    }

    async fn run(mut self, config: EngineConfig, signals: Signals) {
        let Signals {
            peers_changed,
            prefs_changed,
            stop,
            ..
        } = signals;
        let relay_url = config.relay_url.clone();
        let mut delay = RECONNECT_MIN;
        let mut changes = self.host.store().subscribe_changes();
        self.publish_status();
        loop {
            let now = self.now();
            if let Err(e) = blocking(|| self.device.load_peers(&self.host, now)) {
                tracing::warn!("cannot read peers: {e}");
            }
            let transport = tokio::select! {
                t = Transport::connect(&relay_url, self.device.keypair()) => t,
                _ = peers_changed.notified() => continue,
                _ = stop.cancelled() => return,
            };
            let mut transport = match transport {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!("relay connect failed: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return,
                    }
                    delay = (delay * 2).min(RECONNECT_MAX);
                    continue;
                }
            };
            delay = RECONNECT_MIN;
            self.step(&mut transport, "relay up", |d, h, now| d.relay_up(h, now))
                .await;
            let mut resync = tokio::time::interval(config.resync_interval);
            resync.tick().await;
            // Unanswered handshakes are retried on their own, faster clock:
            // waiting for the resync tick left a fresh pairing unsynced for
            // up to `resync_interval` (30 s) when the first init was dropped.
            let mut handshake_retry = tokio::time::interval(HANDSHAKE_RESEND_AFTER / 2);
            handshake_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            handshake_retry.tick().await;
            let mut debounce = tokio::time::interval(SYNC_DEBOUNCE);
            debounce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Documents changed since the last flush, with the one peer they
            // came from (not offered back to it), or None if changed here.
            let mut dirty: HashMap<(String, crate::doc::DocId), Option<DeviceId>> = HashMap::new();
            let stopping = loop {
                tokio::select! {
                    _ = resync.tick() => {
                        self.step(&mut transport, "resync", |d, h, now| d.on_resync_tick(h, now)).await
                    }
                    _ = handshake_retry.tick() => {
                        self.step(&mut transport, "retry", |d, h, now| d.on_retry_tick(h, now)).await
                    }
                    _ = debounce.tick(), if !dirty.is_empty() => {
                        let changed: Vec<_> = std::mem::take(&mut dirty).into_iter().collect();
                        self.step(&mut transport, "offer", |d, h, _| d.offer_changed(h, &changed)).await;
                    }
                    ev = transport.next() => match ev {
                        Some(TransportEvent::Closed(reason)) | Some(TransportEvent::Error(reason)) => {
                            tracing::info!("relay connection closed: {reason}");
                            break false;
                        }
                        None => break false,
                        Some(ev) => {
                            if let Some(ev) = relay_event(ev) {
                                self.step(&mut transport, "relay event", |d, h, now| {
                                    d.on_relay_event(h, ev, now)
                                })
                                .await;
                            }
                        }
                    },
                    ch = changes.recv() => match ch {
                        Ok((app, doc, origin)) => {
                            let from = match &origin {
                                crate::store::Origin::Remote(hex) => DeviceId::parse(hex),
                                crate::store::Origin::Local => None,
                            };
                            dirty
                                .entry((app, doc))
                                .and_modify(|f| if *f != from { *f = None })
                                .or_insert(from);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            dirty.clear();
                            self.step(&mut transport, "offer all", |d, h, _| d.offer_all(h)).await
                        }
                        Err(_) => break true,
                    },
                    _ = peers_changed.notified() => {
                        self.step(&mut transport, "peers changed", |d, h, now| d.peers_changed(h, now)).await
                    }
                    _ = prefs_changed.notified() => {
                        self.step(&mut transport, "prefs changed", |d, h, _| d.prefs_changed(h)).await
                    }
                    _ = stop.cancelled() => break true,
                }
            };
            transport.close().await;
            self.device.relay_down();
            self.publish_status();
            if stopping {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    fn publish_status(&mut self) {
        let _ = self.status.send(EngineStatus::of(&self.device));
    }
}

/// The device's view of a transport event (`None`: not the device's).
fn relay_event(ev: TransportEvent) -> Option<RelayEvent> {
    Some(match ev {
        TransportEvent::Online(id) => RelayEvent::Online(id),
        TransportEvent::Offline(id) => RelayEvent::Offline(id),
        TransportEvent::Undeliverable(id, reason) => RelayEvent::Undeliverable(id, reason),
        TransportEvent::Packet { from, bytes } => RelayEvent::Packet { from, bytes },
        TransportEvent::Closed(_)
        | TransportEvent::Error(_)
        | TransportEvent::RendezvousData(_)
        | TransportEvent::RendezvousPeer(_) => return None,
    })
}

/// The wall clock in milliseconds since the Unix epoch (0 before it): the
/// stamps of this device's handshake inits start from it.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
