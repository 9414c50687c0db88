//! The relay against real WebSocket clients on 127.0.0.1: authentication,
//! routing, presence, rendezvous, limits and bad input. After each bad input
//! the other connections keep working.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use masq::relay::{start, RelayConfig, RelayHandle};
use masq_core::crypto::{DeviceId, DeviceKeypair};
use masq_core::wire::relay_frame::{codes, Frame, UndeliverableReason};
use masq_relay::client::{RelayClient, RelayEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);

async fn relay(cfg: RelayConfig) -> RelayHandle {
    start(RelayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..cfg
    })
    .await
    .unwrap()
}

async fn client(r: &RelayHandle) -> (DeviceKeypair, RelayClient) {
    let kp = DeviceKeypair::generate();
    let c = RelayClient::connect(&r.url(), &kp).await.unwrap();
    (kp, c)
}

async fn next(c: &mut RelayClient) -> RelayEvent {
    tokio::time::timeout(T, c.next_event())
        .await
        .expect("event in time")
        .expect("connection open")
}

/// Skips presence and error chatter until a message arrives.
async fn next_message(c: &mut RelayClient) -> (DeviceId, Vec<u8>) {
    loop {
        if let RelayEvent::Message { from, payload } = next(c).await {
            return (from, payload);
        }
    }
}

async fn assert_still_works(r: &RelayHandle) {
    let (_, mut a) = client(r).await;
    let (kb, mut b) = client(r).await;
    a.send(kb.device_id(), b"still fine".to_vec())
        .await
        .unwrap();
    assert_eq!(next_message(&mut b).await.1, b"still fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_devices_exchange_messages_and_see_undeliverable() {
    let r = relay(RelayConfig::default()).await;
    let (ka, mut a) = client(&r).await;
    let (kb, mut b) = client(&r).await;
    a.send(kb.device_id(), b"hello".to_vec()).await.unwrap();
    let (from, payload) = next_message(&mut b).await;
    assert_eq!((from, payload.as_slice()), (ka.device_id(), &b"hello"[..]));
    // To an unknown/offline device: told at once, with our message id.
    let stranger = DeviceKeypair::generate().device_id();
    let id = a.send(stranger, b"x".to_vec()).await.unwrap();
    assert_eq!(
        next(&mut a).await,
        RelayEvent::Undeliverable {
            msg_id: id,
            to: stranger,
            reason: UndeliverableReason::Offline
        }
    );
    // To self: refused.
    let id = a.send(ka.device_id(), b"me".to_vec()).await.unwrap();
    assert_eq!(
        next(&mut a).await,
        RelayEvent::Undeliverable {
            msg_id: id,
            to: ka.device_id(),
            reason: UndeliverableReason::ToSelf
        }
    );
    r.shutdown().await;
}

async fn raw(
    r: &RelayHandle,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    tokio_tungstenite::connect_async(r.url()).await.unwrap().0
}

async fn challenge(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> ([u8; 32], [u8; 32]) {
    match ws.next().await.unwrap().unwrap() {
        Message::Binary(b) => match Frame::decode(&b).unwrap() {
            Frame::Challenge {
                relay_public,
                nonce,
            } => (relay_public, nonce),
            f => panic!("expected challenge, got {f:?}"),
        },
        m => panic!("unexpected {m:?}"),
    }
}

/// Reads until the close frame; returns its code.
async fn close_code(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> u16 {
    loop {
        match tokio::time::timeout(T, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(c)))) => return u16::from(c.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_proof_replayed_proof_and_frames_before_auth_are_refused() {
    let r = relay(RelayConfig::default()).await;
    let kp = DeviceKeypair::generate();

    // Wrong proof.
    let mut ws = raw(&r).await;
    challenge(&mut ws).await;
    ws.send(Message::Binary(
        Frame::Auth {
            public: *kp.public().as_bytes(),
            proof: [0; 32],
        }
        .encode()
        .into(),
    ))
    .await
    .unwrap();
    assert_eq!(close_code(&mut ws).await, 4000 + codes::AUTH_FAILED);

    // A valid proof for one connection, replayed on another, fails (fresh challenge per connection).
    let mut ws1 = raw(&r).await;
    let (rp, nonce) = challenge(&mut ws1).await;
    let dh = kp.diffie_hellman(&x25519_dalek::PublicKey::from(rp));
    let proof = masq_relay::config::auth_proof(&dh, &nonce, &rp, kp.public().as_bytes());
    let auth = Frame::Auth {
        public: *kp.public().as_bytes(),
        proof,
    }
    .encode();
    let mut ws2 = raw(&r).await;
    challenge(&mut ws2).await;
    ws2.send(Message::Binary(auth.clone().into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws2).await, 4000 + codes::AUTH_FAILED);
    // On its own connection the same proof works.
    ws1.send(Message::Binary(auth.into())).await.unwrap();
    match ws1.next().await.unwrap().unwrap() {
        Message::Binary(b) => assert_eq!(Frame::decode(&b).unwrap(), Frame::AuthOk(kp.device_id())),
        m => panic!("{m:?}"),
    }

    // A send before authenticating.
    let mut ws3 = raw(&r).await;
    challenge(&mut ws3).await;
    ws3.send(Message::Binary(
        Frame::Send {
            msg_id: 1,
            to: kp.device_id(),
            payload: vec![1],
        }
        .encode()
        .into(),
    ))
    .await
    .unwrap();
    assert_eq!(close_code(&mut ws3).await, 4000 + codes::NOT_AUTHENTICATED);

    assert_still_works(&r).await;
    let metrics = r.metrics().render();
    assert!(
        metrics.contains("masq_relay_drops_total{reason=\"auth_failed\"} 2"),
        "{metrics}"
    );
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_text_and_oversize_frames() {
    let r = relay(RelayConfig {
        max_frame_bytes: 64 * 1024,
        ..RelayConfig::default()
    })
    .await;
    let (_, mut a) = client(&r).await;
    a.send_raw(vec![9, 9, 9]).await.unwrap();
    assert!(matches!(
        next(&mut a).await,
        RelayEvent::Error {
            code: codes::BAD_FRAME,
            ..
        }
    ));
    a.send_raw(
        Frame::Challenge {
            relay_public: [0; 32],
            nonce: [0; 32],
        }
        .encode(),
    )
    .await
    .unwrap();
    assert!(matches!(
        next(&mut a).await,
        RelayEvent::Error {
            code: codes::UNEXPECTED_FRAME,
            ..
        }
    ));
    // The connection is still usable after bad frames.
    let (kb, mut b) = client(&r).await;
    a.send(kb.device_id(), b"ok".to_vec()).await.unwrap();
    assert_eq!(next_message(&mut b).await.1, b"ok");
    // An oversize frame ends that connection only.
    a.send(kb.device_id(), vec![0; 100 * 1024]).await.unwrap();
    loop {
        match next(&mut a).await {
            RelayEvent::Closed { .. } => break,
            _ => continue,
        }
    }
    assert_still_works(&r).await;
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_connection_replaces_older_with_reason_and_presence_works() {
    let r = relay(RelayConfig::default()).await;
    let (ka, mut a) = client(&r).await;
    let kb = DeviceKeypair::generate();
    a.subscribe(vec![kb.device_id()]).await.unwrap();
    assert_eq!(
        next(&mut a).await,
        RelayEvent::Presence {
            device: kb.device_id(),
            online: false
        }
    );
    let mut b1 = RelayClient::connect(&r.url(), &kb).await.unwrap();
    assert_eq!(
        next(&mut a).await,
        RelayEvent::Presence {
            device: kb.device_id(),
            online: true
        }
    );
    let mut b2 = RelayClient::connect(&r.url(), &kb).await.unwrap();
    match next(&mut b1).await {
        RelayEvent::Closed { code, reason } => {
            assert_eq!(code, 4000 + codes::REPLACED);
            assert!(reason.contains("replaced"));
        }
        e => panic!("{e:?}"),
    }
    // Messages go to the newer connection.
    a.send(kb.device_id(), b"to b2".to_vec()).await.unwrap();
    assert_eq!(
        next_message(&mut b2).await,
        (ka.device_id(), b"to b2".to_vec())
    );
    b2.close().await;
    loop {
        if let RelayEvent::Presence {
            device,
            online: false,
        } = next(&mut a).await
        {
            assert_eq!(device, kb.device_id());
            break;
        }
    }
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_pairs_two_and_refuses_a_third() {
    let r = relay(RelayConfig::default()).await;
    let (_, mut a) = client(&r).await;
    let (_, mut b) = client(&r).await;
    let (_, mut c) = client(&r).await;
    let slot = [42u8; 32];
    a.join_rendezvous(slot).await.unwrap();
    b.join_rendezvous(slot).await.unwrap();
    assert_eq!(
        next(&mut a).await,
        RelayEvent::RendezvousPeer { joined: true }
    );
    assert_eq!(
        next(&mut b).await,
        RelayEvent::RendezvousPeer { joined: true }
    );
    a.send_rendezvous(b"hi b".to_vec()).await.unwrap();
    assert_eq!(
        next(&mut b).await,
        RelayEvent::RendezvousData(b"hi b".to_vec())
    );
    b.send_rendezvous(b"hi a".to_vec()).await.unwrap();
    assert_eq!(
        next(&mut a).await,
        RelayEvent::RendezvousData(b"hi a".to_vec())
    );
    c.join_rendezvous(slot).await.unwrap();
    assert!(matches!(
        next(&mut c).await,
        RelayEvent::Error {
            code: codes::RENDEZVOUS_REFUSED,
            ..
        }
    ));
    // Single use: after both leave, the slot cannot be reused.
    a.close().await;
    assert_eq!(
        next(&mut b).await,
        RelayEvent::RendezvousPeer { joined: false }
    );
    b.close().await;
    let (_, mut d) = client(&r).await;
    d.join_rendezvous(slot).await.unwrap();
    d.send_rendezvous(b"anyone?".to_vec()).await.unwrap();
    assert!(matches!(next(&mut d).await, RelayEvent::Error { .. }));
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_slots_expire() {
    let r = relay(RelayConfig {
        rendezvous_ttl: Duration::from_millis(200),
        ..RelayConfig::default()
    })
    .await;
    let (_, a) = client(&r).await;
    let (_, mut b) = client(&r).await;
    let slot = [7u8; 32];
    a.join_rendezvous(slot).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The expired slot is gone; b gets a fresh empty slot and nobody to talk to.
    b.join_rendezvous(slot).await.unwrap();
    b.send_rendezvous(b"late".to_vec()).await.unwrap();
    assert!(matches!(
        next(&mut b).await,
        RelayEvent::Error {
            code: codes::NO_RENDEZVOUS,
            ..
        }
    ));
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_device_rate_limit() {
    let r = relay(RelayConfig {
        rate_per_sec: 10,
        rate_burst: 20,
        ..RelayConfig::default()
    })
    .await;
    let (_, mut a) = client(&r).await;
    let (kb, mut b) = client(&r).await;
    for _ in 0..60 {
        a.send(kb.device_id(), vec![1]).await.unwrap();
    }
    let mut limited = 0;
    while limited == 0 {
        if let RelayEvent::Undeliverable {
            reason: UndeliverableReason::RateLimited,
            ..
        } = next(&mut a).await
        {
            limited += 1;
        }
    }
    // b received some, and other devices are unaffected.
    next_message(&mut b).await;
    assert_still_works(&r).await;
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_costs_senders_refusals_not_memory_and_others_keep_flowing() {
    let r = relay(RelayConfig {
        outbound_queue_frames: 64,
        rate_per_sec: 1_000_000,
        rate_burst: 1_000_000,
        ..RelayConfig::default()
    })
    .await;
    // The slow consumer: authenticates, then never reads its socket again.
    let slow_kp = DeviceKeypair::generate();
    let mut slow_ws = raw(&r).await;
    let (rp, nonce) = challenge(&mut slow_ws).await;
    let dh = slow_kp.diffie_hellman(&x25519_dalek::PublicKey::from(rp));
    let proof = masq_relay::config::auth_proof(&dh, &nonce, &rp, slow_kp.public().as_bytes());
    slow_ws
        .send(Message::Binary(
            Frame::Auth {
                public: *slow_kp.public().as_bytes(),
                proof,
            }
            .encode()
            .into(),
        ))
        .await
        .unwrap();
    let (_, mut sender) = client(&r).await;
    let (kc, mut c) = client(&r).await;
    let payload = vec![7u8; 60 * 1024];
    let mut busy = false;
    for i in 0..2000 {
        sender
            .send(slow_kp.device_id(), payload.clone())
            .await
            .unwrap();
        if i % 50 == 0 {
            // Meanwhile another pair keeps flowing.
            sender.send(kc.device_id(), b"flow".to_vec()).await.unwrap();
            assert_eq!(next_message(&mut c).await.1, b"flow");
        }
        while let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(1), sender.next_event()).await
        {
            if matches!(
                ev,
                RelayEvent::Undeliverable {
                    reason: UndeliverableReason::RecipientBusy | UndeliverableReason::Offline,
                    ..
                }
            ) {
                busy = true;
            }
        }
        if busy {
            break;
        }
    }
    assert!(busy, "the relay never gave up on the slow consumer");
    // Since M13 a full queue refuses the senders (recipient busy) instead of
    // disconnecting the recipient: a flood must not knock a device off. A
    // receiver that is really stuck is still closed when a write times out.
    let metrics = r.metrics().render();
    assert!(
        !metrics.contains("reason=\"recipient_busy\"} 0"),
        "{metrics}"
    );
    assert_still_works(&r).await;
    drop(slow_ws);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_connections_exchange_messages() {
    raise_nofile();
    let r = relay(RelayConfig::default()).await;
    let n = 1000;
    let mut keys = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let (k, c) = client(&r).await;
        keys.push(k);
        clients.push(c);
    }
    // Each sends to the next one in the ring.
    for (i, c) in clients.iter_mut().enumerate() {
        let to = keys[(i + 1) % n].device_id();
        c.send(to, format!("msg {i}").into_bytes()).await.unwrap();
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let (from, payload) = next_message(c).await;
        let src = (i + n - 1) % n;
        assert_eq!(from, keys[src].device_id());
        assert_eq!(payload, format!("msg {src}").into_bytes());
    }
    assert!(r
        .metrics()
        .render()
        .contains(&format!("masq_relay_connections {n}")));
    r.shutdown().await;
}

fn raise_nofile() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

async fn http_get(r: &RelayHandle, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(r.local_addr())
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_metrics_and_graceful_shutdown() {
    let r = relay(RelayConfig::default()).await;
    assert!(http_get(&r, "/healthz").await.starts_with("HTTP/1.1 200"));
    let (_, mut a) = client(&r).await;
    let (kb, mut b) = client(&r).await;
    a.send(kb.device_id(), vec![0xAB; 32]).await.unwrap();
    next_message(&mut b).await;
    let m = http_get(&r, "/metrics").await;
    assert!(m.contains("masq_relay_connections 2"), "{m}");
    assert!(m.contains("masq_relay_messages_total 1"), "{m}");
    assert!(m.contains("masq_relay_bytes_total 32"), "{m}");
    // OpenMetrics, as prometheus-client writes it: typed families, one
    // counter of accepted connections, the end marker.
    assert!(m.contains("application/openmetrics-text"), "{m}");
    assert!(m.contains("# TYPE masq_relay_connections gauge"), "{m}");
    assert!(m.contains("masq_relay_connections_accepted_total 2"), "{m}");
    assert!(
        m.contains("masq_relay_drops_total{reason=\"offline\"} 0"),
        "{m}"
    );
    assert!(m.trim_end().ends_with("# EOF"), "{m}");
    assert!(http_get(&r, "/nope").await.starts_with("HTTP/1.1 404"));
    r.shutdown().await;
    match next(&mut a).await {
        RelayEvent::Closed { code, reason } => {
            assert_eq!(code, 4000 + codes::SHUTDOWN);
            assert!(reason.contains("shutting down"));
        }
        e => panic!("{e:?}"),
    }
}

/// A device that has its `AuthOk` is already reachable: a message sent to it
/// the instant `connect` returns is delivered, never reported offline. (The
/// relay once answered `AuthOk` before registering the connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_reachable_as_soon_as_it_is_authenticated() {
    let r = relay(RelayConfig::default()).await;
    let (_, mut a) = client(&r).await;
    // Busy threads, so the OS preempts the relay's workers at random points
    // (the way a loaded CI machine did when this race showed).
    let _burners = support::CpuBurners::start(4);
    for round in 0..1000u32 {
        let kb = DeviceKeypair::generate();
        let mut b = RelayClient::connect(&r.url(), &kb).await.unwrap();
        a.send(kb.device_id(), round.to_be_bytes().to_vec())
            .await
            .unwrap();
        assert_eq!(next_message(&mut b).await.1, round.to_be_bytes());
        // `a` hears nothing about this message (no Undeliverable).
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(1), a.next_event()).await
        {
            assert!(
                matches!(e, RelayEvent::Presence { .. }),
                "round {round}: {e:?}"
            );
        }
    }
}

/// Built without the `cluster` feature, `masq relay --cluster URL` exits at
/// once with a message that says how to build it in (instead of running
/// unclustered, which would split the user's devices between nodes).
#[cfg(not(feature = "cluster"))]
#[test]
fn cluster_without_the_feature_is_refused_clearly() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_masq"))
        .args(["relay", "--listen", "127.0.0.1:0"])
        .args(["--cluster", "redis://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--features cluster"), "{err}");
}
