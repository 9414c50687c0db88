//! `masq bench store`: a store with many small documents — time to create them,
//! time to open the store again, time to read a sample, and RSS.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::doc::ChangeOp;
use crate::error::Result;
use crate::storage::Durability;
use crate::store::{Store, StoreOptions};

/// Arguments of `masq bench store`.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreBenchArgs {
    /// Documents to create.
    #[arg(long, default_value_t = 100_000)]
    pub docs: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Internal: only create the documents in this directory and exit (the
    /// benchmark runs creation in a child process so the RSS it reports is
    /// that of a freshly opened store).
    #[arg(long, hide = true)]
    pub create_only: Option<std::path::PathBuf>,
}

fn create(dir: &std::path::Path, n: usize, pb: &ProgressBar) -> Result<()> {
    let opts = StoreOptions {
        durability: Durability::Buffered,
        ..StoreOptions::default()
    };
    let store = Store::open_with(dir, opts)?;
    let docs = store.app("bench")?.docs();
    for i in 0..n {
        docs.create_with(
            &[ChangeOp::Put {
                path: "/i".into(),
                value: serde_json::json!(i),
            }],
            None,
        )?;
        if i % 1000 == 0 {
            pb.set_position(i as u64);
        }
    }
    store.db().persist_all()
}

/// Results.
#[derive(Debug, Clone, Serialize)]
pub struct StoreBenchReport {
    /// Documents.
    pub docs: usize,
    /// Seconds to create them (buffered durability).
    pub create_secs: f64,
    /// Seconds to open the store again.
    pub open_secs: f64,
    /// Seconds to list the app's documents after opening.
    pub list_secs: f64,
    /// Seconds to read 1000 documents spread over the store (cold).
    pub read_1000_secs: f64,
    /// RSS in MiB right after opening.
    pub rss_after_open_mib: f64,
    /// RSS in MiB after open + list + reads.
    pub rss_mib: f64,
}

/// Runs it.
pub fn run(args: StoreBenchArgs) -> Result<StoreBenchReport> {
    let pb = ProgressBar::new(args.docs as u64);
    pb.set_style(
        ProgressStyle::with_template("creating docs [{bar:40}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if let Some(dir) = &args.create_only {
        create(dir, args.docs, &ProgressBar::hidden())?;
        return Ok(StoreBenchReport {
            docs: args.docs,
            create_secs: 0.0,
            open_secs: 0.0,
            list_secs: 0.0,
            read_1000_secs: 0.0,
            rss_after_open_mib: 0.0,
            rss_mib: 0.0,
        });
    }
    let dir = tempfile::tempdir()?;
    let opts = StoreOptions {
        durability: Durability::Buffered,
        ..StoreOptions::default()
    };
    pb.set_message("creating");
    let t = Instant::now();
    let status = std::process::Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "store",
            "--docs",
            &args.docs.to_string(),
            "--create-only",
        ])
        .arg(dir.path())
        .status()?;
    if !status.success() {
        return Err(crate::error::Error::BadOp(
            "document creation failed".into(),
        ));
    }
    pb.finish_and_clear();
    let create_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let store = Store::open_with(dir.path(), opts)?;
    let open_secs = t.elapsed().as_secs_f64();
    let rss_after_open_mib = crate::relay::bench::rss_mib();
    let t = Instant::now();
    let docs = store.app("bench")?.docs();
    let ids = docs.list()?;
    let list_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let step = (ids.len() / 1000).max(1);
    for id in ids.iter().step_by(step).take(1000) {
        docs.get(id)?;
    }
    let read_1000_secs = t.elapsed().as_secs_f64();
    let report = StoreBenchReport {
        docs: args.docs,
        create_secs,
        open_secs,
        list_secs,
        read_1000_secs,
        rss_after_open_mib,
        rss_mib: crate::relay::bench::rss_mib(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("masq bench store: {} small documents", report.docs);
        println!(
            "  create          {:>8.2} s ({:.0} docs/s)",
            create_secs,
            args.docs as f64 / create_secs
        );
        println!("  open            {:>8.3} s", open_secs);
        println!("  list all        {:>8.3} s", list_secs);
        println!("  read 1000 cold  {:>8.3} s", read_1000_secs);
        println!("  RSS after open  {:>8.1} MiB", report.rss_after_open_mib);
        println!("  RSS at the end  {:>8.1} MiB", report.rss_mib);
    }
    Ok(report)
}
