//! Relay scale-out (M8): two `masq relay --cluster redis://…` processes
//! sharing a real `redis-server` (started here on a free port). Devices on
//! different nodes exchange messages, see each other's presence, meet in a
//! rendezvous slot; a device that reconnects on the other node replaces its old
//! connection. Two stores on different nodes pair and sync; after one node is
//! SIGKILLed its store reconnects to the other node and both converge.
//!
//! Needs `redis-server` (Debian's package; `.ci/run` installs it). Without
//! it the tests say so and pass, unless `CI` is set.
//!
//! Built only with the `cluster` feature (`cargo test --release --features
//! cluster`, as `.ci/run` does); without it, `relay.rs` checks that
//! `--cluster` is refused with a clear message.
#![cfg(feature = "cluster")]
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use masq::api::Request;
use masq::client::{Auth, Connection};
use masq_core::crypto::DeviceKeypair;
use masq_core::wire::relay_frame::{codes, UndeliverableReason};
use masq_relay::client::{RelayClient, RelayEvent};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

/// A port nothing listens on now and that this test binary has not handed
/// out before: both tests run at once, and two `bind(0)`s may return the same
/// released port, so one test's redis or relay could land on the other's.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Waits until `child` listens on `port` and `ready` says the listener is
/// really it. False if the child exits first (e.g. another program took the
/// port between `free_port` and its bind), so the caller tries another port.
fn wait_until_listening(child: &mut Child, port: u16, ready: impl Fn(u16) -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < T {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && ready(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Redis answers `PING` on `port` (not some other listener).
fn redis_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A masq relay answers `GET /healthz` on `port`.
fn relay_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut out = String::new();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_ok()
        && s.read_to_string(&mut out).is_ok()
        && out.starts_with("HTTP/1.1 200")
}

/// Tries a few fresh ports until the spawned process listens on one.
fn spawn_listening(
    what: &str,
    spawn: impl Fn(u16) -> Child,
    ready: impl Fn(u16) -> bool,
) -> (Proc, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut p = Proc(spawn(port));
        if wait_until_listening(&mut p.0, port, &ready) {
            return (p, port);
        }
        eprintln!("{what} did not come up on port {port}; trying another port");
    }
    panic!("{what} did not start");
}

/// A process killed when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `redis-server` can run here; CI must have it.
fn redis_installed() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the cluster tests: redis-server is not installed"
        );
        eprintln!("skipped: redis-server is not installed");
    }
    ok
}

/// A throwaway redis-server on a free port, or None if it is not installed.
fn redis() -> Option<(Proc, String)> {
    if !redis_installed() {
        return None;
    }
    let (p, port) = spawn_listening(
        "redis-server",
        |port| {
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        },
        redis_answers,
    );
    Some((p, format!("redis://127.0.0.1:{port}")))
}

/// One relay node of the cluster.
fn node(redis: &str) -> (Proc, String, u16) {
    let (p, port) = spawn_listening(
        "relay node",
        |port| {
            Command::new(env!("CARGO_BIN_EXE_masq"))
                .args(["relay", "--listen", &format!("127.0.0.1:{port}")])
                .args(["--cluster", redis])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        },
        relay_answers,
    );
    (p, format!("ws://127.0.0.1:{port}"), port)
}

async fn next(c: &mut RelayClient) -> RelayEvent {
    tokio::time::timeout(T, c.next_event())
        .await
        .expect("event in time")
        .expect("connection open")
}

/// The next event that is not presence chatter.
async fn next_non_presence(c: &mut RelayClient) -> RelayEvent {
    loop {
        match next(c).await {
            RelayEvent::Presence { .. } => continue,
            e => return e,
        }
    }
}

async fn presence_of(c: &mut RelayClient, who: masq_core::crypto::DeviceId) -> bool {
    loop {
        if let RelayEvent::Presence { device, online } = next(c).await {
            if device == who {
                return online;
            }
        }
    }
}

async fn connect(url: &str) -> (DeviceKeypair, RelayClient) {
    let kp = DeviceKeypair::generate();
    let c = RelayClient::connect(url, &kp).await.unwrap();
    (kp, c)
}

fn metric(port: u16, name: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The metric once it is non-zero (or 0 after a few tries).
async fn eventually_metric(port: u16, name: &str) -> u64 {
    for _ in 0..50 {
        let v = metric(port, name);
        if v > 0 {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_different_nodes_route_presence_rendezvous_and_replace() {
    let Some((_redis, url)) = redis() else { return };
    let (_n1, url1, port1) = node(&url);
    let (_n2, url2, _) = node(&url);

    // Routing across nodes, and "offline" when no node holds the recipient.
    let (_, mut a) = connect(&url1).await;
    let (kb, mut b) = connect(&url2).await;
    // b's node announces it a moment after b's AuthOk: ask until it shows.
    let mut online = false;
    for _ in 0..50 {
        a.subscribe(vec![kb.device_id()]).await.unwrap();
        if presence_of(&mut a, kb.device_id()).await {
            online = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(online, "b online (on node 2)");
    a.send(kb.device_id(), b"across".to_vec()).await.unwrap();
    match next_non_presence(&mut b).await {
        RelayEvent::Message { from, payload } => {
            assert_eq!(from, a.device_id());
            assert_eq!(payload, b"across");
        }
        e => panic!("expected a message, got {e:?}"),
    }
    let sent = eventually_metric(
        port1,
        "masq_relay_cluster_messages_total{direction=\"sent\"}",
    )
    .await;
    assert!(
        sent >= 1,
        "node 1 handed the message to the cluster ({sent})"
    );
    let stranger = DeviceKeypair::generate().device_id();
    a.send(stranger, b"nobody".to_vec()).await.unwrap();
    match next_non_presence(&mut a).await {
        RelayEvent::Undeliverable { to, reason, .. } => {
            assert_eq!((to, reason), (stranger, UndeliverableReason::Offline))
        }
        e => panic!("expected undeliverable, got {e:?}"),
    }

    // Presence across nodes: b leaves node 2, a on node 1 sees it.
    // (Answers to the repeated subscriptions above may still be queued: skip
    // "online" until "offline" comes; `next` fails the test after T.)
    b.close().await;
    while presence_of(&mut a, kb.device_id()).await {}

    // Rendezvous across nodes: one member on each, a third is refused.
    let (_, c) = connect(&url1).await;
    let (_, mut d) = connect(&url2).await;
    let (_, mut e) = connect(&url2).await;
    let mut c = c;
    let slot = [7u8; 32];
    c.join_rendezvous(slot).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    d.join_rendezvous(slot).await.unwrap();
    assert_eq!(
        next(&mut c).await,
        RelayEvent::RendezvousPeer { joined: true }
    );
    assert_eq!(
        next(&mut d).await,
        RelayEvent::RendezvousPeer { joined: true }
    );
    c.send_rendezvous(b"hello d".to_vec()).await.unwrap();
    assert_eq!(
        next(&mut d).await,
        RelayEvent::RendezvousData(b"hello d".to_vec())
    );
    d.send_rendezvous(b"hello c".to_vec()).await.unwrap();
    assert_eq!(
        next(&mut c).await,
        RelayEvent::RendezvousData(b"hello c".to_vec())
    );
    e.join_rendezvous(slot).await.unwrap();
    assert!(matches!(
        next(&mut e).await,
        RelayEvent::Error {
            code: codes::RENDEZVOUS_REFUSED,
            ..
        }
    ));
    c.close().await;
    assert_eq!(
        next(&mut d).await,
        RelayEvent::RendezvousPeer { joined: false }
    );

    // One connection per device across the cluster: the newer one wins.
    let kf = DeviceKeypair::generate();
    let mut f_old = RelayClient::connect(&url2, &kf).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut f_new = RelayClient::connect(&url1, &kf).await.unwrap();
    match next_non_presence(&mut f_old).await {
        RelayEvent::Closed { reason, .. } => assert!(reason.contains("replaced"), "{reason}"),
        e => panic!("expected the old connection closed, got {e:?}"),
    }
    a.send(kf.device_id(), b"to the new one".to_vec())
        .await
        .unwrap();
    match next_non_presence(&mut f_new).await {
        RelayEvent::Message { payload, .. } => assert_eq!(payload, b"to the new one"),
        e => panic!("expected a message, got {e:?}"),
    }
}

/// A device that has its `AuthOk` from node 2 is already reachable from
/// node 1: a message sent the instant its `connect` returns is delivered,
/// never reported offline (node 2 waits for Redis to confirm the device's
/// channel before it says `AuthOk`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_reachable_across_nodes_as_soon_as_it_is_authenticated() {
    let Some((_redis, url)) = redis() else { return };
    let (_n1, url1, _) = node(&url);
    let (_n2, url2, _) = node(&url);
    let (_, mut a) = connect(&url1).await;
    // Busy threads, so the OS preempts the nodes at random points.
    let _burners = support::CpuBurners::start(4);
    for round in 0..300u32 {
        let kb = DeviceKeypair::generate();
        let mut b = RelayClient::connect(&url2, &kb).await.unwrap();
        a.send(kb.device_id(), round.to_be_bytes().to_vec())
            .await
            .unwrap();
        match next_non_presence(&mut b).await {
            RelayEvent::Message { payload, .. } => assert_eq!(payload, round.to_be_bytes()),
            e => panic!("round {round}: expected the message, got {e:?}"),
        }
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(1), a.next_event()).await
        {
            assert!(
                matches!(e, RelayEvent::Presence { .. }),
                "round {round}: {e:?}"
            );
        }
    }
}

/// A node started before its Redis listens keeps retrying (for
/// `cluster::CONNECT_WAIT`) and serves once Redis is up, instead of exiting.
#[test]
fn a_node_started_before_redis_waits_for_it() {
    if !redis_installed() {
        return;
    }
    let redis_port = free_port();
    let url = format!("redis://127.0.0.1:{redis_port}");
    let (mut relay, relay_port) = spawn_listening(
        "relay node",
        |port| {
            Command::new(env!("CARGO_BIN_EXE_masq"))
                .args(["relay", "--listen", &format!("127.0.0.1:{port}")])
                .args(["--cluster", &url])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        },
        // Up means bound; it must not answer yet.
        |_| true,
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        relay.0.try_wait().unwrap().is_none(),
        "the node exited while Redis was down"
    );
    assert!(!relay_answers(relay_port), "the node served with no Redis");
    let _redis = Proc(
        Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until_listening(&mut relay.0, relay_port, relay_answers),
        "the node did not serve once Redis was up"
    );
}

async fn admin(info: &masq::internals::daemon_file::DaemonInfo) -> Connection {
    Connection::connect(&info.ws_url, &Auth::Token(info.admin_token.clone()))
        .await
        .unwrap()
}

async fn kv_get(
    info: &masq::internals::daemon_file::DaemonInfo,
    key: &str,
) -> Option<serde_json::Value> {
    admin(info)
        .await
        .call(
            Some("notes"),
            Request::KvGet {
                bucket: "b".into(),
                key: key.into(),
            },
        )
        .await
        .ok()
}

async fn kv_put(info: &masq::internals::daemon_file::DaemonInfo, key: &str, v: serde_json::Value) {
    admin(info)
        .await
        .call(
            Some("notes"),
            Request::KvPut {
                bucket: "b".into(),
                key: key.into(),
                value: v,
            },
        )
        .await
        .unwrap();
}

async fn eventually_has(
    info: &masq::internals::daemon_file::DaemonInfo,
    key: &str,
    v: serde_json::Value,
) {
    let started = Instant::now();
    while kv_get(info, key).await != Some(v.clone()) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{key} never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_on_different_nodes_sync_and_survive_a_node_kill() {
    let Some((_redis, url)) = redis() else { return };
    let (n1, url1, port1) = node(&url);
    let (_n2, url2, port2) = node(&url);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let prefer_1 = format!("{url1},{url2}");
    let prefer_2 = format!("{url2},{url1}");
    let (ca, a) = support::spawn_store_daemon(da.path(), Some("buffered"), Some(&prefer_1));
    let (cb, b) = support::spawn_store_daemon(db.path(), Some("buffered"), Some(&prefer_2));
    let (_ca, mut cb) = (Proc(ca), Proc(cb));

    // Pair (the invite carries a's relay list, so b meets a through node 1).
    support::pair_admins(&admin(&a).await, &admin(&b).await).await;
    // Pairing gave b a's list; put b back on node 2 first.
    let _ = cb.0.kill();
    let _ = cb.0.wait();
    let (cb2, b) = support::spawn_store_daemon(db.path(), Some("buffered"), Some(&prefer_2));
    let _cb2 = Proc(cb2);

    kv_put(&a, "from-a", json!(1)).await;
    kv_put(&b, "from-b", json!(2)).await;
    eventually_has(&b, "from-a", json!(1)).await;
    eventually_has(&a, "from-b", json!(2)).await;
    let crossed = eventually_metric(
        port1,
        "masq_relay_cluster_messages_total{direction=\"sent\"}",
    )
    .await
        + eventually_metric(
            port2,
            "masq_relay_cluster_messages_total{direction=\"sent\"}",
        )
        .await;
    assert!(crossed > 0, "the stores synced across the two nodes");

    // Node 1 dies: a's connection moves to node 2; both keep converging.
    drop(n1);
    kv_put(&a, "after-kill-a", json!(3)).await;
    kv_put(&b, "after-kill-b", json!(4)).await;
    eventually_has(&b, "after-kill-a", json!(3)).await;
    eventually_has(&a, "after-kill-b", json!(4)).await;
}
