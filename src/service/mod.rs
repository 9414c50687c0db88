//! The store service: what `masq store` serves to the apps on this device —
//! HTTP and the app WebSocket (`/ws`) on loopback — and the daemon file that
//! lets local tools find it.
//!
//! - [`registry`]: which browser origins and native apps may use the store.
//! - `connection`: one app connection — authentication at the upgrade,
//!   then requests executed in order, pushed events, permission changes.
//! - `admin`: the admin operations (apps, devices, pairing, status), open only
//!   to the admin token.
//! - [`app_limits`]: connections per app and requests per second per app.
//! - [`web`]: the manager page and the browser client, served over plain HTTP.
//! - [`daemon_file`]: `store.json` in the data dir (URL, pid, admin token; mode 0600).
//!
//! Architecture invariant: the service never touches fjall or Automerge
//! directly; data requests go through [`crate::api::execute`], so the service,
//! peer-mode clients and the CLI behave alike.

pub mod admin;
pub mod app_limits;
mod connection;
pub mod daemon_file;
pub mod registry;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::Store;
use crate::sync::EngineSlot;

/// Default listen address of `masq store`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Longest HTTP request head accepted.
pub const MAX_HTTP_HEAD_BYTES: usize = 8 * 1024;
/// Time from TCP accept to a complete request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Most simultaneous connections of approved apps (native tokens and approved
/// origins; past this new ones get 503). Connections waiting for approval have
/// their own pool ([`app_limits::MAX_PENDING_CONNECTIONS`]) and the admin
/// another ([`MAX_ADMIN_CONNECTIONS`]), so neither strangers nor apps can lock
/// the user out of the manager.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most simultaneous admin connections (manager pages, CLI commands talking to
/// the daemon). The admin is the user: this only bounds memory should a
/// script misbehave, and is far above what a person opens.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// Read buffer of a connection waiting for approval (tungstenite's default is
/// 128 KiB per connection). Such a connection only waits; each of its requests
/// is answered `not_approved`, so a small buffer costs nothing, and the pending
/// pool's memory stays small (issue 16: 1 024 pending connections took 140 MB).
pub const PENDING_READ_BUFFER: usize = 4 * 1024;
/// How long the accept loop pauses after `accept` fails for lack of
/// resources (`EMFILE`, `ENFILE`, `ENOMEM`, `ENOBUFS`): the listener stays
/// readable while the backlog holds connections, so retrying at once spins a
/// core until a descriptor frees up. 100 ms is short next to a client's
/// connect timeout and long enough to cost nothing.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Messages queued for one connection's writer (answers and events) before
/// the request worker and event forwarders wait for the socket.
pub const OUTBOUND_QUEUE: usize = 1024;

/// How the service runs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Where to listen (must be a loopback address).
    pub listen: SocketAddr,
    /// Sync engine settings used when a relay is known.
    pub resync_interval: Duration,
    /// Requests per second one app may send over all its connections
    /// ([`app_limits::APP_REQUESTS_PER_SEC`] by default).
    pub app_rate: u32,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7070))),
            resync_interval: crate::sync::engine::RESYNC_INTERVAL,
            app_rate: app_limits::APP_REQUESTS_PER_SEC,
        }
    }
}

/// What every connection of the service shares.
pub struct Shared {
    /// The store.
    pub store: Store,
    /// The admin token (hex), compared in constant time.
    pub admin_token: String,
    /// The origins the store's own pages are served from (the manager page may
    /// use the admin token; no other origin may).
    pub own_origins: Vec<String>,
    /// Bumped whenever the app registry changes, so connections re-check
    /// whether they are still (or now) allowed.
    pub registry_version: watch::Sender<u64>,
    /// The sync engine, running once a relay is known.
    pub engine: EngineSlot,
    /// The port the service listens on (the `Host` header must name it).
    pub port: u16,
    /// Live connections of approved apps.
    pub connections: std::sync::atomic::AtomicUsize,
    /// Live admin connections.
    pub admin_connections: std::sync::atomic::AtomicUsize,
    /// One-time manager login codes and the sessions pages trade them for.
    pub admin_credentials: admin::AdminCredentials,
    /// Pairings whose code is shown and whose user has not answered yet
    /// (`pair.confirm` delivers the answer).
    pub pair_answers: admin::PairAnswers,
    /// Per-app connection caps and request rates.
    pub app_limits: Arc<app_limits::AppLimits>,
    /// Whether this process syncs (the daemon does; the CLI working on a
    /// data directory directly does not start an engine).
    pub sync_enabled: bool,
    /// Cancelled once, when the service shuts down: the accept loop and
    /// every task the service starts besides connections watch it.
    pub stop: CancellationToken,
    /// Owns the tasks the service starts besides its accept loop and
    /// connections (a pairing's wait for the other device), so shutdown
    /// ends them and waits for them.
    pub tasks: TaskTracker,
}

impl Shared {
    /// State for serving `store` on `port` (or, with `sync_enabled` false, for
    /// running admin operations in a CLI process without a listener).
    pub fn new(store: Store, port: u16, resync_interval: Duration, sync_enabled: bool) -> Self {
        Self {
            engine: EngineSlot::new(store.clone(), resync_interval),
            store,
            admin_token: hex::encode(*crate::crypto::random_bytes::<32>()),
            own_origins: vec![
                format!("http://127.0.0.1:{port}"),
                format!("http://localhost:{port}"),
                format!("http://[::1]:{port}"),
            ],
            port,
            registry_version: watch::channel(0).0,
            connections: Default::default(),
            admin_connections: Default::default(),
            admin_credentials: admin::AdminCredentials::default(),
            pair_answers: admin::PairAnswers::default(),
            app_limits: Arc::new(app_limits::AppLimits::new(app_limits::APP_REQUESTS_PER_SEC)),
            sync_enabled,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Runs `task` as a task of the service: owned by [`Shared::tasks`],
    /// ended at shutdown.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Tells connections the registry changed.
    pub fn registry_changed(&self) {
        self.registry_version.send_modify(|v| *v += 1);
    }

    /// Starts (or updates) the sync engine, unless this process does not sync.
    pub async fn ensure_engine(&self) -> crate::error::Result<()> {
        if self.sync_enabled {
            self.engine.ensure().await?;
        }
        Ok(())
    }
}

/// A running store service. Dropping it stops accepting; [`shutdown`](Self::shutdown)
/// also stops the sync engine and waits.
pub struct ServiceHandle {
    /// Where it listens.
    addr: SocketAddr,
    /// The admin token.
    admin_token: String,
    /// Shared state (its stop token and tasks, the engine at shutdown).
    shared: Arc<Shared>,
    /// The accept loop (it owns the connections).
    task: Option<JoinHandle<()>>,
}

impl Drop for ServiceHandle {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl ServiceHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The admin token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Stops accepting, closes connections, stops the engine.
    pub async fn shutdown(mut self) {
        self.shared.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.shared.engine.shutdown().await;
    }
}

/// Starts serving `store` (and syncing it, if a relay is known).
pub async fn start(store: Store, config: ServiceConfig) -> std::io::Result<ServiceHandle> {
    if !config.listen.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the store serves apps on loopback only (127.0.0.1 or [::1])",
        ));
    }
    let listener = TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let mut shared = Shared::new(store, addr.port(), config.resync_interval, true);
    shared.app_limits = Arc::new(app_limits::AppLimits::new(config.app_rate));
    let shared = Arc::new(shared);
    let admin_token = shared.admin_token.clone();
    shared
        .ensure_engine()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let task = tokio::spawn(accept_loop(listener, shared.clone()));
    Ok(ServiceHandle {
        addr,
        admin_token,
        shared,
        task: Some(task),
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let stop = shared.stop.clone();
    let mut conns = tokio::task::JoinSet::new();
    let (closing_tx, _) = broadcast::channel::<()>(1);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) if crate::http_head::is_resource_exhaustion(&e) => {
                        tracing::warn!("accept failed ({e}); pausing {ACCEPT_ERROR_BACKOFF:?}");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                        }
                        continue;
                    }
                    // A connection that died before we took it: nothing to do.
                    Err(_) => continue,
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let closing = closing_tx.subscribe();
                conns.spawn(connection::handle(stream, shared, closing));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    let _ = closing_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}
