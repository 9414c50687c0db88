//! `masq bench relay`: a real relay in this process on 127.0.0.1 and N
//! authenticated client connections; measures forwarded messages per second
//! and delivery latency (p50/p99) at 256 B and 16 KiB, and relay RSS.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::crypto::DeviceKeypair;
use masq_relay::client::{RelayClient, RelayEvent};
use masq_relay::{start, RelayConfig};

/// Arguments of `masq bench relay`.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayBenchArgs {
    /// Client connections (paired up: each sends to its partner).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Messages each sender sends per payload size.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = vec![256usize, 16384])]
    pub sizes: Vec<usize>,
    /// Also open this many idle connections and report RSS.
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// Total messages per second in the paced latency phase (0: skip it).
    #[arg(long, default_value_t = 20_000)]
    pub paced_rate: u64,
    /// Run the relay as a separate `masq relay` process so its RSS is measured alone.
    #[arg(long)]
    pub separate_process: bool,
    /// Relay nodes (separate processes sharing `--cluster`); connections
    /// alternate between them, so with 2 or more every message crosses nodes.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Redis URL for `--nodes` > 1.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// One row of results.
#[derive(Debug, Clone, Serialize)]
pub struct RelayBenchRow {
    /// "burst" (senders as fast as they can: throughput) or "paced" (fixed total rate: latency).
    pub mode: String,
    /// Payload size.
    pub size: usize,
    /// Connections.
    pub connections: usize,
    /// Messages forwarded.
    pub messages: u64,
    /// Forwarded messages per second.
    pub msgs_per_sec: f64,
    /// Median latency in ms.
    pub p50_ms: f64,
    /// 99th percentile latency in ms.
    pub p99_ms: f64,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct RelayBenchReport {
    /// Relay nodes (2+: every message crossed nodes through Redis).
    pub nodes: usize,
    /// Rows per size.
    pub rows: Vec<RelayBenchRow>,
    /// Idle connections opened for the memory figure.
    pub idle_connections: usize,
    /// RSS in MiB with all connections open: of the relay process alone with
    /// `--separate-process`, else of this process (relay and clients together).
    pub rss_mib: f64,
    /// Whether `rss_mib` is the relay alone.
    pub relay_rss_alone: bool,
}

/// A `kB` field of a `/proc/.../status` file (`VmRSS:`, `VmHWM:`) in MiB;
/// 0 where there is no procfs (Linux only).
pub fn status_mib(status_file: &str, field: &str) -> f64 {
    std::fs::read_to_string(status_file)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// RSS of another process in MiB (Linux).
pub fn rss_mib_of(pid: u32) -> f64 {
    status_mib(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Starts `masq relay` as a child on a free loopback port; returns it and its URL.
async fn spawn_relay_process(
    cluster: Option<&str>,
) -> std::io::Result<(tokio::process::Child, String)> {
    use tokio::io::AsyncBufReadExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "relay",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--rate",
            "2000000000",
            "--burst",
            "2000000000",
            "--queue-frames",
            "4096",
        ])
        .args(cluster.map(|c| vec!["--cluster", c]).unwrap_or_default())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("no stderr"))?;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Some(line) = lines.next_line().await? {
        if line.contains("listening") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, format!("ws://127.0.0.1:{port}")))
}

/// Resident set size of this process in MiB (Linux).
pub fn rss_mib() -> f64 {
    status_mib("/proc/self/status", "VmRSS:")
}

fn raise_nofile() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn now_micros(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

/// Runs the benchmark.
pub async fn run(args: RelayBenchArgs) -> std::io::Result<RelayBenchReport> {
    raise_nofile();
    let (relay, children, urls) = if args.nodes > 1 {
        let cluster = args
            .cluster
            .as_deref()
            .ok_or_else(|| std::io::Error::other("--nodes needs --cluster redis://HOST:PORT"))?;
        let mut children = Vec::new();
        let mut urls = Vec::new();
        for _ in 0..args.nodes {
            let (child, url) = spawn_relay_process(Some(cluster)).await?;
            children.push(child);
            urls.push(url);
        }
        (None, children, urls)
    } else if args.separate_process {
        let (child, url) = spawn_relay_process(None).await?;
        (None, vec![child], vec![url])
    } else {
        let r = start(RelayConfig {
            rate_per_sec: u32::MAX / 2,
            rate_burst: u32::MAX / 2,
            outbound_queue_frames: 4096,
            ..RelayConfig::loopback_any_port()
        })
        .await?;
        let url = r.url();
        (Some(r), Vec::new(), vec![url])
    };
    let n = args.connections.max(2) & !1;
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:24} [{bar:40}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message("connecting");
    let mut keys = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let kp = DeviceKeypair::generate();
        let c = RelayClient::connect(&urls[i % urls.len()], &kp)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        keys.push(kp.device_id());
        clients.push(c);
        pb.inc(1);
    }
    let t0 = Instant::now();
    let mut rows = Vec::new();
    let mut phases: Vec<(bool, usize)> = args.sizes.iter().map(|s| (false, *s)).collect();
    if args.paced_rate > 0 {
        phases.extend(args.sizes.iter().map(|s| (true, *s)));
    }
    for (paced, size) in phases {
        let size = size.max(8);
        // Paced: each sender waits so the total rate is `paced_rate`.
        let interval = if paced {
            Some(Duration::from_secs_f64(
                (n / 2) as f64 / args.paced_rate as f64,
            ))
        } else {
            None
        };
        pb.set_message(format!(
            "{size} B {}",
            if paced { "paced" } else { "burst" }
        ));
        pb.set_position(0);
        pb.set_length((n / 2 * args.messages) as u64);
        // Receivers: odd indices; senders: even indices send to i+1.
        let mut receivers = Vec::new();
        let mut senders = Vec::new();
        for (i, c) in clients.drain(..).enumerate() {
            if i % 2 == 0 {
                senders.push(c)
            } else {
                receivers.push(c)
            }
        }
        let expected = args.messages;
        let recv_tasks: Vec<_> = receivers
            .into_iter()
            .map(|mut c| {
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(expected);
                    while lat.len() < expected {
                        match tokio::time::timeout(Duration::from_secs(30), c.next_event()).await {
                            Ok(Some(RelayEvent::Message { payload, .. })) => {
                                let mut b = [0u8; 8];
                                b.copy_from_slice(&payload[..8]);
                                let sent = u64::from_le_bytes(b);
                                lat.push(now_micros(t0).saturating_sub(sent));
                            }
                            Ok(Some(_)) => {}
                            _ => break,
                        }
                    }
                    (c, lat)
                })
            })
            .collect();
        let start_t = Instant::now();
        let send_tasks: Vec<_> = senders
            .into_iter()
            .enumerate()
            .map(|(j, mut c)| {
                let to = keys[2 * j + 1];
                let msgs = args.messages;
                tokio::spawn(async move {
                    let mut payload = vec![0u8; size];
                    let mut tick = interval.map(|i| {
                        let mut t = tokio::time::interval(i);
                        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        t
                    });
                    for _ in 0..msgs {
                        if let Some(t) = tick.as_mut() {
                            t.tick().await;
                        }
                        payload[..8].copy_from_slice(&now_micros(t0).to_le_bytes());
                        if c.send(to, payload.clone()).await.is_err() {
                            break;
                        }
                    }
                    c
                })
            })
            .collect();
        let mut senders_back = Vec::new();
        for t in send_tasks {
            if let Ok(c) = t.await {
                senders_back.push(c);
            }
        }
        let mut all_lat = Vec::new();
        let mut receivers_back = Vec::new();
        for t in recv_tasks {
            if let Ok((c, lat)) = t.await {
                pb.inc(lat.len() as u64);
                all_lat.extend(lat);
                receivers_back.push(c);
            }
        }
        let secs = start_t.elapsed().as_secs_f64();
        all_lat.sort_unstable();
        let pct = |p: f64| {
            all_lat
                .get(((all_lat.len() as f64 * p) as usize).min(all_lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        rows.push(RelayBenchRow {
            mode: if paced {
                "paced".into()
            } else {
                "burst".into()
            },
            size,
            connections: n,
            messages: all_lat.len() as u64,
            msgs_per_sec: all_lat.len() as f64 / secs,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
        });
        // Restore the original order (sender i*2, receiver i*2+1).
        let mut it_r = receivers_back.into_iter();
        for s in senders_back {
            clients.push(s);
            if let Some(r) = it_r.next() {
                clients.push(r);
            }
        }
    }
    let mut idle = Vec::new();
    if args.idle > 0 {
        pb.set_message("idle connections");
        pb.set_position(0);
        pb.set_length(args.idle as u64);
        for _ in 0..args.idle {
            match RelayClient::connect(&urls[0], &DeviceKeypair::generate()).await {
                Ok(c) => idle.push(c),
                Err(_) => break,
            }
            pb.inc(1);
        }
    }
    let (rss, alone) = match children.first() {
        Some(c) => (c.id().map(rss_mib_of).unwrap_or(0.0), true),
        None => (rss_mib(), false),
    };
    let report = RelayBenchReport {
        nodes: urls.len(),
        rows,
        idle_connections: idle.len(),
        rss_mib: rss,
        relay_rss_alone: alone,
    };
    pb.finish_and_clear();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?
        );
    } else {
        println!(
            "masq bench relay ({} connections, {} node{})",
            n,
            report.nodes,
            if report.nodes == 1 { "" } else { "s" }
        );
        println!(
            "{:>6} {:>8} {:>12} {:>14} {:>10} {:>10}",
            "mode", "size", "messages", "msgs/s", "p50 ms", "p99 ms"
        );
        for r in &report.rows {
            println!(
                "{:>6} {:>8} {:>12} {:>14.0} {:>10.2} {:>10.2}",
                r.mode, r.size, r.messages, r.msgs_per_sec, r.p50_ms, r.p99_ms
            );
        }
        let whose = if report.nodes > 1 {
            "first relay node alone"
        } else if report.relay_rss_alone {
            "relay process alone"
        } else {
            "relay and clients in one process"
        };
        println!(
            "RSS with {} active + {} idle connections ({whose}): {:.1} MiB",
            n, report.idle_connections, report.rss_mib
        );
    }
    drop(idle);
    drop(clients);
    if let Some(r) = relay {
        r.shutdown().await;
    }
    for mut c in children {
        let _ = c.kill().await;
    }
    Ok(report)
}
