//! M14 with real processes: two `masq store` daemons paired through a relay,
//! their sync preferences changed with the `masq sync` CLI (the admin ops
//! the manager page uses), writes made and read with the CLI.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use masq::api::Request;
use serde_json::{json, Value};
use support::{cli, eventually, try_cli, Daemon};

const T: Duration = Duration::from_secs(30);

fn get(d: &Daemon, app: &str, key: &str) -> Option<Value> {
    try_cli(&d.path(), &["kv", "get", "--app", app, key]).map(|s| serde_json::from_str(&s).unwrap())
}

fn put(d: &Daemon, app: &str, key: &str, v: Value) {
    cli(&d.path(), &["kv", "put", "--app", app, key, &v.to_string()]);
}

/// `masq sync show` (JSON).
fn show(d: &Daemon) -> Value {
    serde_json::from_str(&cli(&d.path(), &["sync", "show"])).unwrap()
}

/// What `d`'s one paired device said it takes, if it did.
fn remote(d: &Daemon) -> Option<Value> {
    let v = show(d);
    let r = v["devices"][0]["remote"].clone();
    (!r.is_null()).then_some(r)
}

/// A relay and two daemons using it, paired (A invited, B joined).
async fn paired() -> (masq::relay::RelayHandle, Daemon, Daemon) {
    let relay = masq::relay::start(masq::relay::RelayConfig::loopback_any_port())
        .await
        .unwrap();
    let a = Daemon::start(Some(&relay.url()));
    let b = Daemon::start(Some(&relay.url()));
    support::pair_admins(&a.admin().await, &b.admin().await).await;
    (relay, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_turned_off_towards_a_device_stays_off_both_ways_until_back_on() {
    let (_relay, a, b) = paired().await;
    let fp_b = show(&a)["devices"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let after: Value = serde_json::from_str(&cli(
        &a.path(),
        &["sync", "set", "--app", "photos", "--device", &fp_b, "off"],
    ))
    .unwrap();
    assert_eq!(after["devices"][0]["apps"]["photos"], json!(false));
    let status: Value = serde_json::from_str(&cli(&a.path(), &["status"])).unwrap();
    assert_eq!(status["peers"][0]["apps_off"], json!(["photos"]));
    // B hears it from A.
    eventually("B knows A does not take photos", T, || {
        remote(&b).is_some_and(|r| r["off"] == json!(["photos"]))
    })
    .await;
    let photo = cli(
        &a.path(),
        &[
            "doc",
            "create",
            "--app",
            "photos",
            "--json",
            r#"{"p":"a's photo"}"#,
        ],
    );
    put(&a, "photos", "from-a", json!(1));
    put(&a, "notes", "from-a", json!(1));
    put(&b, "photos", "from-b", json!(2));
    put(&b, "notes", "from-b", json!(2));
    eventually("notes both ways", T, || {
        get(&b, "notes", "from-a") == Some(json!(1)) && get(&a, "notes", "from-b") == Some(json!(2))
    })
    .await;
    // A later notes write arrives too: sync ran past the photos writes.
    put(&a, "notes", "later", json!(3));
    eventually("the later notes write", T, || {
        get(&b, "notes", "later") == Some(json!(3))
    })
    .await;
    assert_eq!(get(&b, "photos", "from-a"), None);
    assert_eq!(get(&a, "photos", "from-b"), None);
    assert_eq!(cli(&b.path(), &["doc", "list", "--app", "photos"]), "");
    // The app can tell its user: photos does not sync with B here.
    let token = a.app_token("photos").await;
    let app = a.client("photos", &token).await;
    let status = app.sync_status().await.unwrap();
    assert_eq!(status["app"], json!("photos"));
    assert_eq!(status["devices"][0]["on"], json!(false));
    app.close().await;
    // Back on: both catch up in full.
    cli(
        &a.path(),
        &["sync", "set", "--app", "photos", "--device", &fp_b, "on"],
    );
    eventually("photos both ways after on", T, || {
        get(&b, "photos", "from-a") == Some(json!(1))
            && get(&a, "photos", "from-b") == Some(json!(2))
            && try_cli(&b.path(), &["doc", "show", "--app", "photos", &photo]).is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_across_a_restart_and_resume_catches_up() {
    let (relay, a, b) = paired().await;
    put(&a, "notes", "before", json!(0));
    eventually("sync runs", T, || get(&b, "notes", "before").is_some()).await;
    let paused: Value = serde_json::from_str(&cli(&a.path(), &["sync", "pause"])).unwrap();
    assert_eq!(paused["paused"], json!(true));
    let status: Value = serde_json::from_str(&cli(&a.path(), &["status"])).unwrap();
    assert_eq!(status["sync_paused"], json!(true));
    eventually("B knows A paused", T, || {
        remote(&b).is_some_and(|r| r["paused"] == json!(true))
    })
    .await;
    // Local writes still succeed on both.
    put(&a, "notes", "a1", json!(1));
    put(&b, "notes", "b1", json!(1));
    // A restarts: still paused, and says so again in its new session.
    let dir = a.stop();
    let a = Daemon::start_in(dir, Some(&relay.url()));
    assert_eq!(show(&a)["paused"], json!(true));
    eventually("B hears A is still paused", T, || {
        remote(&b).is_some_and(|r| r["paused"] == json!(true))
    })
    .await;
    put(&a, "notes", "a2", json!(2));
    // Sessions are up and both devices told each other what they take; a
    // few resync rounds of nothing (a negative check: no timing is measured).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get(&b, "notes", "a1"), None);
    assert_eq!(get(&b, "notes", "a2"), None);
    assert_eq!(get(&a, "notes", "b1"), None);
    // Resume: everything missed arrives, both ways.
    let resumed: Value = serde_json::from_str(&cli(&a.path(), &["sync", "resume"])).unwrap();
    assert_eq!(resumed["paused"], json!(false));
    eventually("everything after resume", T, || {
        get(&b, "notes", "a1") == Some(json!(1))
            && get(&b, "notes", "a2") == Some(json!(2))
            && get(&a, "notes", "b1") == Some(json!(1))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sync_settings_get_clear_errors() {
    let (_relay, a, _b) = paired().await;
    let admin = a.admin().await;
    let err = admin
        .call(
            None,
            Request::SyncSet {
                app: "photos".into(),
                device: "ffff".into(),
                on: false,
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no paired device"), "{err}");
    let fp = show(&a)["devices"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let err = admin
        .call(
            None,
            Request::SyncSet {
                app: "bad name/..".into(),
                device: fp,
                on: false,
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("app"), "{err}");
    // An app may read but not change the preferences.
    let token = a.app_token("notes").await;
    let app = a.client("notes", &token).await;
    let err = app.request(Request::SyncPause {}).await.unwrap_err();
    assert!(err.to_string().contains("admin"), "{err}");
    assert_eq!(show(&a)["paused"], json!(false));
    app.close().await;
}

/// `devices.remove` and `devices.name` answer with the core's codes
/// (`masq_core::device::ops`), the same a page in peer mode answers:
/// `not_found` for no match, `bad_request` for an empty name or device
/// name; a fingerprint prefix in any case finds the device.
#[tokio::test(flavor = "multi_thread")]
async fn device_ops_answer_the_same_codes_as_a_page() {
    let (_relay, a, _b) = paired().await;
    let admin = a.admin().await;
    let code = |r: Result<Value, masq::api::ApiError>| r.unwrap_err().code;
    let remove = |device: &str| Request::DevicesRemove {
        device: device.into(),
    };
    assert_eq!(
        code(admin.call(None, remove("ffff-ffff")).await),
        "not_found"
    );
    assert_eq!(code(admin.call(None, remove("  ")).await), "bad_request");
    let name = |name: &str| Request::DevicesName { name: name.into() };
    assert_eq!(code(admin.call(None, name("")).await), "bad_request");
    assert_eq!(
        code(admin.call(None, name(&"x".repeat(256))).await),
        "bad_request"
    );
    admin.call(None, name("  laptop ")).await.unwrap();
    let list = admin.call(None, Request::DevicesList {}).await.unwrap();
    assert_eq!(list["me"]["name"], json!("laptop"));
    let fp = list["devices"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(list["devices"][0]["syncing"].is_boolean());
    let removed = admin
        .call(None, remove(&fp[..6].to_ascii_uppercase()))
        .await
        .unwrap();
    assert_eq!(removed["removed"], list["devices"][0]["device"]);
    let list = admin.call(None, Request::DevicesList {}).await.unwrap();
    assert_eq!(list["devices"], json!([]));
    assert_eq!(list["removed"][0]["fingerprint"], json!(fp));
}
