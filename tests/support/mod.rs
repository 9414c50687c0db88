//! Test helpers shared by the sync tests: stores with engines, pairing, and a
//! WebSocket proxy between devices and the relay that records every frame and
//! can drop, duplicate, delay and reorder them.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use masq::internals::engine::{EngineConfig, SyncEngine};
use masq::internals::pairing::{join, Inviter};
use masq::Durability;
use masq::{Store, StoreOptions};
use tokio::net::TcpListener;

/// A store with its temp dir.
pub struct Device {
    pub store: Store,
    pub dir: tempfile::TempDir,
    pub engine: Option<SyncEngine>,
}

pub fn device(name: &str) -> Device {
    // MASQ_LOG=masq=debug shows the engines' and relay's logs of a test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("MASQ_LOG"))
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path(),
        StoreOptions {
            durability: Durability::Buffered,
            ..Default::default()
        },
    )
    .unwrap();
    masq_store::sync::peers::set_device_name(store.db(), name).unwrap();
    Device {
        store,
        dir,
        engine: None,
    }
}

impl Device {
    pub fn start(&mut self, url: &str) {
        self.start_with_resync(url, Duration::from_millis(500));
    }
    pub fn start_with_resync(&mut self, url: &str, resync_interval: Duration) {
        let cfg = EngineConfig {
            relay_url: url.to_string(),
            resync_interval,
        };
        self.engine = Some(SyncEngine::start_with(self.store.clone(), cfg).unwrap());
    }
    pub async fn stop(&mut self) {
        if let Some(e) = self.engine.take() {
            e.shutdown().await;
        }
    }
    pub fn id(&self) -> masq_core::crypto::DeviceId {
        masq_store::sync::peers::load_or_create_identity(self.store.db())
            .unwrap()
            .device_id()
    }
}

/// Pairs `joiner` with `inviter` through the relay at `url`.
pub async fn pair(inviter: &Device, joiner: &Device, url: &str) {
    let inv = Inviter::start(inviter.store.clone(), url).await.unwrap();
    let uri = inv.invite().to_uri();
    let (yes_a, yes_b) = masq::internals::two_users_comparing_codes();
    let (a, b) = tokio::join!(inv.wait(yes_a), join(&joiner.store, &uri, yes_b));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.safety_code, b.safety_code);
}

/// Polls until `f` holds; panics with `what` after the timeout.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    if !masq::internals::wait_until(timeout, &mut f).await {
        panic!("timed out waiting for: {what}");
    }
}

/// Fault settings of the proxy (probabilities in per mille).
#[derive(Default)]
pub struct Faults {
    pub active: AtomicBool,
    pub drop_permille: AtomicU64,
    pub dup_permille: AtomicU64,
    pub delay_max_ms: AtomicU64,
}

/// A WebSocket man-in-the-middle between devices and the relay.
pub struct Proxy {
    pub addr: SocketAddr,
    /// Every binary frame that passed, both directions.
    pub tap: Arc<Mutex<Vec<Vec<u8>>>>,
    pub faults: Arc<Faults>,
    /// Each connection's way down to its device, with the device the relay
    /// authenticated on it (from its `AuthOk`), to inject frames.
    downs: Arc<Mutex<Vec<Down>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One proxied connection's way down to its device.
struct Down {
    device: Option<masq_core::crypto::DeviceId>,
    tx: tokio::sync::mpsc::UnboundedSender<tokio_tungstenite::tungstenite::Message>,
}

impl Proxy {
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Sends `frame` down every open connection of `device`, as if the relay
    /// had (a replay, or a forgery by a hostile relay); how many took it.
    pub fn inject_to(&self, device: &masq_core::crypto::DeviceId, frame: Vec<u8>) -> usize {
        use tokio_tungstenite::tungstenite::Message;
        let downs = self.downs.lock().unwrap();
        downs
            .iter()
            .filter(|d| d.device.as_ref() == Some(device))
            .filter(|d| d.tx.send(Message::Binary(frame.clone().into())).is_ok())
            .count()
    }
}

fn rand(seed: &AtomicU64) -> u64 {
    // xorshift, good enough for fault injection.
    let mut x = seed.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    seed.store(x, Ordering::Relaxed);
    x
}

pub async fn proxy(relay_url: String, seed: u64) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tap = Arc::new(Mutex::new(Vec::new()));
    let faults = Arc::new(Faults::default());
    let downs: Arc<Mutex<Vec<Down>>> = Arc::new(Mutex::new(Vec::new()));
    let (tap2, faults2, downs2) = (tap.clone(), faults.clone(), downs.clone());
    let rng = Arc::new(AtomicU64::new(seed.max(1)));
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let (tap, faults, rng, relay_url, downs) = (
                tap2.clone(),
                faults2.clone(),
                rng.clone(),
                relay_url.clone(),
                downs2.clone(),
            );
            tokio::spawn(async move {
                let Ok(down) = tokio_tungstenite::accept_async(sock).await else {
                    return;
                };
                let Ok((up, _)) = tokio_tungstenite::connect_async(&relay_url).await else {
                    return;
                };
                let (mut down_tx, mut down_rx) = down.split();
                let (mut up_tx, mut up_rx) = up.split();
                let (to_up, mut to_up_rx) = tokio::sync::mpsc::unbounded_channel::<
                    tokio_tungstenite::tungstenite::Message,
                >();
                let (to_down, mut to_down_rx) = tokio::sync::mpsc::unbounded_channel::<
                    tokio_tungstenite::tungstenite::Message,
                >();
                let w1 = tokio::spawn(async move {
                    while let Some(m) = to_up_rx.recv().await {
                        if up_tx.send(m).await.is_err() {
                            break;
                        }
                    }
                });
                let conn = {
                    let mut d = downs.lock().unwrap();
                    d.push(Down {
                        device: None,
                        tx: to_down.clone(),
                    });
                    d.len() - 1
                };
                let w2 = tokio::spawn(async move {
                    while let Some(m) = to_down_rx.recv().await {
                        if down_tx.send(m).await.is_err() {
                            break;
                        }
                    }
                });
                let forward = |m: tokio_tungstenite::tungstenite::Message,
                               out: tokio::sync::mpsc::UnboundedSender<
                    tokio_tungstenite::tungstenite::Message,
                >| {
                    use tokio_tungstenite::tungstenite::Message;
                    if let Message::Binary(b) = &m {
                        tap.lock().unwrap().push(b.to_vec());
                        // Only post-auth traffic (Send/Deliver frames) is faulted, so
                        // faults hit the sync protocol, not the relay handshake.
                        let faultable = b.len() > 2 && (b[1] == 0x12 || b[1] == 0x03);
                        if faultable && faults.active.load(Ordering::Relaxed) {
                            if rand(&rng) % 1000 < faults.drop_permille.load(Ordering::Relaxed) {
                                return;
                            }
                            let copies = if rand(&rng) % 1000
                                < faults.dup_permille.load(Ordering::Relaxed)
                            {
                                2
                            } else {
                                1
                            };
                            let max = faults.delay_max_ms.load(Ordering::Relaxed);
                            for _ in 0..copies {
                                let delay = if max > 0 { rand(&rng) % max } else { 0 };
                                let (m, out) = (m.clone(), out.clone());
                                tokio::spawn(async move {
                                    tokio::time::sleep(Duration::from_millis(delay)).await;
                                    let _ = out.send(m);
                                });
                            }
                            return;
                        }
                    }
                    let _ = out.send(m);
                };
                loop {
                    tokio::select! {
                        m = down_rx.next() => match m { Some(Ok(m)) => forward(m, to_up.clone()), _ => break },
                        m = up_rx.next() => match m {
                            Some(Ok(m)) => {
                                if let tokio_tungstenite::tungstenite::Message::Binary(b) = &m {
                                    if let Ok(masq_core::wire::relay_frame::Frame::AuthOk(id)) =
                                        masq_core::wire::relay_frame::Frame::decode(b)
                                    {
                                        downs.lock().unwrap()[conn].device = Some(id);
                                    }
                                }
                                forward(m, to_down.clone())
                            }
                            _ => break,
                        },
                    }
                }
                w1.abort();
                w2.abort();
            });
        }
    });
    Proxy {
        addr,
        tap,
        faults,
        downs,
        task,
    }
}

/// Spawns `masq [--durability D] store --listen 127.0.0.1:0 [--relay R]` on
/// `dir` and waits until it has written its `store.json` (this child's pid).
pub fn spawn_store_daemon(
    dir: &std::path::Path,
    durability: Option<&str>,
    relay: Option<&str>,
) -> (
    std::process::Child,
    masq::internals::daemon_file::DaemonInfo,
) {
    spawn_store_daemon_with(dir, durability, relay, &[])
}

/// [`spawn_store_daemon`] with extra `masq store` arguments.
pub fn spawn_store_daemon_with(
    dir: &std::path::Path,
    durability: Option<&str>,
    relay: Option<&str>,
    extra: &[&str],
) -> (
    std::process::Child,
    masq::internals::daemon_file::DaemonInfo,
) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_masq"));
    cmd.arg("--data").arg(dir);
    if let Some(d) = durability {
        cmd.args(["--durability", d]);
    }
    cmd.args(["store", "--listen", "127.0.0.1:0"]);
    if let Some(r) = relay {
        cmd.args(["--relay", r]);
    }
    cmd.args(extra);
    // Returned to the caller, who waits for it (or kills it on drop).
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        if let Some(i) = masq::internals::daemon_file::read(dir).filter(|i| i.pid == child.id()) {
            return (child, i);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "masq store did not write store.json"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Threads that spin until dropped, so the OS preempts the code under test
/// at random points (as a loaded CI machine does): races that need a thread
/// to stall between two steps show up within a few hundred tries.
pub struct CpuBurners {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuBurners {
    /// Starts `n` spinning threads.
    pub fn start(n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuBurners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `masq --data DIR --durability buffered`: the CLI on a test's data dir.
pub fn masq_cli(dir: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_masq"));
    c.arg("--data").arg(dir).args(["--durability", "buffered"]);
    c
}

/// A `masq store` child process (buffered durability, 127.0.0.1:0) on a
/// temp dir it owns; killed on drop.
pub struct Daemon {
    pub child: std::process::Child,
    pub dir: tempfile::TempDir,
    pub info: masq::internals::daemon_file::DaemonInfo,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// A daemon on a fresh temp dir.
    pub fn start(relay: Option<&str>) -> Daemon {
        Self::start_in(tempfile::tempdir().unwrap(), relay)
    }
    /// A daemon on `dir` (which may hold a store already).
    pub fn start_in(dir: tempfile::TempDir, relay: Option<&str>) -> Daemon {
        let (child, info) = spawn_store_daemon(dir.path(), Some("buffered"), relay);
        Daemon { child, dir, info }
    }
    /// Kills the process and hands back its data dir (to start it again).
    pub fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().to_path_buf()
    }
    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.info.http_url.trim_start_matches("http://").to_string()
    }
    pub fn port(&self) -> u16 {
        self.addr().rsplit_once(':').unwrap().1.parse().unwrap()
    }
    /// Whether the process still runs (a stack overflow aborts it).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
    /// The CLI on this daemon's data dir (it talks to the daemon).
    pub fn cli(&self) -> std::process::Command {
        masq_cli(self.dir.path())
    }
    pub async fn admin(&self) -> masq::client::Connection {
        masq::client::Connection::connect(
            &self.info.ws_url,
            &masq::client::Auth::Token(self.info.admin_token.clone()),
        )
        .await
        .unwrap()
    }
    /// A new native app token for `name` (`apps.add`).
    pub async fn app_token(&self, name: &str) -> String {
        let v = self
            .admin()
            .await
            .call(None, masq::api::Request::AppsAdd { name: name.into() })
            .await
            .unwrap();
        v["token"].as_str().unwrap().to_string()
    }
    /// A `masq::Client` of `app` with `token`, store mode only.
    pub async fn client(&self, app: &str, token: &str) -> masq::Client {
        let mut o = masq::ClientOptions::new(app);
        o.store_url = Some(self.info.ws_url.clone());
        o.token = Some(token.to_string());
        o.require_store = true;
        masq::Client::connect_with(o).await.unwrap()
    }
    /// Resident memory of the process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

/// The value of `key` in bucket `b` of app `app` on `d`.
pub fn kv(d: &Device, key: &str) -> Option<serde_json::Value> {
    d.store
        .app("app")
        .unwrap()
        .bucket("b")
        .unwrap()
        .get(key)
        .unwrap()
}

/// Puts `key` in bucket `b` of app `app` on `d`.
pub fn put(d: &Device, key: &str, v: serde_json::Value) {
    d.store
        .app("app")
        .unwrap()
        .bucket("b")
        .unwrap()
        .put(key, &v)
        .unwrap()
}

/// Runs a CLI command against `dir` (its daemon answers); stdout, or None
/// if the command failed.
pub fn try_cli(dir: &std::path::Path, args: &[&str]) -> Option<String> {
    let out = masq_cli(dir).args(args).output().unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap().trim().to_string())
}

/// As [`try_cli`], panicking if the command failed.
pub fn cli(dir: &std::path::Path, args: &[&str]) -> String {
    try_cli(dir, args).unwrap_or_else(|| panic!("masq {args:?} failed"))
}

/// Pairs two stores through their admin connections (`pair.invite` on
/// `inviter`, `pair.join` on `joiner`), each side answering its code the
/// way a user looking at both screens would: yes only when they match.
/// Returns (inviter's result, joiner's result).
pub async fn pair_admins(
    inviter: &masq::client::Connection,
    joiner: &masq::client::Connection,
) -> (serde_json::Value, serde_json::Value) {
    use masq::api::Request;
    let (invite_tx, invite_rx) = tokio::sync::oneshot::channel::<String>();
    let mut invite_tx = Some(invite_tx);
    let (a_shows, a_seen) = tokio::sync::oneshot::channel::<String>();
    let (b_shows, b_seen) = tokio::sync::oneshot::channel::<String>();
    let user = |shows: tokio::sync::oneshot::Sender<String>,
                other: tokio::sync::oneshot::Receiver<String>| {
        move |check: serde_json::Value| async move {
            let code = check["code"].as_str().unwrap_or_default().to_string();
            let _ = shows.send(code.clone());
            other.await.is_ok_and(|c| c == code)
        }
    };
    let invite = inviter.pair(
        Request::PairInvite {
            relay: None,
            yes: false,
        },
        |answer| {
            if let Some(tx) = invite_tx.take() {
                let _ = tx.send(answer["invite"].as_str().unwrap().to_string());
            }
        },
        user(a_shows, b_seen),
    );
    let join = async {
        let invite = invite_rx.await.unwrap();
        joiner
            .pair(
                Request::PairJoin { invite, yes: false },
                |_| {},
                user(b_shows, a_seen),
            )
            .await
    };
    let (a, b) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(invite, join)
    })
    .await
    .expect("pairing timed out");
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a["safety_code"], b["safety_code"]);
    (a, b)
}
