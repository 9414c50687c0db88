//! Crash and fault campaign: three real `masq store` processes and a real
//! `masq relay` process; writers on every store; at random moments a store or
//! the relay is killed with SIGKILL and restarted. Writers put KV keys and
//! change one document per store. In the end every acknowledged write (key or
//! document field) must be on every store, and every document's heads must be
//! equal on all three. Prints rounds, kills, writes and losses (which must be 0).
//!
//! Short form by default (3 rounds); `MASQ_CAMPAIGN_ROUNDS=50` for the long
//! form, `MASQ_CAMPAIGN_SEED=N` to replay a run.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use masq::api::Request;
use masq::client::{Auth, ClientOptions, Connection};
use masq::Client;
use serde_json::json;

const T: Duration = Duration::from_secs(90);

fn masq(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_masq"));
    c.arg("--data").arg(dir);
    c
}

/// A store process that can be killed and restarted on its directory.
struct Store {
    dir: PathBuf,
    child: Option<Child>,
    ws_url: String,
    admin: String,
}

impl Store {
    fn start(dir: PathBuf, relay: &str) -> Self {
        let mut s = Store {
            dir,
            child: None,
            ws_url: String::new(),
            admin: String::new(),
        };
        s.spawn(Some(relay));
        s
    }
    fn spawn(&mut self, relay: Option<&str>) {
        let (child, info) = support::spawn_store_daemon(&self.dir, None, relay);
        self.ws_url = info.ws_url;
        self.admin = info.admin_token;
        self.child = Some(child);
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
    fn restart(&mut self) {
        self.kill();
        self.spawn(None);
    }
    async fn admin(&self) -> Connection {
        Connection::connect(&self.ws_url, &Auth::Token(self.admin.clone()))
            .await
            .unwrap()
    }
    /// Every key of the campaign bucket, read page by page through the CLI.
    fn keys(&self) -> BTreeSet<String> {
        let mut keys: BTreeSet<String> = BTreeSet::new();
        loop {
            let mut cmd = masq(&self.dir);
            cmd.args([
                "kv", "list", "--app", "campaign", "--bucket", "c", "--limit", "10000",
            ]);
            if let Some(last) = keys.iter().next_back().cloned() {
                cmd.args(["--start-after", last.as_str()]);
            }
            let out = cmd.output().unwrap();
            let page: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["key"].as_str().map(str::to_string))
                .collect();
            if page.is_empty() {
                return keys;
            }
            keys.extend(page);
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Relay {
    port: u16,
    child: Option<Child>,
}

impl Relay {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Relay { port, child: None };
        r.spawn();
        r
    }
    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }
    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_masq"))
            .args(["relay", "--listen", &format!("127.0.0.1:{}", self.port)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < T, "relay did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }
    fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// xorshift64*: a small seeded generator, so a failing run can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Pairs the two stores: the inviter through its admin connection, the
/// joiner through its CLI; both with `yes` (this test compares the codes
/// itself: they are checked equal below).
async fn pair(inviter: &Store, joiner: &Store) {
    let admin = inviter.admin().await;
    let (invite_tx, invite_rx) = tokio::sync::oneshot::channel::<String>();
    let mut invite_tx = Some(invite_tx);
    let invite = admin.pair(
        masq::api::Request::PairInvite {
            relay: None,
            yes: true,
        },
        |answer| {
            if let Some(tx) = invite_tx.take() {
                let _ = tx.send(answer["invite"].as_str().unwrap().to_string());
            }
        },
        |_| async { true },
    );
    let dir = joiner.dir.clone();
    let join = async move {
        let uri = invite_rx.await.unwrap();
        tokio::task::spawn_blocking(move || {
            masq(&dir)
                .args(["pair", "join", "--yes", &uri])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let (paired, out) = tokio::time::timeout(T, async { tokio::join!(invite, join) })
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paired = paired.unwrap();
    let code = paired["safety_code"].as_str().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("Pairing code: {code}")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kills_of_stores_and_relay() {
    let rounds: u64 = std::env::var("MASQ_CAMPAIGN_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("MASQ_CAMPAIGN_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("campaign seed {seed} (replay with MASQ_CAMPAIGN_SEED={seed})");
    let mut rng = Rng(seed);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut relay = Relay::start();
    let mut stores: Vec<Store> = dirs
        .iter()
        .map(|d| Store::start(d.path().to_path_buf(), &relay.url()))
        .collect();
    pair(&stores[0], &stores[1]).await;
    pair(&stores[0], &stores[2]).await;
    let mut tokens = Vec::new();
    for s in &stores {
        let v = s
            .admin()
            .await
            .call(
                None,
                Request::AppsAdd {
                    name: "campaign".into(),
                },
            )
            .await
            .unwrap();
        tokens.push(v["token"].as_str().unwrap().to_string());
    }

    // One document per store, written only there; all three sync everywhere.
    let mut docs = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        let v = s
            .admin()
            .await
            .call(
                Some("campaign"),
                Request::DocCreate {
                    ops: vec![],
                    message: Some(format!("store {i}")),
                },
            )
            .await
            .unwrap();
        docs.push(v["doc"].as_str().unwrap().to_string());
    }

    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let acked_doc: Arc<Mutex<BTreeSet<(usize, String)>>> = Arc::default();
    let (mut kills, mut relay_kills) = (0u64, 0u64);
    for round in 0..rounds {
        // Writers on every store until told to stop (or their store dies).
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for (i, s) in stores.iter().enumerate() {
            let mut o = ClientOptions::new("campaign");
            o.store_url = Some(s.ws_url.clone());
            o.token = Some(tokens[i].clone());
            o.require_store = true;
            let client = Client::connect_with(o).await.unwrap();
            let (acked, acked_doc, stop) = (acked.clone(), acked_doc.clone(), stop.clone());
            let doc = docs[i].clone();
            writers.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("r{round}-s{i}-{n}");
                    if client.put("c", &key, &json!(n)).await.is_err() {
                        break; // its store was killed: unacknowledged, not counted
                    }
                    acked.lock().unwrap().insert(key.clone());
                    if n % 4 == 0 {
                        let op = masq::ChangeOp::Put {
                            path: format!("/{key}"),
                            value: json!(n),
                        };
                        if client.change_doc(&doc, &[op], None).await.is_err() {
                            break;
                        }
                        acked_doc.lock().unwrap().insert((i, key));
                    }
                    n += 1;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(100 + rng.below(400))).await;
        let victim = rng.below(4);
        if victim == 3 {
            relay.restart();
            relay_kills += 1;
        } else {
            stores[victim as usize].kill();
            kills += 1;
        }
        tokio::time::sleep(Duration::from_millis(100 + rng.below(300))).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        if victim < 3 {
            stores[victim as usize].restart();
        }
    }
    let expected = acked.lock().unwrap().clone();
    eprintln!(
        "campaign: {rounds} rounds, {kills} store kills, {relay_kills} relay kills, {} acknowledged writes",
        expected.len()
    );
    assert!(!expected.is_empty());
    let deadline = Instant::now() + T;
    loop {
        let missing: Vec<usize> = stores
            .iter()
            .map(|s| expected.difference(&s.keys()).count())
            .collect();
        if missing.iter().all(|m| *m == 0) {
            eprintln!("campaign: losses 0 on every store");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged writes missing per store after convergence time: {missing:?} (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // And the stores agree with each other, not only on the acknowledged keys.
    let all: Vec<BTreeSet<String>> = stores.iter().map(|s| s.keys()).collect();
    assert!(
        all.windows(2).all(|w| w[0] == w[1]),
        "stores differ (seed {seed})"
    );

    // Documents: every acknowledged field on every store, and equal heads for
    // every document of the app on all three.
    let doc_writes = acked_doc.lock().unwrap().clone();
    loop {
        let mut data = Vec::new();
        for s in &stores {
            let v = s
                .admin()
                .await
                .call(
                    None,
                    Request::AppsData {
                        name: "campaign".into(),
                    },
                )
                .await
                .unwrap();
            data.push(v["docs"].clone());
        }
        if data.windows(2).all(|w| w[0] == w[1]) {
            eprintln!(
                "campaign: {} documents with equal heads on every store",
                data[0].as_array().map(Vec::len).unwrap_or(0)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "document heads differ after convergence time (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut doc_losses = 0;
    for s in &stores {
        let admin = s.admin().await;
        for (i, doc) in docs.iter().enumerate() {
            let v = admin
                .call(
                    Some("campaign"),
                    Request::DocGet {
                        doc: doc.clone(),
                        at: None,
                    },
                )
                .await
                .unwrap();
            doc_losses += doc_writes
                .iter()
                .filter(|(w, key)| *w == i && v.get(key).is_none())
                .count();
        }
    }
    eprintln!(
        "campaign: {} acknowledged document writes, losses {doc_losses}",
        doc_writes.len()
    );
    assert_eq!(
        doc_losses, 0,
        "acknowledged document writes lost (seed {seed})"
    );
}
