//! `masq bench ...`: end-to-end benchmarks that need real processes or sockets
//! (criterion benches in `benches/` cover the in-process parts). Each prints a
//! table (or `--json`) and reports ratios measured in the same run.

pub mod local;
pub mod peers;
pub mod relay;
pub mod store;
pub mod sync;

use clap::Subcommand;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Encrypted relayed sync between two stores vs in-process plaintext sync.
    Sync(sync::SyncBenchArgs),
    /// A store with many small documents: create, open, list, read, RSS.
    Store(store::StoreBenchArgs),
    /// Relay forwarding throughput and latency.
    Relay(relay::RelayBenchArgs),
    /// kv get/put over the app WebSocket API vs the embedded API.
    Local(local::LocalBenchArgs),
    /// The masq side of the automerge-repo comparison (benches/peers/run).
    Peers(peers::PeersBenchArgs),
}

/// Runs a benchmark command; a failure is its one-line message (the CLI
/// prints it and exits 2).
pub async fn run(cmd: BenchCmd) -> Result<(), String> {
    fn message(e: impl std::fmt::Display) -> String {
        e.to_string()
    }
    match cmd {
        BenchCmd::Sync(args) => sync::run(args).await.map(|_| ()).map_err(message),
        BenchCmd::Store(args) => tokio::task::block_in_place(|| store::run(args))
            .map(|_| ())
            .map_err(message),
        BenchCmd::Local(args) => local::run(args).await.map(|_| ()).map_err(message),
        BenchCmd::Peers(args) => peers::run(args).await.map(|_| ()).map_err(message),
        BenchCmd::Relay(args) => relay::run(args).await.map(|_| ()).map_err(message),
    }
}
