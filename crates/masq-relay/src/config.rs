//! Relay limits: every one a named constant with its reason, all overridable
//! through [`RelayConfig`] (and `masq relay --help`).

use std::net::SocketAddr;
use std::time::Duration;

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7071";
/// Largest WebSocket message (and frame) accepted: a sync envelope is at most
/// ~230 KiB (the engine fragments above 200 KiB), so 1 MiB leaves headroom while
/// keeping a hostile peer from making the relay buffer tungstenite's 64 MiB default.
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Messages from other devices queued for one connection (memory per
/// connection ≤ this × frame size). When they are queued, further sends to it
/// are refused at the sender (`Undeliverable` 3, recipient busy): a flood
/// never disconnects the recipient.
pub const OUTBOUND_QUEUE_FRAMES: usize = 256;
/// Bytes one connection may have queued (besides the frame count limit).
pub const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;
/// Of [`MAX_QUEUED_BYTES`], what others' messages can never take: room for
/// the relay's own answers to the device (a rendezvous frame is up to 1 MiB).
pub const CONTROL_RESERVE_BYTES: usize = 1024 * 1024;
/// Room in each connection's queue, beyond [`OUTBOUND_QUEUE_FRAMES`], for
/// what the relay itself answers (`Undeliverable`, `Error`, rendezvous
/// frames): others' messages can never fill it. A connection that lets its
/// own answers pile up past this is disconnected as too slow (code 5).
pub const CONTROL_RESERVE_FRAMES: usize = 64;
/// One sender may hold at most 1/this of a recipient's queue (frames and
/// bytes); past it, its further sends are refused as recipient busy, so one
/// flooding device leaves room for the recipient's other devices.
pub const SENDER_SHARE_DIVISOR: usize = 2;
/// Most devices one connection may watch (`Subscribe`). A user's devices
/// are a handful; the bound keeps the relay's watcher table and each
/// connection's presence state small. More is refused with `Error` 14.
pub const MAX_WATCH_IDS: usize = 1024;
/// Most devices one connection may allow to reach it (`Allow`): its group
/// of devices. More is refused with `Error` 15.
pub const MAX_ALLOW_IDS: usize = 1024;
/// tungstenite write buffer: flush threshold (its default, 128 KiB, would be
/// allocated per busy connection).
pub const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// tungstenite read buffer per connection (its default is 128 KiB, which made
/// 10k idle connections cost ~1.3 GB; frames larger than this still arrive,
/// the buffer grows for them and shrinks back).
pub const READ_BUFFER_BYTES: usize = 4 * 1024;
/// tungstenite write buffer hard cap (its default is unbounded).
pub const MAX_WRITE_BUFFER_BYTES: usize = 4 * MAX_FRAME_BYTES;
/// Sustained messages per second one device may send.
pub const RATE_PER_SEC: u32 = 2000;
/// Burst allowance above the sustained rate.
pub const RATE_BURST: u32 = 4000;
/// Most concurrent connections.
pub const MAX_CONNECTIONS: usize = 50_000;
/// How long `RelayHandle::shutdown` waits for the relay's tasks to end
/// after telling every connection the relay is shutting down.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// When the relay stops accepting, how long the accept loop waits for its
/// connections to end, so they can send their close frames: room for one
/// connection's whole close ([`CLOSE_FRAME_TIMEOUT`] then
/// [`SOCKET_CLOSE_TIMEOUT`], 2 s), and short of [`SHUTDOWN_WAIT`], so
/// `RelayHandle::shutdown` sees the accept loop end.
pub const CONNECTIONS_CLOSE_WAIT: Duration = Duration::from_secs(3);
/// How long a connection that is ending may take to write its close frame
/// (code and reason). Short: the connection is going anyway, and at
/// shutdown every connection closes at once.
pub const CLOSE_FRAME_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a connection that is ending may take to close its WebSocket
/// after the close frame (flush, closing handshake); short for the same
/// reason as [`CLOSE_FRAME_TIMEOUT`].
pub const SOCKET_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
// A connection's close fits in the accept loop's wait, which fits in shutdown's.
const _: () = assert!(
    CLOSE_FRAME_TIMEOUT.as_millis() + SOCKET_CLOSE_TIMEOUT.as_millis()
        < CONNECTIONS_CLOSE_WAIT.as_millis()
        && CONNECTIONS_CLOSE_WAIT.as_millis() < SHUTDOWN_WAIT.as_millis()
);
/// Time allowed from TCP accept to successful authentication.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that sends nothing (not even a pong) for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the relay pings each connection.
pub const PING_INTERVAL: Duration = Duration::from_secs(30);
/// How long a single WebSocket write may take before the receiver counts as stuck.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// In a cluster, how long a new connection's `AuthOk` waits for Redis to
/// confirm the device's channel subscription (so other nodes can reach it).
pub const CLUSTER_SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// How long a rendezvous slot lives (an invite is valid this long).
pub const RENDEZVOUS_TTL: Duration = Duration::from_secs(600);
/// How long the accept loop pauses when `accept` fails for want of a
/// resource (descriptors, memory): retrying at once would spin a core
/// while nothing can be accepted anyway; connections already open keep
/// being served meanwhile.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Longest HTTP request head read before deciding HTTP vs WebSocket.
pub const MAX_HTTP_HEAD_BYTES: usize = 8 * 1024;

/// The relay's configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// See [`MAX_FRAME_BYTES`].
    pub max_frame_bytes: usize,
    /// See [`OUTBOUND_QUEUE_FRAMES`].
    pub outbound_queue_frames: usize,
    /// See [`RATE_PER_SEC`].
    pub rate_per_sec: u32,
    /// See [`RATE_BURST`].
    pub rate_burst: u32,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// See [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`PING_INTERVAL`].
    pub ping_interval: Duration,
    /// See [`RENDEZVOUS_TTL`].
    pub rendezvous_ttl: Duration,
    /// TLS (wss://) when set; plain ws otherwise (the default, for loopback).
    /// Envelopes are sealed end to end either way; TLS hides the frame
    /// headers (device ids) from the network.
    pub tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Redis URL of the cluster this node belongs to (`--cluster`); None: a
    /// single relay.
    pub cluster: Option<String>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
            max_frame_bytes: MAX_FRAME_BYTES,
            outbound_queue_frames: OUTBOUND_QUEUE_FRAMES,
            rate_per_sec: RATE_PER_SEC,
            rate_burst: RATE_BURST,
            max_connections: MAX_CONNECTIONS,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            ping_interval: PING_INTERVAL,
            rendezvous_ttl: RENDEZVOUS_TTL,
            tls: None,
            cluster: None,
        }
    }
}

impl RelayConfig {
    /// A config listening on 127.0.0.1 with an OS-chosen port (tests, demo).
    pub fn loopback_any_port() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }

    /// The tungstenite limits for this config, all set explicitly.
    pub fn websocket(&self) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(self.max_frame_bytes))
            .max_frame_size(Some(self.max_frame_bytes))
            .read_buffer_size(READ_BUFFER_BYTES)
            .write_buffer_size(WRITE_BUFFER_BYTES)
            .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES.max(self.max_frame_bytes * 2))
    }
}

// The proofs a device (or a pairing connection) answers the relay's
// challenge with live in the core, so that every shell, the page's wasm
// build included, computes the same bytes.
pub use masq_core::crypto::relay_auth::{auth_proof, slot_proof, AUTH_CONTEXT, SLOT_CONTEXT};
