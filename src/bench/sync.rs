//! `masq bench sync`: N documents × M changes written on store A converge on
//! store B through a real relay on loopback with encryption on; the same
//! workload is then synced in-process in plaintext (SyncCore to SyncCore, no
//! relay, no crypto) as the baseline, and the ratio printed.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::doc::ChangeOp;
use crate::error::{Error, Result};
use crate::relay::{start as start_relay, RelayConfig};
use crate::storage::Durability;
use crate::store::{Store, StoreOptions};
use crate::sync::core::SyncCore;
use crate::sync::pairing::{join, Inviter};
use crate::sync::wire::SyncPayload;
use crate::sync::SyncEngine;

/// Arguments of `masq bench sync`.
#[derive(Debug, Clone, clap::Args)]
pub struct SyncBenchArgs {
    /// Documents.
    #[arg(long, default_value_t = 1000)]
    pub docs: usize,
    /// Changes per document.
    #[arg(long, default_value_t = 10)]
    pub changes: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Results.
#[derive(Debug, Clone, Serialize)]
pub struct SyncBenchReport {
    /// Documents.
    pub docs: usize,
    /// Changes per document.
    pub changes_per_doc: usize,
    /// Seconds until B had every change, encrypted through the relay.
    pub encrypted_relayed_secs: f64,
    /// Changes per second, encrypted through the relay.
    pub encrypted_changes_per_sec: f64,
    /// Bytes the two stores handed to the relay.
    pub encrypted_wire_bytes: u64,
    /// Seconds for the same workload in-process, plaintext.
    pub plaintext_inprocess_secs: f64,
    /// Changes per second in-process, plaintext.
    pub plaintext_changes_per_sec: f64,
    /// Bytes of plaintext payloads exchanged in-process.
    pub plaintext_wire_bytes: u64,
    /// encrypted / plaintext throughput.
    pub ratio: f64,
}

fn open(dir: &std::path::Path) -> Result<Store> {
    Store::open_with(
        dir,
        StoreOptions {
            durability: Durability::Buffered,
            ..StoreOptions::default()
        },
    )
}

/// Writes the workload into `store`; returns the doc ids.
fn write_workload(
    store: &Store,
    docs: usize,
    changes: usize,
    pb: &ProgressBar,
) -> Result<Vec<crate::DocId>> {
    let d = store.app("bench")?.docs();
    let mut ids = Vec::with_capacity(docs);
    for i in 0..docs {
        let id = d.create()?;
        for c in 0..changes {
            d.change(
                &id,
                &[ChangeOp::Put {
                    path: format!("/k{c}"),
                    value: serde_json::json!(i * changes + c),
                }],
                None,
            )?;
        }
        ids.push(id);
        pb.inc(1);
    }
    Ok(ids)
}

/// Runs the benchmark.
pub async fn run(args: SyncBenchArgs) -> Result<SyncBenchReport> {
    let pb = ProgressBar::new((args.docs * 2) as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:28} [{bar:40}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let total_changes = (args.docs * args.changes) as f64;

    // Encrypted, relayed.
    let relay = start_relay(RelayConfig {
        listen: "127.0.0.1:0"
            .parse()
            .map_err(|_| Error::BadOp("addr".into()))?,
        ..RelayConfig::default()
    })
    .await?;
    let url = format!("ws://{}", relay.local_addr());
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (a, b) = (open(da.path())?, open(db.path())?);
    let inviter = Inviter::start(a.clone(), &url).await?;
    let uri = inviter.invite().to_uri();
    let (yes_a, yes_b) = crate::demo::two_users_comparing_codes();
    let (ra, rb) = tokio::join!(inviter.wait(yes_a), join(&b, &uri, yes_b));
    ra?;
    rb?;
    pb.set_message("writing on A");
    let ids = tokio::task::block_in_place(|| write_workload(&a, args.docs, args.changes, &pb))?;
    let last = ids.last().cloned();
    let heads_a = match &last {
        Some(id) => a.app("bench")?.docs().heads(id)?,
        None => Vec::new(),
    };
    pb.set_message("encrypted sync through relay");
    let t = Instant::now();
    let engine_a = SyncEngine::start(a.clone(), url.clone())?;
    let engine_b = SyncEngine::start(b.clone(), url.clone())?;
    let docs_b = b.app("bench")?.docs();
    let all_there = || -> bool {
        let Ok(n) = docs_b.list().map(|l| l.len()) else {
            return false;
        };
        pb.set_position((args.docs + n) as u64);
        n == args.docs
            && ids
                .iter()
                .all(|id| docs_b.heads(id).map(|h| !h.is_empty()).unwrap_or(false))
            && last
                .as_ref()
                .map(|id| docs_b.heads(id).ok() == Some(heads_a.clone()))
                .unwrap_or(true)
    };
    if !crate::demo::wait_until(Duration::from_secs(600), all_there).await {
        return Err(Error::BadOp("sync did not converge within 600 s".into()));
    }
    // Every document must match exactly.
    for id in &ids {
        if a.app("bench")?.docs().heads(id)? != docs_b.heads(id)? {
            return Err(Error::BadOp(format!("document {id} differs after sync")));
        }
    }
    let enc_secs = t.elapsed().as_secs_f64();
    let wire = engine_a.status().bytes_sent + engine_b.status().bytes_sent;
    engine_a.shutdown().await;
    engine_b.shutdown().await;
    relay.shutdown().await;

    // Plaintext, in-process baseline: same workload, SyncCore to SyncCore.
    pb.set_message("plaintext in-process sync");
    let (dc, dd) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (c, d) = (open(dc.path())?, open(dd.path())?);
    pb.set_position(0);
    tokio::task::block_in_place(|| write_workload(&c, args.docs, args.changes, &pb))?;
    let t = Instant::now();
    let plain_bytes = tokio::task::block_in_place(|| plaintext_sync(&c, &d))?;
    let plain_secs = t.elapsed().as_secs_f64();
    pb.finish_and_clear();

    let report = SyncBenchReport {
        docs: args.docs,
        changes_per_doc: args.changes,
        encrypted_relayed_secs: enc_secs,
        encrypted_changes_per_sec: total_changes / enc_secs,
        encrypted_wire_bytes: wire,
        plaintext_inprocess_secs: plain_secs,
        plaintext_changes_per_sec: total_changes / plain_secs,
        plaintext_wire_bytes: plain_bytes,
        ratio: plain_secs / enc_secs,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(Error::from)?
        );
    } else {
        println!(
            "masq bench sync: {} docs x {} changes",
            report.docs, report.changes_per_doc
        );
        println!(
            "{:<34} {:>10} {:>14} {:>14}",
            "", "seconds", "changes/s", "wire bytes"
        );
        println!(
            "{:<34} {:>10.3} {:>14.0} {:>14}",
            "encrypted, through relay", enc_secs, report.encrypted_changes_per_sec, wire
        );
        println!(
            "{:<34} {:>10.3} {:>14.0} {:>14}",
            "plaintext, in-process (baseline)",
            plain_secs,
            report.plaintext_changes_per_sec,
            plain_bytes
        );
        println!("encrypted / plaintext throughput: {:.2}", report.ratio);
    }
    Ok(report)
}

/// Syncs two stores in-process until quiet; returns payload bytes exchanged.
pub fn plaintext_sync(a: &Store, b: &Store) -> Result<u64> {
    let ida = crate::crypto::DeviceKeypair::generate().device_id();
    let idb = crate::crypto::DeviceKeypair::generate().device_id();
    let mut ca = SyncCore::new(a.clone());
    let mut cb = SyncCore::new(b.clone());
    // Each said it takes everything (the engine's Prefs exchange).
    let mut to_b = ca.on_remote_prefs(&idb, crate::sync::wire::PeerPrefs::default())?;
    let mut to_a = cb.on_remote_prefs(&ida, crate::sync::wire::PeerPrefs::default())?;
    let mut bytes = 0u64;
    let mut rounds = 0;
    while !(to_a.is_empty() && to_b.is_empty()) && rounds < 1000 {
        rounds += 1;
        let mut next_a = Vec::new();
        let mut next_b = Vec::new();
        for p in to_b.drain(..) {
            let enc = p.encode();
            bytes += enc.len() as u64;
            if let Ok(SyncPayload::Batch(items)) = SyncPayload::decode(&enc) {
                let applied = cb.apply_batch(&ida, items, |_| {})?;
                next_a.extend(cb.generate_batches(&ida, &applied.docs)?);
            }
        }
        for p in to_a.drain(..) {
            let enc = p.encode();
            bytes += enc.len() as u64;
            if let Ok(SyncPayload::Batch(items)) = SyncPayload::decode(&enc) {
                let applied = ca.apply_batch(&idb, items, |_| {})?;
                next_b.extend(ca.generate_batches(&idb, &applied.docs)?);
            }
        }
        to_a = next_a;
        to_b = next_b;
    }
    Ok(bytes)
}
