//! `masq relay`: runs the relay of `masq_relay` until SIGINT or SIGTERM.

use masq_relay::{config, start, tls, RelayConfig};

use std::net::SocketAddr;

/// `masq relay` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Address to listen on.
    #[arg(long, default_value = config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Largest frame in bytes.
    #[arg(long, default_value_t = config::MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,
    /// Others' messages queued per connection; past it senders are refused
    /// (recipient busy), each sender at most half of it.
    #[arg(long, default_value_t = config::OUTBOUND_QUEUE_FRAMES)]
    pub queue_frames: usize,
    /// Sustained messages per second per device.
    #[arg(long, default_value_t = config::RATE_PER_SEC)]
    pub rate: u32,
    /// Burst of messages per device.
    #[arg(long, default_value_t = config::RATE_BURST)]
    pub burst: u32,
    /// Most concurrent connections.
    #[arg(long, default_value_t = config::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds of silence before a connection is closed.
    #[arg(long, default_value_t = config::IDLE_TIMEOUT.as_secs())]
    pub idle_secs: u64,
    /// Serve wss://: PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Serve wss://: PEM private key (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Act as one node of a relay cluster sharing this Redis
    /// (`redis://HOST:PORT`): devices on different nodes reach each other.
    #[arg(long)]
    pub cluster: Option<String>,
}

impl From<RelayArgs> for RelayConfig {
    fn from(a: RelayArgs) -> Self {
        RelayConfig {
            listen: a.listen,
            max_frame_bytes: a.max_frame_bytes,
            outbound_queue_frames: a.queue_frames.max(1),
            rate_per_sec: a.rate,
            rate_burst: a.burst.max(1),
            max_connections: a.max_connections,
            idle_timeout: std::time::Duration::from_secs(a.idle_secs.max(1)),
            cluster: a.cluster,
            ..RelayConfig::default()
        }
    }
}

/// Runs the relay until SIGINT or SIGTERM, then closes every connection with a reason.
pub async fn run(args: RelayArgs) -> std::io::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls::server_config(c, k)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let handle = start(RelayConfig { tls, ..args.into() }).await?;
    eprintln!(
        "masq relay listening on {scheme}://{} (GET /healthz, /metrics)",
        handle.local_addr()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("masq relay: shutting down");
    handle.shutdown().await;
    Ok(())
}
