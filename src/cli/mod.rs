//! The `masq` command line: parses arguments (clap) and calls the library.
//!
//! Output is made for scripts: values go to stdout alone, messages to stderr.
//! Exit codes: 0 success, 1 "not found" (e.g. `kv get` of an absent key),
//! 2 any other error (one line on stderr).

mod backend;
mod local;
mod relay_cmd;
mod sync_cmds;

pub use backend::Backend;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::storage::Durability;

/// masq: local-first, end-to-end encrypted replicated document store.
#[derive(Debug, Parser)]
#[command(name = "masq", version, about)]
pub struct Cli {
    /// Data directory (default: $MASQ_DATA, else the platform data dir + /masq).
    #[arg(long, global = true, env = "MASQ_DATA")]
    pub data: Option<PathBuf>,
    /// When writes are acknowledged: fsync (default) or buffered.
    #[arg(long, global = true, default_value = "fsync")]
    pub durability: Durability,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Key-value API.
    #[command(subcommand)]
    Kv(local::KvCmd),
    /// Document API.
    #[command(subcommand)]
    Doc(local::DocCmd),
    /// Pair this device with another one.
    #[command(subcommand)]
    Pair(sync_cmds::PairCmd),
    /// This device and its paired devices.
    #[command(subcommand)]
    Devices(sync_cmds::DevicesCmd),
    /// Relay, devices, and documents not yet acknowledged by each device (JSON).
    Status,
    /// Sync preferences: which app syncs with which device, pause and
    /// resume (this store's own choices; JSON).
    #[command(subcommand)]
    Sync(sync_cmds::SyncCmd),
    /// Apps allowed to use the store (browser origins, native apps).
    #[command(subcommand)]
    Apps(sync_cmds::AppsCmd),
    /// Run the store daemon: serve local apps, sync with paired devices.
    Store {
        /// Where apps connect (loopback only).
        #[arg(long, default_value = crate::service::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// Relay URL (remembered; default: the one used when pairing).
        #[arg(long)]
        relay: Option<String>,
        /// Requests per second one app may send over all its connections;
        /// faster apps are slowed down, not refused.
        #[arg(long, default_value_t = crate::service::app_limits::APP_REQUESTS_PER_SEC)]
        app_rate: u32,
    },
    /// Print (or open) a link to the running store's manager page. The link
    /// carries a single-use login code (not the admin token): it lets one
    /// page in, once, within 2 minutes.
    Manager {
        /// Also open it with $MASQ_BROWSER, else $BROWSER, else the default
        /// browser (xdg-open / open).
        #[arg(long)]
        open: bool,
    },
    /// Run the blind relay.
    Relay(relay_cmd::RelayArgs),
    /// A relay and two stores in one process: pair, edit, converge.
    Demo,
    /// Benchmarks (see docs/performance.md).
    #[command(subcommand)]
    Bench(crate::bench::BenchCmd),
}

/// Resolves the data directory (masq-store's rule).
pub fn data_dir(cli_value: Option<PathBuf>) -> PathBuf {
    masq_store::storage::data_dir::location(cli_value)
}

/// A CLI failure: message for stderr and exit code.
#[derive(Debug)]
pub struct CliError {
    /// Exit code (1 not found, 2 other).
    pub code: u8,
    /// One-line message.
    pub message: String,
}

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError {
            code: 2,
            message: e.to_string(),
        }
    }
}

fn run_async<F, E>(fut: F) -> Result<(), CliError>
where
    F: std::future::Future<Output = Result<(), E>>,
    E: Into<CliError>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(fut).map_err(Into::into)
}

/// Most open files a server command asks for.
///
/// Why: the soft limit is often 1024, below the store's own connection pools
/// (1024 apps + 64 admin + 64 pending) and far below a relay's connection cap,
/// so a local flood of idle sockets would exhaust descriptors before any pool
/// refused it. The hard limit is the ceiling; 65 536 is plenty for either.
pub const MAX_OPEN_FILES: u64 = 65_536;

/// Raises this process's soft limit of open files towards its hard limit
/// (at most [`MAX_OPEN_FILES`]), as servers do at start; never lowers it.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let want = lim.rlim_max.min(MAX_OPEN_FILES as libc::rlim_t);
        if lim.rlim_cur < want {
            lim.rlim_cur = want;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("could not raise the open-file limit to {want}");
            }
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // Every file this process creates (fjall's journals and tables, the
    // daemon file, exports into the data directory) is private to this
    // user, whatever umask the shell had: see `storage::data_dir`.
    // SAFETY: umask has no preconditions and cannot fail; it runs before any
    // other thread exists.
    unsafe {
        libc::umask(0o077);
    }
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("MASQ_LOG"))
        .with_writer(std::io::stderr)
        .try_init();
    let dir = data_dir(cli.data);
    let with_backend = |f: &dyn Fn(&Backend) -> Result<(), CliError>| {
        Backend::open(&dir, cli.durability).and_then(|b| {
            let done = f(&b);
            b.close();
            done
        })
    };
    let result = match cli.command {
        Command::Kv(cmd) => with_backend(&|b| local::kv(b, cmd.clone())),
        Command::Doc(cmd) => with_backend(&|b| local::doc(b, cmd.clone())),
        Command::Pair(cmd) => with_backend(&|b| sync_cmds::pair(b, cmd.clone())),
        Command::Devices(cmd) => with_backend(&|b| sync_cmds::devices(b, cmd.clone())),
        Command::Apps(cmd) => with_backend(&|b| sync_cmds::apps(b, cmd.clone())),
        Command::Status => with_backend(&sync_cmds::status),
        Command::Sync(cmd) => with_backend(&|b| sync_cmds::sync(b, cmd.clone())),
        Command::Store {
            listen,
            relay,
            app_rate,
        } => {
            raise_open_file_limit();
            sync_cmds::store_daemon(dir.clone(), cli.durability, listen, relay, app_rate)
        }
        Command::Manager { open } => sync_cmds::manager(&dir, open),
        Command::Relay(args) => {
            raise_open_file_limit();
            run_async(relay_cmd::run(args))
        }
        Command::Demo => run_async(async { crate::demo::run().await.map_err(CliError::from) }),
        Command::Bench(cmd) => run_async(crate::bench::run(cmd)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
