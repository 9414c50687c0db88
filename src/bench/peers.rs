//! `masq bench peers`: the masq side of the automerge-repo comparison
//! (`benches/peers/`). Two stores (buffered durability, on temp dirs) paired
//! through a real relay, encryption on, all in this process; a TCP proxy
//! between the stores and the relay counts every byte both ways, as the
//! automerge-repo harness counts the bytes between its peers and its sync
//! server. Workloads and fields: `benches/peers/automerge-repo/README.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::doc::{ChangeOp, DocId};
use crate::error::{Error, Result};
use crate::relay::{start as start_relay, RelayConfig};
use crate::storage::Durability;
use crate::store::{Event, Origin, Store, StoreOptions};
use crate::sync::pairing::{join, Inviter};
use crate::sync::SyncEngine;

/// Longest wait for convergence.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(300);

/// Arguments of `masq bench peers`.
#[derive(Debug, Clone, clap::Args)]
pub struct PeersBenchArgs {
    /// a: one document, many edits; b: many documents; c: concurrent edits, latency.
    #[arg(long)]
    pub workload: String,
    /// Workload a: edits.
    #[arg(long, default_value_t = 100_000)]
    pub edits: usize,
    /// Workload b: documents (10 keys each).
    #[arg(long, default_value_t = 10_000)]
    pub docs: usize,
    /// Workload c: seconds of editing.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Workload c: edits per second per side.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
}

/// One JSON line, the same fields as the automerge-repo harness prints.
#[derive(Debug, Clone, Serialize)]
pub struct PeersReport {
    /// "masq".
    pub system: &'static str,
    /// a, b or c.
    pub workload: String,
    /// The sizes used.
    pub params: serde_json::Value,
    /// Wall time from the first write until the other side has converged.
    pub seconds: f64,
    /// CPU seconds (user + system) of this process over the same span.
    pub cpu_seconds: f64,
    /// Peak RSS of this process.
    pub peak_rss_mib: f64,
    /// Bytes between the stores and the relay, both directions.
    pub wire_bytes: u64,
    /// Whether the other side converged.
    pub converged: bool,
    /// Workload c: write-to-visible latency.
    pub p50_ms: Option<f64>,
    /// Workload c.
    pub p99_ms: Option<f64>,
}

fn cpu_seconds() -> f64 {
    // utime and stime, fields 14 and 15 of /proc/self/stat, in clock ticks (100/s).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((u + st) / 100.0)
        })
        .unwrap_or(0.0)
}

fn peak_rss_mib() -> f64 {
    super::relay::status_mib("/proc/self/status", "VmHWM:")
}

/// A TCP proxy to `target` that counts the bytes it carries.
async fn counting_proxy(target: std::net::SocketAddr, bytes: Arc<AtomicU64>) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let bytes = bytes.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::join!(pipe(ri, wo, bytes.clone()), pipe(ro, wi, bytes));
            });
        }
    });
    Ok(format!("ws://{addr}"))
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    bytes: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

fn put(path: String, value: serde_json::Value) -> ChangeOp {
    ChangeOp::Put { path, value }
}

async fn until(mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < CONVERGE_TIMEOUT {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::BadOp(e.to_string()))?
}

/// Runs one workload and prints one JSON line.
pub async fn run(args: PeersBenchArgs) -> Result<PeersReport> {
    let relay = start_relay(RelayConfig {
        // Like the automerge-repo sync server: no per-device rate limit.
        rate_per_sec: u32::MAX / 2,
        rate_burst: u32::MAX / 2,
        ..RelayConfig::loopback_any_port()
    })
    .await?;
    let wire = Arc::new(AtomicU64::new(0));
    let url = counting_proxy(relay.local_addr(), wire.clone()).await?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let opts = || StoreOptions {
        durability: Durability::Buffered,
        ..StoreOptions::default()
    };
    let a = Store::open_with(dir_a.path(), opts())?;
    let b = Store::open_with(dir_b.path(), opts())?;
    let inviter = Inviter::start(a.clone(), &url).await?;
    let uri = inviter.invite().to_uri();
    let (yes_a, yes_b) = crate::demo::two_users_comparing_codes();
    let (pa, pb) = tokio::join!(inviter.wait(yes_a), join(&b, &uri, yes_b));
    pa?;
    pb?;
    let engine_a = SyncEngine::start(a.clone(), url.clone())?;
    let engine_b = SyncEngine::start(b.clone(), url.clone())?;
    let (docs_a, docs_b) = (a.app("bench")?.docs(), b.app("bench")?.docs());

    let mut p50 = None;
    let mut p99 = None;
    let (params, started, cpu0, wire0, converged) = match args.workload.as_str() {
        "a" => {
            let n = args.edits;
            let (t0, c0, w0) = (Instant::now(), cpu_seconds(), wire.load(Ordering::Relaxed));
            let da = docs_a.clone();
            let id = blocking(move || {
                let id = da.create_with(&[put("/k0".into(), json!(0))], None)?;
                for i in 0..n {
                    da.change(&id, &[put(format!("/k{}", i % 100), json!(i))], None)?;
                }
                Ok(id)
            })
            .await?;
            let heads = docs_a.heads(&id)?;
            let ok = until(|| docs_b.heads(&id).map(|h| h == heads).unwrap_or(false)).await;
            (json!({ "edits": n }), t0, c0, w0, ok)
        }
        "b" => {
            let n = args.docs;
            let (t0, c0, w0) = (Instant::now(), cpu_seconds(), wire.load(Ordering::Relaxed));
            let da = docs_a.clone();
            let ids: Vec<DocId> = blocking(move || {
                (0..n)
                    .map(|i| {
                        let ops: Vec<ChangeOp> = (0..10)
                            .map(|k| put(format!("/k{k}"), json!(i * 10 + k)))
                            .collect();
                        da.create_with(&ops, None)
                    })
                    .collect()
            })
            .await?;
            let ok = until(|| {
                docs_b.list().map(|l| l.len() == n).unwrap_or(false)
                    && ids
                        .iter()
                        .all(|id| docs_b.heads(id).ok() == docs_a.heads(id).ok())
            })
            .await;
            (json!({ "docs": n, "keys_per_doc": 10 }), t0, c0, w0, ok)
        }
        "c" => {
            let id = docs_a.create_with(&[], None)?;
            if !until(|| docs_b.heads(&id).is_ok()).await {
                return Err(Error::BadOp("the shared document never reached B".into()));
            }
            let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
            let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
            // Each side watches the document and times the other side's keys.
            let mut watchers = Vec::new();
            for docs in [docs_a.clone(), docs_b.clone()] {
                let mut sub = docs.subscribe(Some(id.clone()));
                let (sent, latencies) = (sent.clone(), latencies.clone());
                watchers.push(tokio::spawn(async move {
                    while let Some(ev) = sub.next().await {
                        if let Event::Doc {
                            patches,
                            origin: Origin::Remote { .. },
                            ..
                        } = ev
                        {
                            let now = Instant::now();
                            for p in patches {
                                if let Some(key) = p["path"].get(0).and_then(|k| k.as_str()) {
                                    if let Some(t) =
                                        sent.lock().ok().and_then(|s| s.get(key).copied())
                                    {
                                        if let Ok(mut l) = latencies.lock() {
                                            l.push(now.duration_since(t).as_secs_f64() * 1000.0);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }));
            }
            let (t0, c0, w0) = (Instant::now(), cpu_seconds(), wire.load(Ordering::Relaxed));
            let total = args.seconds * args.rate;
            let mut writers = Vec::new();
            for (side, docs) in [("a", docs_a.clone()), ("b", docs_b.clone())] {
                let (id, sent) = (id.clone(), sent.clone());
                let rate = args.rate.max(1);
                writers.push(tokio::spawn(async move {
                    let mut tick =
                        tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    for n in 0..total {
                        tick.tick().await;
                        let key = format!("{side}{n}");
                        if let Ok(mut s) = sent.lock() {
                            s.insert(key.clone(), Instant::now());
                        }
                        let (docs, id) = (docs.clone(), id.clone());
                        let op = put(format!("/{key}"), json!(n));
                        let _ = tokio::task::spawn_blocking(move || docs.change(&id, &[op], None))
                            .await;
                    }
                }));
            }
            for w in writers {
                let _ = w.await;
            }
            let ok = until(|| {
                let (ha, hb) = (docs_a.heads(&id), docs_b.heads(&id));
                matches!((ha, hb), (Ok(x), Ok(y)) if x == y)
            })
            .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            for w in watchers {
                w.abort();
            }
            let mut l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
            l.sort_by(|x, y| x.total_cmp(y));
            let pct = |q: f64| {
                l.get(((l.len() as f64 - 1.0) * q).round() as usize)
                    .copied()
            };
            p50 = pct(0.5);
            p99 = pct(0.99);
            (
                json!({ "seconds": args.seconds, "rate_per_side": args.rate, "latencies": l.len() }),
                t0,
                c0,
                w0,
                ok,
            )
        }
        other => {
            return Err(Error::BadOp(format!(
                "unknown workload {other:?} (a, b or c)"
            )))
        }
    };
    let report = PeersReport {
        system: "masq",
        workload: args.workload.clone(),
        params,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu0,
        peak_rss_mib: peak_rss_mib(),
        wire_bytes: wire.load(Ordering::Relaxed) - wire0,
        converged,
        p50_ms: p50,
        p99_ms: p99,
    };
    println!("{}", serde_json::to_string(&report)?);
    engine_a.shutdown().await;
    engine_b.shutdown().await;
    relay.shutdown().await;
    if !converged {
        return Err(Error::BadOp("did not converge in time".into()));
    }
    Ok(report)
}
