//! The relay over TLS (`masq relay --tls-cert --tls-key`, devices on wss://):
//! a self-signed certificate made here, trusted by the devices through
//! MASQ_RELAY_CA; two stores pair and sync through it. Its own test binary,
//! since it sets a process-wide environment variable.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use masq::relay::{start, RelayConfig};
use masq_core::crypto::DeviceKeypair;
use masq_relay::client::{RelayClient, RelayEvent};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_pair_and_sync_through_a_tls_relay() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let relay = start(RelayConfig {
        tls: Some(masq_relay::tls::server_config(&cert, &key).unwrap()),
        ..RelayConfig::loopback_any_port()
    })
    .await
    .unwrap();
    let url = format!("wss://localhost:{}", relay.local_addr().port());

    // Without trusting the certificate, a device refuses the relay.
    let kp = DeviceKeypair::generate();
    assert!(RelayClient::connect(&url, &kp).await.is_err());
    // Plain ws:// to a TLS relay fails too.
    let plain = format!("ws://127.0.0.1:{}", relay.local_addr().port());
    assert!(RelayClient::connect(&plain, &kp).await.is_err());
    // Bad certificate files are clear errors.
    let missing = dir.path().join("nope.pem");
    assert!(masq_relay::tls::server_config(&missing, &key).is_err());
    assert!(masq_relay::tls::server_config(&key, &key).is_err());

    std::env::set_var(masq_relay::tls::RELAY_CA_ENV, &cert);
    let mut a = RelayClient::connect(&url, &kp).await.unwrap();
    let kb = DeviceKeypair::generate();
    let mut b = RelayClient::connect(&url, &kb).await.unwrap();
    a.send(kb.device_id(), b"over tls".to_vec()).await.unwrap();
    let got = tokio::time::timeout(T, async {
        loop {
            match b.next_event().await {
                Some(RelayEvent::Message { payload, .. }) => break payload,
                Some(_) => continue,
                None => panic!("closed"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, b"over tls");

    // Two stores pair and sync through it.
    let (mut da, mut db) = (device("a"), device("b"));
    pair(&da, &db, &url).await;
    da.start(&url);
    db.start(&url);
    let bucket = |d: &Device| d.store.app("app").unwrap().bucket("b").unwrap();
    bucket(&da).put("k", &json!("through tls")).unwrap();
    eventually("b has a's key", T, || {
        bucket(&db).get("k").unwrap() == Some(json!("through tls"))
    })
    .await;
    da.stop().await;
    db.stop().await;
}
