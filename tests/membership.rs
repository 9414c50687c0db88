//! M12, the device group with real processes: four `masq store` daemons
//! paired through a relay, a removal made with the `masq devices` CLI, and
//! stores stopped and started so that the removal can only reach the last
//! one through a device other than the remover.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use masq::api::Request;
use serde_json::{json, Value};
use support::{cli, eventually, try_cli, Daemon};

const T: Duration = Duration::from_secs(60);

fn get(d: &Daemon, key: &str) -> Option<Value> {
    try_cli(&d.path(), &["kv", "get", "--app", "notes", key])
        .map(|s| serde_json::from_str(&s).unwrap())
}

fn put(d: &Daemon, key: &str, v: Value) {
    cli(
        &d.path(),
        &["kv", "put", "--app", "notes", key, &v.to_string()],
    );
}

/// The `devices.list` answer (the JSON behind `masq devices list`).
async fn devices(d: &Daemon) -> Value {
    d.admin()
        .await
        .call(None, Request::DevicesList {})
        .await
        .unwrap()
}

/// The fingerprints of `d`'s paired devices.
async fn members(d: &Daemon) -> Vec<String> {
    devices(d).await["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["fingerprint"].as_str().unwrap().to_string())
        .collect()
}

async fn fingerprint(d: &Daemon) -> String {
    devices(d).await["me"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `inviter` invites, `joiner` joins.
async fn pair(inviter: &Daemon, joiner: &Daemon) {
    support::pair_admins(&inviter.admin().await, &joiner.admin().await).await;
}

async fn eventually_async<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + T;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The story of the issue: A, B, C and D are one user's devices; C is
/// offline; A removes B (stolen); A goes offline; C comes back and hears of
/// the removal from D alone. C must then refuse B: it drops B's session,
/// takes none of B's new writes and passes none on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_reaches_an_offline_device_through_another_and_holds() {
    let relay = masq::relay::start(masq::relay::RelayConfig::loopback_any_port())
        .await
        .unwrap();
    let url = relay.url();
    let a = Daemon::start(Some(&url));
    let b = Daemon::start(Some(&url));
    let c = Daemon::start(Some(&url));
    let d = Daemon::start(Some(&url));
    for joiner in [&b, &c, &d] {
        pair(&a, joiner).await;
    }
    let [fa, fb, fc, fd] = [
        fingerprint(&a).await,
        fingerprint(&b).await,
        fingerprint(&c).await,
        fingerprint(&d).await,
    ];
    // Introductions run their course: everyone holds the three others.
    for (dev, me) in [(&a, &fa), (&b, &fb), (&c, &fc), (&d, &fd)] {
        eventually_async("every device holds the three others", || async {
            let mut m = members(dev).await;
            m.sort();
            let mut want: Vec<String> = [&fa, &fb, &fc, &fd]
                .into_iter()
                .filter(|f| *f != me)
                .cloned()
                .collect();
            want.sort();
            m == want
        })
        .await;
    }
    // Who brought whom in is recorded: C was paired at A, and B learned of
    // C from A's introduction.
    let at_b = devices(&b).await;
    let c_at_b = at_b["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["fingerprint"] == json!(fc))
        .unwrap()
        .clone();
    assert_eq!(c_at_b["added_by"], json!(fa));
    // Sessions everywhere: B's write reaches C (and D).
    put(&b, "before", json!("from b"));
    eventually("B's write reaches C and D", T, || {
        get(&c, "before").is_some() && get(&d, "before").is_some()
    })
    .await;

    // C goes offline; A removes B; D hears it from A.
    let c_dir = c.stop();
    let out = support::masq_cli(&a.path())
        .args(["devices", "remove", &fb])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    eventually_async("D drops B", || async { !members(&d).await.contains(&fb) }).await;
    let removed = devices(&d).await["removed"].clone();
    assert_eq!(removed[0]["fingerprint"], json!(fb));
    assert_eq!(removed[0]["by"], json!(fa), "the log says who removed B");
    // A goes offline before C returns: C can learn it only from D.
    let _a_dir = a.stop();
    let c = Daemon::start_in(c_dir, Some(&url));
    eventually_async("C hears of B's removal through D", || async {
        !members(&c).await.contains(&fb)
    })
    .await;
    assert_eq!(devices(&c).await["removed"][0]["by"], json!(fa));

    // B, stolen and still running, writes; D then writes a marker. Once the
    // marker is at C, everything B could have sent before it has had its
    // chance: none of it may be there.
    put(&b, "stolen", json!("thief's write"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    put(&d, "marker", json!("from d"));
    eventually("D's later write reaches C", T, || {
        get(&c, "marker").is_some()
    })
    .await;
    assert_eq!(
        get(&c, "stolen"),
        None,
        "C took a write of a removed device"
    );
    assert_eq!(
        get(&d, "stolen"),
        None,
        "D took a write of a removed device"
    );
    // And C's sync stays healthy with D both ways.
    put(&c, "after", json!("from c"));
    eventually("C's write reaches D", T, || get(&d, "after").is_some()).await;
    assert_eq!(
        get(&b, "after"),
        None,
        "a removed device received a new write"
    );
}
