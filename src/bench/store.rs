//! `masq bench store`: a store with many small documents (and optionally one
//! big KV bucket) — time to create them, time to open the store again, time to
//! read a sample and to list the bucket, and RSS.

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
    /// Keys to put into one bucket (`big`) besides the documents.
    #[arg(long, default_value_t = 0)]
    pub keys: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Internal: only create the documents in this directory and exit (the
    /// benchmark runs creation in a child process so the RSS it reports is
    /// that of a freshly opened store).
    #[arg(long, hide = true)]
    pub create_only: Option<std::path::PathBuf>,
}

/// Keys per `put_many` while filling the big bucket.
const KEYS_PER_BATCH: usize = 10_000;

fn key(i: usize) -> String {
    format!("key-{i:08}")
}

fn create(dir: &std::path::Path, n: usize, keys: usize, pb: &ProgressBar) -> Result<()> {
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
    let big = store.app("bench")?.bucket("big")?;
    for start in (0..keys).step_by(KEYS_PER_BATCH) {
        let end = (start + KEYS_PER_BATCH).min(keys);
        big.put_many((start..end).map(|i| (key(i), serde_json::json!(i))))?;
    }
    store.db().persist_all()?;
    // Flush the memtables so the open being measured does not replay the
    // journal (a generous limit: this is a bench, not a shutdown).
    if !store.close_within(std::time::Duration::from_secs(120)) {
        tracing::warn!("the store's memtables were not flushed; the open will replay the journal");
    }
    Ok(())
}

/// Results.
#[derive(Debug, Clone, Serialize)]
pub struct StoreBenchReport {
    /// Documents.
    pub docs: usize,
    /// Keys in the big bucket.
    pub keys: usize,
    /// Seconds to create them (buffered durability).
    pub create_secs: f64,
    /// Seconds to open the store again.
    pub open_secs: f64,
    /// Seconds to list the app's documents after opening.
    pub list_secs: f64,
    /// Seconds to read 1000 documents spread over the store (cold).
    pub read_1000_secs: f64,
    /// Seconds to list every key of the big bucket (pages of 10 000).
    pub list_keys_secs: f64,
    /// Seconds to get 1000 keys spread over the big bucket.
    pub get_1000_keys_secs: f64,
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
        create(dir, args.docs, args.keys, &ProgressBar::hidden())?;
        return Ok(StoreBenchReport {
            docs: args.docs,
            keys: args.keys,
            create_secs: 0.0,
            open_secs: 0.0,
            list_secs: 0.0,
            read_1000_secs: 0.0,
            list_keys_secs: 0.0,
            get_1000_keys_secs: 0.0,
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
            "--keys",
            &args.keys.to_string(),
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
    let rss_after_open_mib = super::relay::rss_mib();
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
    let big = store.app("bench")?.bucket("big")?;
    let t = Instant::now();
    let mut listed = 0;
    let mut after: Option<String> = None;
    loop {
        let page = big.list(&crate::kv::ListOptions {
            start_after: after.take(),
            limit: Some(crate::kv::MAX_LIST_LIMIT),
            ..Default::default()
        })?;
        let Some((last, _)) = page.last() else { break };
        listed += page.len();
        after = Some(last.clone());
    }
    let list_keys_secs = t.elapsed().as_secs_f64();
    if listed != args.keys {
        return Err(crate::error::Error::BadOp(format!(
            "listed {listed} keys, expected {}",
            args.keys
        )));
    }
    let t = Instant::now();
    for i in (0..args.keys).step_by((args.keys / 1000).max(1)).take(1000) {
        big.get(&key(i))?;
    }
    let get_1000_keys_secs = t.elapsed().as_secs_f64();
    let report = StoreBenchReport {
        docs: args.docs,
        keys: args.keys,
        list_keys_secs,
        get_1000_keys_secs,
        create_secs,
        open_secs,
        list_secs,
        read_1000_secs,
        rss_after_open_mib,
        rss_mib: super::relay::rss_mib(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "masq bench store: {} small documents, {} keys in one bucket",
            report.docs, report.keys
        );
        println!(
            "  create          {:>8.2} s ({:.0} docs/s)",
            create_secs,
            args.docs as f64 / create_secs
        );
        println!("  open            {:>8.3} s", open_secs);
        println!("  list all        {:>8.3} s", list_secs);
        println!("  read 1000 cold  {:>8.3} s", read_1000_secs);
        if args.keys > 0 {
            println!("  list {} keys {:>8.3} s", args.keys, list_keys_secs);
            println!("  get 1000 keys   {:>8.3} s", get_1000_keys_secs);
        }
        println!("  RSS after open  {:>8.1} MiB", report.rss_after_open_mib);
        println!("  RSS at the end  {:>8.1} MiB", report.rss_mib);
    }
    Ok(report)
}
