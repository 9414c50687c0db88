//! The relay server: accepts WebSocket connections, authenticates devices by
//! their X25519 keys, forwards opaque payloads, tracks presence, runs pairing
//! rendezvous slots, and answers `GET /healthz` and `GET /metrics` on the same port.
//!
//! Each connection has a reader task and a writer task, owned by the
//! connection's handle; the writer drains a bounded queue (frames and bytes),
//! so a slow receiver costs bounded memory. Others' messages may fill only
//! their part of that queue, each sender at most its share
//! ([`SENDER_SHARE_DIVISOR`]), and only senders the device allowed
//! (`Allow`); past that a send is refused at the sender, so no flood
//! disconnects the recipient. Presence answers are not queued frames: they
//! are kept as one latest state per watched device and written when there
//! is room, so watching many devices cannot overflow the watcher.
//! Nothing is stored: a payload lives only while it is queued for its recipient.
//!
//! Architecture invariant: knows nothing of fjall, Automerge, envelopes or sync;
//! payloads are opaque bytes and are never logged.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{SinkExt, StreamExt};

use super::cluster::{Cluster, Inbound, RemoteSend};
use crate::rate_limit::TokenBucket;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use x25519_dalek::{PublicKey, StaticSecret};

use super::config::{
    auth_proof, slot_proof, RelayConfig, CONTROL_RESERVE_FRAMES, MAX_ALLOW_IDS,
    MAX_HTTP_HEAD_BYTES, MAX_WATCH_IDS, SENDER_SHARE_DIVISOR,
};
use crate::http_head::{read_head, respond, Prefixed};
use masq_core::crypto::{random_bytes, DeviceId};
use masq_core::wire::relay_frame::{codes, Frame, UndeliverableReason};

/// Bytes one connection may have queued (besides the frame count limit).
pub const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;
/// Of [`MAX_QUEUED_BYTES`], what others' messages can never take: room for
/// the relay's own answers to the device (a rendezvous frame is up to 1 MiB).
pub const CONTROL_RESERVE_BYTES: usize = 1024 * 1024;
/// How long a single WebSocket write may take before the receiver counts as stuck.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// In a cluster, how long a new connection's `AuthOk` waits for Redis to
/// confirm the device's channel subscription (so other nodes can reach it).
pub const CLUSTER_SUBSCRIBE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Counters exported at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Live authenticated connections.
    pub connections: AtomicUsize,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Payloads forwarded.
    pub messages_forwarded: AtomicU64,
    /// Payload bytes forwarded.
    pub bytes_forwarded: AtomicU64,
    /// Sends to offline devices.
    pub drops_offline: AtomicU64,
    /// Sends to self.
    pub drops_to_self: AtomicU64,
    /// Sends refused by the rate limit.
    pub drops_rate_limited: AtomicU64,
    /// Sends refused because the recipient does not allow the sender.
    pub drops_not_allowed: AtomicU64,
    /// Sends refused because the recipient's queue (or the sender's share
    /// of it) was full.
    pub drops_recipient_busy: AtomicU64,
    /// Receivers disconnected for not reading.
    pub drops_too_slow: AtomicU64,
    /// Frames that did not decode or were not allowed.
    pub drops_bad_frame: AtomicU64,
    /// Failed authentications.
    pub drops_auth_failed: AtomicU64,
    /// Messages handed to the cluster for devices on other nodes.
    pub cluster_sent: AtomicU64,
    /// Messages from other nodes delivered to devices here.
    pub cluster_delivered: AtomicU64,
}

/// A counter family at one scrape: one label, one value per label value.
#[derive(Debug)]
struct CounterFamily {
    /// Name without `_total`.
    name: &'static str,
    help: &'static str,
    label: &'static str,
    values: Vec<(&'static str, u64)>,
}

/// The counters as read at one scrape, encoded by prometheus-client.
#[derive(Debug)]
struct MetricsSnapshot {
    connections: u64,
    /// (name without `_total`, help, value) of the plain counters.
    counters: Vec<(&'static str, &'static str, u64)>,
    families: Vec<CounterFamily>,
}

impl prometheus_client::collector::Collector for MetricsSnapshot {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let gauge = ConstGauge::new(self.connections);
        gauge.encode(encoder.encode_descriptor(
            "masq_relay_connections",
            "Live authenticated connections.",
            None,
            gauge.metric_type(),
        )?)?;
        for (name, help, value) in &self.counters {
            let counter = ConstCounter::new(*value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        for f in &self.families {
            let mut family = encoder.encode_descriptor(
                f.name,
                f.help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (label_value, value) in &f.values {
                let labels = [(f.label, *label_value)];
                ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// The OpenMetrics text format ([`METRICS_CONTENT_TYPE`]), as
    /// prometheus-client writes it.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let snapshot = MetricsSnapshot {
            connections: self.connections.load(Ordering::Relaxed) as u64,
            counters: vec![
                (
                    "masq_relay_connections_accepted",
                    "Connections accepted since start.",
                    g(&self.connections_total),
                ),
                ("masq_relay_messages", "Payloads forwarded.", g(&self.messages_forwarded)),
                ("masq_relay_bytes", "Payload bytes forwarded.", g(&self.bytes_forwarded)),
            ],
            families: vec![
                CounterFamily {
                    name: "masq_relay_cluster_messages",
                    help: "Messages handed to other nodes (sent) and from them to devices here (delivered).",
                    label: "direction",
                    values: vec![("sent", g(&self.cluster_sent)), ("delivered", g(&self.cluster_delivered))],
                },
                CounterFamily {
                    name: "masq_relay_drops",
                    help: "Messages and connections refused, by reason.",
                    label: "reason",
                    values: vec![
                        ("offline", g(&self.drops_offline)),
                        ("to_self", g(&self.drops_to_self)),
                        ("rate_limited", g(&self.drops_rate_limited)),
                        ("not_allowed", g(&self.drops_not_allowed)),
                        ("recipient_busy", g(&self.drops_recipient_busy)),
                        ("too_slow", g(&self.drops_too_slow)),
                        ("bad_frame", g(&self.drops_bad_frame)),
                        ("auth_failed", g(&self.drops_auth_failed)),
                    ],
                },
            ],
        };
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(snapshot));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Asks a connection's tasks to stop, with a close code and reason.
#[derive(Default)]
struct Kill {
    notify: Notify,
    reason: Mutex<Option<(u16, String)>>,
}

impl Kill {
    fn kill(&self, code: u16, reason: &str) {
        if let Ok(mut r) = self.reason.lock() {
            if r.is_none() {
                *r = Some((code, reason.to_string()));
            }
        }
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
    fn reason(&self) -> Option<(u16, String)> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
}

/// One item of a connection's queue: a frame, and the device whose message
/// it carries (counted against that sender's share until written).
struct Out {
    frame: Vec<u8>,
    from: Option<DeviceId>,
}

/// Others' messages queued for one connection, per sender.
#[derive(Default)]
struct Inbox {
    /// sender → (frames, bytes) queued.
    by_sender: HashMap<DeviceId, (usize, usize)>,
    /// Frames of others' messages queued (the sum over `by_sender`).
    frames: usize,
}

/// Presence for one connection: the latest state of each watched device not
/// yet written, instead of one queued frame per change, so its size is
/// bounded by the watch list ([`MAX_WATCH_IDS`]) whatever the churn.
#[derive(Default)]
struct PresenceOut {
    /// The devices this connection watches.
    watching: Mutex<HashSet<DeviceId>>,
    /// device → (went offline since last written, online now).
    pending: Mutex<HashMap<DeviceId, (bool, bool)>>,
    /// Wakes the writer.
    notify: Notify,
}

impl PresenceOut {
    /// Replaces the watch list; forgets pending states of unwatched devices.
    fn watch(&self, ids: &[DeviceId]) {
        let set: HashSet<DeviceId> = ids.iter().copied().collect();
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|id, _| set.contains(id));
        }
        if let Ok(mut w) = self.watching.lock() {
            *w = set;
        }
    }

    /// Records a presence state for the writer (only for watched devices).
    /// An offline followed by an online before the writer ran is written as
    /// both, so the watcher still sees that the device reconnected.
    fn set(&self, id: DeviceId, online: bool) {
        let watched = self
            .watching
            .lock()
            .map(|w| w.contains(&id))
            .unwrap_or(false);
        if !watched {
            return;
        }
        if let Ok(mut p) = self.pending.lock() {
            let e = p.entry(id).or_insert((false, online));
            *e = (e.0 || !e.1, online);
        }
        self.notify.notify_one();
    }

    /// The frames to write now, emptying the pending states.
    fn take_frames(&self) -> Vec<Vec<u8>> {
        let pending: Vec<(DeviceId, (bool, bool))> = match self.pending.lock() {
            Ok(mut p) => p.drain().collect(),
            Err(_) => return Vec::new(),
        };
        let mut out = Vec::with_capacity(pending.len());
        for (id, (went_offline, online)) in pending {
            if went_offline && online {
                out.push(Frame::Presence { id, online: false }.encode());
            }
            out.push(Frame::Presence { id, online }.encode());
        }
        out
    }
}

/// The sending side of one connection, as seen by others.
#[derive(Clone)]
struct Peer {
    /// Distinguishes this connection from a newer one of the same device.
    conn_id: u64,
    /// Bounded queue to the writer task.
    tx: mpsc::Sender<Out>,
    /// Bytes currently queued.
    queued: Arc<AtomicUsize>,
    /// Others' messages queued, per sender.
    inbox: Arc<Mutex<Inbox>>,
    /// Who may send to this connection (`Allow`); None: anyone.
    allow: Arc<Mutex<Option<HashSet<DeviceId>>>>,
    /// Presence states waiting to be written.
    presence: Arc<PresenceOut>,
    /// Stops the connection.
    kill: Arc<Kill>,
}

impl Peer {
    /// Queues a frame of the relay's own (an answer to this device); a full
    /// queue disconnects the device as too slow.
    fn push(&self, frame: Vec<u8>, metrics: &Metrics) -> bool {
        let len = frame.len();
        if self.queued.load(Ordering::Relaxed) + len > MAX_QUEUED_BYTES {
            metrics.drops_too_slow.fetch_add(1, Ordering::Relaxed);
            self.kill
                .kill(codes::TOO_SLOW, "too slow: outbound queue full");
            return false;
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        match self.tx.try_send(Out { frame, from: None }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                metrics.drops_too_slow.fetch_add(1, Ordering::Relaxed);
                self.kill
                    .kill(codes::TOO_SLOW, "too slow: outbound queue full");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                false
            }
        }
    }

    /// Queues a message from `from`, if this connection allows `from` and
    /// there is room in the queue and in `from`'s share of it. A refusal
    /// says why and costs the recipient nothing (it is never disconnected
    /// for others' messages).
    fn deliver(
        &self,
        from: DeviceId,
        frame: Vec<u8>,
        config: &RelayConfig,
    ) -> Result<(), UndeliverableReason> {
        let allowed = match self.allow.lock() {
            Ok(a) => a.as_ref().map(|set| set.contains(&from)).unwrap_or(true),
            Err(_) => false,
        };
        if !allowed {
            return Err(UndeliverableReason::NotAllowed);
        }
        let len = frame.len();
        let max_frames = config.outbound_queue_frames.max(1);
        let share_frames = (max_frames / SENDER_SHARE_DIVISOR).max(1);
        let byte_budget = MAX_QUEUED_BYTES - CONTROL_RESERVE_BYTES;
        let share_bytes = byte_budget / SENDER_SHARE_DIVISOR;
        let Ok(mut inbox) = self.inbox.lock() else {
            return Err(UndeliverableReason::RecipientBusy);
        };
        let (frames, bytes) = inbox.by_sender.get(&from).copied().unwrap_or((0, 0));
        if inbox.frames >= max_frames
            || frames >= share_frames
            || (bytes > 0 && bytes + len > share_bytes)
            || self.queued.load(Ordering::Relaxed) + len > byte_budget
        {
            return Err(UndeliverableReason::RecipientBusy);
        }
        // Counted before it is queued (the writer uncounts under this lock).
        inbox.by_sender.insert(from, (frames + 1, bytes + len));
        inbox.frames += 1;
        self.queued.fetch_add(len, Ordering::Relaxed);
        let refused = match self.tx.try_send(Out {
            frame,
            from: Some(from),
        }) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => UndeliverableReason::RecipientBusy,
            Err(mpsc::error::TrySendError::Closed(_)) => UndeliverableReason::Offline,
        };
        self.queued.fetch_sub(len, Ordering::Relaxed);
        inbox.frames -= 1;
        if frames == 0 {
            inbox.by_sender.remove(&from);
        } else {
            inbox.by_sender.insert(from, (frames, bytes));
        }
        Err(refused)
    }

    /// The writer took `out` off the queue.
    fn dequeued(&self, out: &Out) {
        self.queued.fetch_sub(out.frame.len(), Ordering::Relaxed);
        let Some(from) = out.from else { return };
        if let Ok(mut inbox) = self.inbox.lock() {
            inbox.frames = inbox.frames.saturating_sub(1);
            if let Some(e) = inbox.by_sender.get_mut(&from) {
                e.0 = e.0.saturating_sub(1);
                e.1 = e.1.saturating_sub(out.frame.len());
                if e.0 == 0 {
                    inbox.by_sender.remove(&from);
                }
            }
        }
    }
}

/// Counts a refused send in the metrics.
fn count_refusal(m: &Metrics, reason: UndeliverableReason) {
    let c = match reason {
        UndeliverableReason::Offline => &m.drops_offline,
        UndeliverableReason::ToSelf => &m.drops_to_self,
        UndeliverableReason::RateLimited => &m.drops_rate_limited,
        UndeliverableReason::NotAllowed => &m.drops_not_allowed,
        UndeliverableReason::RecipientBusy => &m.drops_recipient_busy,
    };
    c.fetch_add(1, Ordering::Relaxed);
}

/// This connection's challenge: rendezvous joins prove slot keys over it.
struct Challenge {
    secret: StaticSecret,
    public: [u8; 32],
    nonce: [u8; 32],
}

impl Challenge {
    /// Checks a rendezvous join's proof; returns the slot id it may join.
    fn verify_slot(&self, slot_public: &[u8; 32], proof: &[u8; 32]) -> Result<[u8; 32], String> {
        let dh = masq_core::crypto::contributory_dh(&self.secret, &PublicKey::from(*slot_public))
            .map_err(|e| format!("rendezvous refused: {e}"))?;
        let expected = blake3::Hash::from(slot_proof(&dh, &self.nonce, &self.public, slot_public));
        // blake3::Hash equality is constant-time.
        if expected != blake3::Hash::from(*proof) {
            return Err("rendezvous refused: the slot key proof does not verify".into());
        }
        Ok(masq_core::crypto::pairing::slot_id_of_public(slot_public))
    }
}

/// A pairing rendezvous slot.
struct Slot {
    created: Instant,
    members: Vec<Peer>,
    /// Two members have met; no one else may join.
    sealed: bool,
}

/// Shared relay state.
struct Hub {
    config: RelayConfig,
    conns: Mutex<HashMap<DeviceId, Peer>>,
    /// target → connections watching it (device, conn_id).
    watchers: Mutex<HashMap<DeviceId, HashSet<(DeviceId, u64)>>>,
    slots: Mutex<HashMap<[u8; 32], Slot>>,
    metrics: Arc<Metrics>,
    next_conn: AtomicU64,
    open_sockets: AtomicUsize,
    /// Cancelled once, when the relay shuts down: every task of the relay
    /// watches it (the one way to stop).
    shutdown: CancellationToken,
    /// The link to the other nodes (`--cluster`), if any.
    cluster: Option<Cluster>,
}

/// A running relay. Dropping it stops accepting; [`shutdown`](Self::shutdown)
/// also closes every connection with a reason.
pub struct RelayHandle {
    addr: SocketAddr,
    /// The relay's shutdown token (see `Hub::shutdown`).
    shutdown: CancellationToken,
    /// Owns the relay's long-lived tasks (accept loop, cluster events), so
    /// shutdown can wait for them; connection tasks are owned by the accept
    /// loop's `JoinSet` and end with it.
    tasks: TaskTracker,
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
        let _ = tokio::time::timeout(super::config::SHUTDOWN_WAIT, self.tasks.wait()).await;
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
    let hub = Arc::new(Hub {
        config,
        conns: Mutex::new(HashMap::new()),
        watchers: Mutex::new(HashMap::new()),
        slots: Mutex::new(HashMap::new()),
        metrics: metrics.clone(),
        next_conn: AtomicU64::new(1),
        open_sockets: AtomicUsize::new(0),
        shutdown: shutdown.clone(),
        cluster,
    });
    if let Some(inbound) = inbound {
        tasks.spawn(apply_cluster_events(hub.clone(), inbound));
    }
    tasks.spawn(accept_loop(listener, hub));
    tracing::info!(%addr, "relay listening");
    Ok(RelayHandle {
        addr,
        shutdown,
        tasks,
        metrics,
    })
}

async fn accept_loop(listener: TcpListener, hub: Arc<Hub>) {
    let shutdown = hub.shutdown.clone();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) if crate::http_head::is_resource_exhaustion(&e) => {
                        tracing::warn!("relay accept failed ({e}); pausing {:?}", super::config::ACCEPT_ERROR_BACKOFF);
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(super::config::ACCEPT_ERROR_BACKOFF) => {}
                        }
                        continue;
                    }
                    // A connection that died before we took it: nothing to do.
                    Err(_) => continue,
                };
                let _ = stream.set_nodelay(true);
                let hub = hub.clone();
                match hub.config.tls.clone() {
                    None => {
                        conns.spawn(async move { handle_socket(stream, hub).await });
                    }
                    Some(tls) => {
                        conns.spawn(async move {
                            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                            let handshake = tokio::time::timeout(hub.config.handshake_timeout, acceptor.accept(stream));
                            if let Ok(Ok(tls_stream)) = handshake.await {
                                handle_socket(tls_stream, hub).await;
                            }
                        });
                    }
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Let connections send their close frames.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

/// Decrements the open-socket count when a socket's handler ends.
struct SocketGuard(Arc<Hub>);
impl Drop for SocketGuard {
    fn drop(&mut self) {
        self.0.open_sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn handle_socket<S>(mut stream: S, hub: Arc<Hub>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let open = hub.open_sockets.fetch_add(1, Ordering::Relaxed) + 1;
    let _guard = SocketGuard(hub.clone());
    // Read the request head (bounded, with the handshake timeout).
    let Some(head) = read_head(
        &mut stream,
        MAX_HTTP_HEAD_BYTES,
        hub.config.handshake_timeout,
    )
    .await
    else {
        return;
    };
    if head.method == "GET" && !head.is_websocket() {
        let (status, body, ctype) = match head.path() {
            "/healthz" => ("200 OK", "ok\n".to_string(), "text/plain"),
            "/metrics" => ("200 OK", hub.metrics.render(), METRICS_CONTENT_TYPE),
            _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
        };
        respond(&mut stream, status, ctype, "", body.as_bytes()).await;
        return;
    }
    if open > hub.config.max_connections {
        respond(
            &mut stream,
            "503 Service Unavailable",
            "text/plain",
            "",
            b"",
        )
        .await;
        return;
    }
    let prefixed = Prefixed::new(head.raw, stream);
    let ws =
        match tokio_tungstenite::accept_async_with_config(prefixed, Some(hub.config.websocket()))
            .await
        {
            Ok(ws) => ws,
            Err(_) => return,
        };
    hub.metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    run_connection(ws, hub).await;
}

type Ws<S> = tokio_tungstenite::WebSocketStream<Prefixed<S>>;

/// Writes one message within [`WRITE_TIMEOUT`]; false if the connection is
/// done (a timeout also kills it as too slow).
async fn write_frame<K>(sink: &mut K, msg: Message, kill: &Kill) -> bool
where
    K: futures::Sink<Message> + Unpin,
{
    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            kill.kill(codes::TOO_SLOW, "write timed out");
            false
        }
    }
}

/// A close frame: code 0 is a normal close (1000), others are 4000 + [`codes`] value.
fn close_msg(code: u16, reason: &str) -> Message {
    let code = if code == 0 { 1000 } else { 4000 + code };
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    }))
}

/// Challenge, authenticate, then serve the connection until it ends.
async fn run_connection<S>(ws: Ws<S>, hub: Arc<Hub>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    // Authenticate.
    let relay_secret = StaticSecret::from(*random_bytes::<32>());
    let relay_public = PublicKey::from(&relay_secret);
    let nonce = *random_bytes::<32>();
    if sink
        .send(Message::Binary(
            Frame::Challenge {
                relay_public: *relay_public.as_bytes(),
                nonce,
            }
            .encode()
            .into(),
        ))
        .await
        .is_err()
    {
        return;
    }
    let auth = tokio::time::timeout(hub.config.handshake_timeout, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Binary(b))) => return Some(Frame::decode(&b)),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                _ => return None,
            }
        }
    })
    .await;
    let device = match auth {
        Err(_) => {
            let _ = sink
                .send(close_msg(
                    codes::HANDSHAKE_TIMEOUT,
                    "authentication timed out",
                ))
                .await;
            return;
        }
        Ok(None) => return,
        Ok(Some(Ok(Frame::Auth { public, proof }))) => {
            let device_public = PublicKey::from(public);
            let shared = relay_secret.diffie_hellman(&device_public);
            // A low-order key makes the DH all zero: the proof would be
            // computable from public values alone.
            if !shared.was_contributory() {
                hub.metrics
                    .drops_auth_failed
                    .fetch_add(1, Ordering::Relaxed);
                let msg = "authentication refused: low-order public key";
                let _ = sink
                    .send(Message::Binary(
                        Frame::Error {
                            code: codes::LOW_ORDER_KEY,
                            message: msg.into(),
                        }
                        .encode()
                        .into(),
                    ))
                    .await;
                let _ = sink.send(close_msg(codes::LOW_ORDER_KEY, msg)).await;
                return;
            }
            let expected = blake3::Hash::from(auth_proof(
                shared.as_bytes(),
                &nonce,
                relay_public.as_bytes(),
                &public,
            ));
            // blake3::Hash equality is constant-time.
            if expected != blake3::Hash::from(proof) {
                hub.metrics
                    .drops_auth_failed
                    .fetch_add(1, Ordering::Relaxed);
                let _ = sink
                    .send(Message::Binary(
                        Frame::Error {
                            code: codes::AUTH_FAILED,
                            message: "authentication failed".into(),
                        }
                        .encode()
                        .into(),
                    ))
                    .await;
                let _ = sink
                    .send(close_msg(codes::AUTH_FAILED, "authentication failed"))
                    .await;
                return;
            }
            DeviceId::from_public(&device_public)
        }
        Ok(Some(Ok(_))) => {
            hub.metrics.drops_bad_frame.fetch_add(1, Ordering::Relaxed);
            let _ = sink
                .send(Message::Binary(
                    Frame::Error {
                        code: codes::NOT_AUTHENTICATED,
                        message: "authenticate first".into(),
                    }
                    .encode()
                    .into(),
                ))
                .await;
            let _ = sink
                .send(close_msg(codes::NOT_AUTHENTICATED, "authenticate first"))
                .await;
            return;
        }
        Ok(Some(Err(e))) => {
            hub.metrics.drops_bad_frame.fetch_add(1, Ordering::Relaxed);
            let _ = sink
                .send(close_msg(codes::BAD_FRAME, &format!("bad frame: {e}")))
                .await;
            return;
        }
    };
    // Register, replacing an older connection of the same device.
    let conn_id = hub.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) =
        mpsc::channel::<Out>(hub.config.outbound_queue_frames.max(1) + CONTROL_RESERVE_FRAMES);
    let me = Peer {
        conn_id,
        tx,
        queued: Arc::new(AtomicUsize::new(0)),
        inbox: Arc::default(),
        allow: Arc::default(),
        presence: Arc::default(),
        kill: Arc::new(Kill::default()),
    };
    let challenge = Challenge {
        secret: relay_secret,
        public: *relay_public.as_bytes(),
        nonce,
    };
    // `AuthOk` is queued first, before the connection is in the table (so no
    // frame for the device can go ahead of it), and written by the writer
    // task, which starts after registration: a device that has seen `AuthOk`
    // can be reached, so a message sent to it right after is never reported
    // undeliverable.
    me.push(Frame::AuthOk(device).encode(), &hub.metrics);
    let replaced = hub
        .conns
        .lock()
        .ok()
        .and_then(|mut c| c.insert(device, me.clone()));
    if let Some(old) = replaced {
        old.kill.kill(
            codes::REPLACED,
            "replaced by a newer connection of this device",
        );
    } else {
        hub.metrics.connections.fetch_add(1, Ordering::Relaxed);
    }
    tracing::debug!(device = %device.fingerprint(), "device connected");
    notify_presence(&hub, device, true);
    if let Some(c) = &hub.cluster {
        // Hold the writer (and so `AuthOk`) until other nodes can reach the
        // device too. If Redis does not confirm in time, go on: the device
        // is reachable on this node, and the cluster logs its trouble.
        let reachable = c.device_connected(device);
        let _ = tokio::time::timeout(CLUSTER_SUBSCRIBE_WAIT, reachable).await;
    }

    // Writer task: drains the bounded queue, then pending presence; stops
    // on kill. Biased: `AuthOk`, queued first, is written first.
    let kill = me.kill.clone();
    let owner = me.clone();
    let ping_interval = hub.config.ping_interval;
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(ping_interval);
        ping.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = kill.notify.notified() => break,
                out = rx.recv() => {
                    let Some(out) = out else { break };
                    owner.dequeued(&out);
                    if !write_frame(&mut sink, Message::Binary(out.frame.into()), &kill).await {
                        break;
                    }
                }
                _ = owner.presence.notify.notified() => {
                    let mut ok = true;
                    for frame in owner.presence.take_frames() {
                        ok = write_frame(&mut sink, Message::Binary(frame.into()), &kill).await;
                        if !ok {
                            break;
                        }
                    }
                    if !ok {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if !write_frame(&mut sink, Message::Ping(Vec::new().into()), &kill).await {
                        break;
                    }
                }
            }
        }
        if let Some((code, reason)) = kill.reason() {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                sink.send(close_msg(code, &reason)),
            )
            .await;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sink.close()).await;
    });

    // Reader: this task.
    let shutdown = hub.shutdown.clone();
    let mut bucket = TokenBucket::new(hub.config.rate_per_sec, hub.config.rate_burst);
    let mut slot: Option<[u8; 32]> = None;
    let idle = hub.config.idle_timeout;
    loop {
        let next = tokio::select! {
            _ = me.kill.notify.notified() => break,
            _ = shutdown.cancelled() => { me.kill.kill(codes::SHUTDOWN, "relay shutting down"); break; }
            n = tokio::time::timeout(idle, stream.next()) => n,
        };
        let msg = match next {
            Err(_) => {
                me.kill.kill(codes::IDLE, "idle timeout");
                break;
            }
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Binary(b) => match Frame::decode(&b) {
                Ok(frame) => {
                    let mut remote = None;
                    handle_frame(
                        &hub,
                        &me,
                        device,
                        &challenge,
                        frame,
                        &mut bucket,
                        &mut slot,
                        &mut remote,
                    );
                    // A message for another node waits here for room in the
                    // queue to Redis: the device is not read meanwhile.
                    if let (Some(send), Some(c)) = (remote, &hub.cluster) {
                        c.send_to_device(send).await;
                    }
                }
                Err(e) => {
                    hub.metrics.drops_bad_frame.fetch_add(1, Ordering::Relaxed);
                    me.push(
                        Frame::Error {
                            code: codes::BAD_FRAME,
                            message: format!("bad frame: {e}"),
                        }
                        .encode(),
                        &hub.metrics,
                    );
                }
            },
            Message::Text(_) => {
                hub.metrics.drops_bad_frame.fetch_add(1, Ordering::Relaxed);
                me.push(
                    Frame::Error {
                        code: codes::BAD_FRAME,
                        message: "text frames are not accepted".into(),
                    }
                    .encode(),
                    &hub.metrics,
                );
            }
            Message::Close(_) => break,
            _ => {}
        }
        if me.kill.reason().is_some() {
            break;
        }
    }
    me.kill.kill(0, "bye");
    let _ = writer.await;

    // Unregister (only if not already replaced by a newer connection).
    let removed = match hub.conns.lock() {
        Ok(mut c) => {
            if c.get(&device)
                .map(|p| p.conn_id == conn_id)
                .unwrap_or(false)
            {
                c.remove(&device);
                true
            } else {
                false
            }
        }
        Err(_) => false,
    };
    if removed {
        hub.metrics.connections.fetch_sub(1, Ordering::Relaxed);
        // Replaced by a connection on another node: still online for watchers.
        let moved = me.kill.reason().map(|(c, _)| c) == Some(codes::REPLACED);
        if !moved {
            notify_presence(&hub, device, false);
        }
        if let Some(c) = &hub.cluster {
            c.device_disconnected(device, moved);
        }
    }
    if let Some(c) = &hub.cluster {
        c.rendezvous_leave(device, conn_id);
    }
    if let Ok(mut w) = hub.watchers.lock() {
        for set in w.values_mut() {
            set.remove(&(device, conn_id));
        }
        w.retain(|_, s| !s.is_empty());
    }
    if let Some(s) = slot {
        leave_slot(&hub, s, conn_id);
    }
    tracing::debug!(device = %device.fingerprint(), "device disconnected");
}

fn notify_presence(hub: &Hub, device: DeviceId, online: bool) {
    let watchers: Vec<(DeviceId, u64)> = match hub.watchers.lock() {
        Ok(w) => w
            .get(&device)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default(),
        Err(_) => return,
    };
    let conns = match hub.conns.lock() {
        Ok(c) => watchers
            .iter()
            .filter_map(|(d, cid)| c.get(d).filter(|p| p.conn_id == *cid).cloned())
            .collect::<Vec<_>>(),
        Err(_) => return,
    };
    for p in conns {
        p.presence.set(device, online);
    }
}

#[allow(clippy::too_many_arguments)]
fn handle_frame(
    hub: &Hub,
    me: &Peer,
    device: DeviceId,
    challenge: &Challenge,
    frame: Frame,
    bucket: &mut TokenBucket,
    slot: &mut Option<[u8; 32]>,
    remote: &mut Option<RemoteSend>,
) {
    let m = &hub.metrics;
    let error = |code: u16, message: String| {
        me.push(Frame::Error { code, message }.encode(), m);
    };
    match frame {
        Frame::Send {
            msg_id,
            to,
            payload,
        } => {
            let refuse = |reason: UndeliverableReason| {
                count_refusal(m, reason);
                me.push(Frame::Undeliverable { msg_id, to, reason }.encode(), m);
            };
            if !bucket.take() {
                return refuse(UndeliverableReason::RateLimited);
            }
            if to == device {
                return refuse(UndeliverableReason::ToSelf);
            }
            let target = hub.conns.lock().ok().and_then(|c| c.get(&to).cloned());
            match target {
                None if hub.cluster.is_some() => {
                    m.cluster_sent.fetch_add(1, Ordering::Relaxed);
                    *remote = Some(RemoteSend {
                        to,
                        from: device,
                        msg_id,
                        frame: Frame::Deliver {
                            from: device,
                            payload,
                        }
                        .encode(),
                        if_offline: Inbound::ToConn {
                            device,
                            conn_id: me.conn_id,
                            frame: Frame::Undeliverable {
                                msg_id,
                                to,
                                reason: UndeliverableReason::Offline,
                            }
                            .encode(),
                        },
                    });
                }
                None => refuse(UndeliverableReason::Offline),
                Some(t) => {
                    let len = payload.len() as u64;
                    let frame = Frame::Deliver {
                        from: device,
                        payload,
                    }
                    .encode();
                    match t.deliver(device, frame, &hub.config) {
                        Ok(()) => {
                            m.messages_forwarded.fetch_add(1, Ordering::Relaxed);
                            m.bytes_forwarded.fetch_add(len, Ordering::Relaxed);
                        }
                        Err(reason) => refuse(reason),
                    }
                }
            }
        }
        Frame::Subscribe(ids) => {
            if ids.len() > MAX_WATCH_IDS {
                m.drops_bad_frame.fetch_add(1, Ordering::Relaxed);
                return error(
                    codes::TOO_MANY_WATCHED,
                    format!(
                        "watch list too long: {} devices, at most {MAX_WATCH_IDS}; the previous list stays",
                        ids.len()
                    ),
                );
            }
            let key = (device, me.conn_id);
            if let Ok(mut w) = hub.watchers.lock() {
                for set in w.values_mut() {
                    set.remove(&key);
                }
                for id in &ids {
                    w.entry(*id).or_default().insert(key);
                }
                w.retain(|_, s| !s.is_empty());
            }
            me.presence.watch(&ids);
            let online: Vec<bool> = match hub.conns.lock() {
                Ok(c) => ids.iter().map(|id| c.contains_key(id)).collect(),
                Err(_) => return,
            };
            let mut elsewhere = Vec::new();
            for (id, on) in ids.into_iter().zip(online) {
                if !on && hub.cluster.is_some() {
                    elsewhere.push(id);
                } else {
                    me.presence.set(id, on);
                }
            }
            if let Some(c) = &hub.cluster {
                c.query_presence(device, me.conn_id, elsewhere);
            }
        }
        Frame::Allow(ids) => {
            if ids.len() > MAX_ALLOW_IDS {
                m.drops_bad_frame.fetch_add(1, Ordering::Relaxed);
                return error(
                    codes::TOO_MANY_ALLOWED,
                    format!(
                        "allow list too long: {} devices, at most {MAX_ALLOW_IDS}; the previous list stays",
                        ids.len()
                    ),
                );
            }
            if let Ok(mut a) = me.allow.lock() {
                *a = Some(ids.into_iter().collect());
            }
        }
        Frame::RendezvousJoin { slot_public, proof } => {
            let s = match challenge.verify_slot(&slot_public, &proof) {
                Ok(s) => s,
                Err(msg) => {
                    m.drops_bad_frame.fetch_add(1, Ordering::Relaxed);
                    return error(codes::RENDEZVOUS_AUTH_FAILED, msg);
                }
            };
            if let Some(c) = &hub.cluster {
                if slot.is_some() {
                    return error(
                        codes::RENDEZVOUS_REFUSED,
                        "rendezvous slot is full or already used".into(),
                    );
                }
                *slot = Some(s);
                c.rendezvous_join(device, me.conn_id, s, hub.config.rendezvous_ttl);
                return;
            }
            let ttl = hub.config.rendezvous_ttl;
            let mut refused = None;
            let mut other = None;
            if let Ok(mut slots) = hub.slots.lock() {
                slots.retain(|_, sl| sl.created.elapsed() < ttl);
                let entry = slots.entry(s).or_insert_with(|| Slot {
                    created: Instant::now(),
                    members: Vec::new(),
                    sealed: false,
                });
                if entry.sealed || entry.members.len() >= 2 || slot.is_some() {
                    refused = Some("rendezvous slot is full or already used");
                } else {
                    entry.members.push(me.clone());
                    if entry.members.len() == 2 {
                        entry.sealed = true;
                        other = entry.members.first().cloned();
                    }
                }
            }
            if let Some(msg) = refused {
                return error(codes::RENDEZVOUS_REFUSED, msg.into());
            }
            *slot = Some(s);
            if let Some(o) = other {
                o.push(Frame::RendezvousPeer { joined: true }.encode(), m);
                me.push(Frame::RendezvousPeer { joined: true }.encode(), m);
            }
        }
        Frame::RendezvousSend(payload) if hub.cluster.is_some() => match (*slot, &hub.cluster) {
            (Some(s), Some(c)) => c.rendezvous_send(me.conn_id, s, payload),
            _ => error(
                codes::NO_RENDEZVOUS,
                "no one else in the rendezvous slot".into(),
            ),
        },
        Frame::RendezvousSend(payload) => {
            let other = slot.and_then(|s| {
                hub.slots.lock().ok().and_then(|slots| {
                    slots
                        .get(&s)
                        .and_then(|sl| sl.members.iter().find(|p| p.conn_id != me.conn_id).cloned())
                })
            });
            match other {
                Some(o) => {
                    o.push(Frame::RendezvousData(payload).encode(), m);
                }
                None => error(
                    codes::NO_RENDEZVOUS,
                    "no one else in the rendezvous slot".into(),
                ),
            }
        }
        _ => {
            m.drops_bad_frame.fetch_add(1, Ordering::Relaxed);
            error(
                codes::UNEXPECTED_FRAME,
                "frame type not accepted from devices".into(),
            );
        }
    }
}

fn leave_slot(hub: &Hub, s: [u8; 32], conn_id: u64) {
    let others: Vec<Peer> = match hub.slots.lock() {
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
        o.push(
            Frame::RendezvousPeer { joined: false }.encode(),
            &hub.metrics,
        );
    }
}

/// Applies what the cluster says to this node's connections.
async fn apply_cluster_events(hub: Arc<Hub>, mut events: mpsc::Receiver<Inbound>) {
    loop {
        let ev = tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            ev = events.recv() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        let m = &hub.metrics;
        let conn_of = |d: &DeviceId| hub.conns.lock().ok().and_then(|c| c.get(d).cloned());
        match ev {
            Inbound::ToDevice { device, frame } => {
                if let Some(p) = conn_of(&device) {
                    p.push(frame, m);
                }
            }
            Inbound::Deliver {
                device,
                from,
                msg_id,
                frame,
            } => {
                // The recipient's node applies its allow list and queue
                // shares, and answers a refusal to the sender's node.
                let len = frame.len() as u64;
                // Not here (any more): the node that holds it now got the
                // same publish; the sender heard "offline" if none did.
                let Some(p) = conn_of(&device) else { continue };
                let result = p.deliver(from, frame, &hub.config);
                match result {
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
            Inbound::ToConn {
                device,
                conn_id,
                frame,
            } => {
                if let Some(p) = conn_of(&device).filter(|p| p.conn_id == conn_id) {
                    p.push(frame, m);
                }
            }
            Inbound::PresenceTo {
                device,
                conn_id,
                id,
                online,
            } => {
                if let Some(p) = conn_of(&device).filter(|p| p.conn_id == conn_id) {
                    p.presence.set(id, online);
                }
            }
            Inbound::Claimed(device) => {
                if let Some(p) = conn_of(&device) {
                    p.kill.kill(
                        codes::REPLACED,
                        "replaced by a newer connection of this device (on another relay node)",
                    );
                }
            }
            Inbound::Presence { device, online } => notify_presence(&hub, device, online),
        }
    }
}
