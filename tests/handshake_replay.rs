//! M12: handshake replays and a forged response from a hostile relay, with
//! real stores, engines and relay, and a proxy between the devices and the
//! relay that records every frame and injects recorded or forged ones.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use masq::relay::{start, RelayConfig};
use masq_core::wire::device::DevicePacket;
use masq_core::wire::relay_frame::Frame;
use support::{device, eventually, kv, pair, proxy, put, Device};

const T: Duration = Duration::from_secs(30);
/// Long enough that no resync tick re-handshakes during the test: what
/// keeps the session working is the archive, not a timer.
const RESYNC: Duration = Duration::from_secs(600);

fn rejected(d: &Device) -> u64 {
    d.engine.as_ref().unwrap().status().rejected
}

/// Recorded frames that decode, in order.
fn frames(tap: &std::sync::Mutex<Vec<Vec<u8>>>) -> Vec<Frame> {
    tap.lock()
        .unwrap()
        .iter()
        .filter_map(|b| Frame::decode(b).ok())
        .collect()
}

/// A device restarts (its answered-init cache is gone, its session and its
/// init mark are on disk), then the relay replays an init it delivered long
/// ago. Before M12 the device answered it with a session its peer would
/// never have, which replaced the working session until a resync made a new
/// handshake. Now the init's stamp is at or below the stored mark: the device
/// refuses it (a refusal, no response, no new session), and writes flow both
/// ways with nothing refused. A forged response injected at the peer is
/// refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_init_and_a_forged_response_leave_the_session_working() {
    let relay = start(RelayConfig::loopback_any_port()).await.unwrap();
    let px = proxy(relay.url(), 1).await;
    let (mut a, mut b) = (device("a"), device("b"));
    pair(&a, &b, &relay.url()).await;
    a.start_with_resync(&px.url(), RESYNC);
    b.start_with_resync(&px.url(), RESYNC);
    put(&a, "first", serde_json::json!(1));
    put(&b, "second", serde_json::json!(2));
    eventually("sync both ways", T, || {
        kv(&b, "first").is_some() && kv(&a, "second").is_some()
    })
    .await;

    // An init the relay delivered, and to whom.
    let (from, init_frame) = frames(&px.tap)
        .into_iter()
        .find_map(|f| match &f {
            Frame::Deliver { from, payload }
                if matches!(
                    DevicePacket::decode(payload),
                    Ok(DevicePacket::HandshakeInit(_))
                ) =>
            {
                Some((*from, f.encode()))
            }
            _ => None,
        })
        .expect("a handshake init went through the relay");
    let (sender, target) = if from == a.id() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    // The target restarts; sync resumes on the stored session.
    target.stop().await;
    target.start_with_resync(&px.url(), RESYNC);
    put(sender, "after-restart", serde_json::json!(3));
    eventually("sync after the restart", T, || {
        kv(target, "after-restart").is_some()
    })
    .await;
    let responses_before = count_packets(&px.tap, 2);
    let refusals_before = count_packets(&px.tap, 4);
    assert!(px.inject_to(&target.id(), init_frame) >= 1);
    eventually("the target refused the replayed init", T, || {
        count_packets(&px.tap, 4) > refusals_before
    })
    .await;
    assert_eq!(
        count_packets(&px.tap, 2),
        responses_before,
        "the replayed init was answered"
    );
    // A forged response at the sender (right tag and length, wrong proof).
    let mut forged = vec![2u8, 1];
    forged.extend_from_slice(&[7u8; 64]);
    let forged = Frame::Deliver {
        from: target.id(),
        payload: forged,
    }
    .encode();
    assert!(px.inject_to(&sender.id(), forged) >= 1);

    // Writes flow both ways, and the target refused nothing of the sender.
    let refused_before = rejected(target);
    put(sender, "after-replay", serde_json::json!(4));
    put(target, "reply", serde_json::json!(5));
    eventually("writes both ways after the replay", T, || {
        kv(target, "after-replay").is_some() && kv(sender, "reply").is_some()
    })
    .await;
    assert_eq!(
        rejected(target),
        refused_before,
        "the sender's envelopes were refused: the replay took the session away"
    );
}

/// Device packets of `tag` (2: handshake response, 4: init refused) the
/// devices sent through the relay so far.
fn count_packets(tap: &std::sync::Mutex<Vec<Vec<u8>>>, tag: u8) -> usize {
    frames(tap)
        .iter()
        .filter(|f| {
            matches!(f, Frame::Send { payload, .. }
                if payload.first() == Some(&tag) && DevicePacket::decode(payload).is_ok())
        })
        .count()
}
