//! `masq bench local`: kv get/put through the store service's WebSocket API
//! (a real service on 127.0.0.1, a real client connection) beside the same
//! calls on the embedded API, in one run: one request at a time (round-trip
//! latency) and pipelined over one connection (throughput).

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::json;

use crate::api::Request;
use crate::client::{Auth, Connection};
use crate::error::{Error, Result};
use crate::storage::Durability;
use crate::store::{Store, StoreOptions};

/// Arguments of `masq bench local`.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalBenchArgs {
    /// Operations per measurement.
    #[arg(long, default_value_t = 20_000)]
    pub ops: usize,
    /// Requests in flight on the connection when pipelining.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct LocalBenchRow {
    /// What was measured.
    pub name: String,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Median latency of one operation, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
}

/// Results.
#[derive(Debug, Clone, Serialize)]
pub struct LocalBenchReport {
    /// Rows in the order measured.
    pub rows: Vec<LocalBenchRow>,
    /// Pipelined WebSocket get / embedded get throughput.
    pub get_ratio: f64,
    /// Pipelined WebSocket put / embedded put throughput.
    pub put_ratio: f64,
}

fn row(name: &str, elapsed: Duration, mut lat: Vec<Duration>) -> LocalBenchRow {
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(0.0)
    };
    LocalBenchRow {
        name: name.to_string(),
        ops_per_sec: lat.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

fn embedded(store: &Store, name: &str, ops: usize, put: bool) -> Result<LocalBenchRow> {
    let b = store.app("bench")?.bucket("b")?;
    let mut lat = Vec::with_capacity(ops);
    let start = Instant::now();
    for i in 0..ops {
        let t = Instant::now();
        let key = format!("k{}", i % 1000);
        if put {
            b.put(&key, &json!(i))?;
        } else {
            b.get(&key)?;
        }
        lat.push(t.elapsed());
    }
    if put {
        // Throughput includes folding the puts into Automerge (write-behind);
        // the latencies are what each caller waited for.
        store.flush_kv()?;
    }
    Ok(row(name, start.elapsed(), lat))
}

fn request(i: usize, put: bool) -> Request {
    let key = format!("k{}", i % 1000);
    if put {
        Request::KvPut {
            bucket: "b".into(),
            key,
            value: json!(i),
        }
    } else {
        Request::KvGet {
            bucket: "b".into(),
            key,
        }
    }
}

async fn over_ws(
    conn: &Connection,
    name: &str,
    ops: usize,
    window: usize,
    put: bool,
) -> Result<LocalBenchRow> {
    let start = Instant::now();
    let results: Vec<std::result::Result<Duration, String>> = futures::stream::iter(0..ops)
        .map(|i| async move {
            let t = Instant::now();
            conn.call(None, request(i, put))
                .await
                .map_err(|e| e.to_string())?;
            Ok(t.elapsed())
        })
        .buffer_unordered(window.max(1))
        .collect()
        .await;
    let elapsed = start.elapsed();
    let lat = results
        .into_iter()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(Error::Storage)?;
    Ok(row(name, elapsed, lat))
}

/// Runs the benchmark and prints the table (or JSON).
pub async fn run(args: LocalBenchArgs) -> Result<LocalBenchReport> {
    let dir = tempfile::tempdir()?;
    let store = Store::open_with(
        dir.path(),
        StoreOptions {
            durability: Durability::Buffered,
            ..StoreOptions::default()
        },
    )?;
    let token = crate::service::registry::add_native(store.db(), "bench")?;
    let service = crate::service::start(
        store.clone(),
        crate::service::ServiceConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            // The service's capacity, not one app's default share
            // (`service::app_limits::APP_REQUESTS_PER_SEC`).
            app_rate: u32::MAX,
            ..Default::default()
        },
    )
    .await?;
    let conn = Connection::connect(&service.ws_url(), &Auth::Token(token))
        .await
        .map_err(|e| Error::Storage(e.to_string()))?;
    let pb = indicatif::ProgressBar::new(6);
    let mut rows = Vec::new();
    let n = args.ops;
    // Fill the keys first so gets find values.
    rows.push(tokio::task::block_in_place(|| {
        embedded(&store, "embedded kv.put", n, true)
    })?);
    pb.inc(1);
    rows.push(tokio::task::block_in_place(|| {
        embedded(&store, "embedded kv.get", n, false)
    })?);
    pb.inc(1);
    rows.push(over_ws(&conn, "ws kv.put (1 in flight)", n / 4, 1, true).await?);
    pb.inc(1);
    rows.push(over_ws(&conn, "ws kv.get (1 in flight)", n / 4, 1, false).await?);
    pb.inc(1);
    let label_put = format!("ws kv.put ({} in flight)", args.window);
    let label_get = format!("ws kv.get ({} in flight)", args.window);
    rows.push(over_ws(&conn, &label_put, n, args.window, true).await?);
    pb.inc(1);
    rows.push(over_ws(&conn, &label_get, n, args.window, false).await?);
    pb.finish_and_clear();
    let get_ratio = rows[5].ops_per_sec / rows[1].ops_per_sec.max(1e-9);
    let put_ratio = rows[4].ops_per_sec / rows[0].ops_per_sec.max(1e-9);
    let report = LocalBenchReport {
        rows,
        get_ratio,
        put_ratio,
    };
    drop(conn);
    service.shutdown().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{:<28} {:>12} {:>10} {:>10}",
            "", "ops/s", "p50 µs", "p99 µs"
        );
        for r in &report.rows {
            println!(
                "{:<28} {:>12.0} {:>10.1} {:>10.1}",
                r.name, r.ops_per_sec, r.p50_us, r.p99_us
            );
        }
        println!(
            "pipelined WebSocket / embedded: get {:.3}, put {:.3} (buffered durability)",
            report.get_ratio, report.put_ratio
        );
    }
    Ok(report)
}
