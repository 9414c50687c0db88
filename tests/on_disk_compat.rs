//! On-disk compatibility: data directories written by an earlier release open
//! and sync with this one.
//!
//! `tests/fixtures/store-v1/` holds two paired stores (`a/`, `b/`) written by
//! masq at commit 3001d33 (the last release before the M10 workspace split),
//! and `expected.json`: what that release read back from them. Each test copies
//! the fixture to a temp dir (opening a store writes to it), opens it with the
//! code under test and compares what it reads with `expected.json`. The last
//! test then syncs the two through a relay, which needs the stored identities,
//! peers, ratchet sessions and sync states to be readable as they were written.
//!
//! To make a new fixture (only when the format changes on purpose, with a
//! migration): `MASQ_WRITE_FIXTURE=1 cargo test --release --test on_disk_compat
//! -- --ignored write_fixture`.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use masq::internals::engine::{EngineConfig, SyncEngine};
use masq::relay::{start, RelayConfig};
use masq::Durability;
use masq::ListOptions;
use masq::{ChangeOp, Store, StoreOptions};
use serde_json::{json, Value};
use support::eventually;

const T: Duration = Duration::from_secs(60);

fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1")
}

fn open(dir: &Path) -> Store {
    Store::open_with(
        dir,
        StoreOptions {
            durability: Durability::Fsync,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Everything a store holds that a user or a peer relies on, read through the
/// public API, in a stable order.
fn snapshot(store: &Store) -> Value {
    let db = store.db();
    let me = masq_store::sync::peers::load_or_create_identity(db).unwrap();
    let peers: Vec<Value> = masq_store::sync::peers::peers(db)
        .unwrap()
        .into_iter()
        .map(|(id, p)| json!({"id": id.to_string(), "public_key": p.public_key, "name": p.name, "added": p.added}))
        .collect();
    let origins: Vec<Value> = masq::internals::registry::origins(db)
        .unwrap()
        .into_iter()
        .map(|o| json!({"origin": o.origin, "app": o.app, "state": format!("{:?}", o.state), "since": o.since}))
        .collect();
    let natives: Vec<Value> = masq::internals::registry::natives(db)
        .unwrap()
        .into_iter()
        .map(|n| json!({"name": n.name, "token_hash": n.token_hash, "since": n.since}))
        .collect();
    let mut apps = serde_json::Map::new();
    for name in store.apps().unwrap() {
        let app = store.app(&name).unwrap();
        let mut buckets = serde_json::Map::new();
        for bucket in ["settings", "b"] {
            let b = app.bucket(bucket).unwrap();
            let entries = b.list(&ListOptions::default()).unwrap();
            let conflicts: Vec<Value> = entries
                .iter()
                .map(|(k, _)| json!([k, b.conflicts(k).unwrap().len()]))
                .collect();
            buckets.insert(
                bucket.into(),
                json!({"entries": entries, "conflict_counts": conflicts}),
            );
        }
        let docs = app.docs();
        let mut ids = docs.list().unwrap();
        ids.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        let docs: Vec<Value> = ids
            .iter()
            .map(|id| {
                let mut heads: Vec<String> =
                    docs.heads(id).unwrap().iter().map(|h| h.to_string()).collect();
                heads.sort();
                let history = docs.history(id).unwrap();
                json!({
                    "id": id.as_str(),
                    "json": docs.get(id).unwrap(),
                    "heads": heads,
                    "history": history.iter().map(|h| json!([h.hash, h.seq, h.message])).collect::<Vec<_>>(),
                    "exports": !docs.export(id).unwrap().is_empty(),
                })
            })
            .collect();
        apps.insert(name, json!({"buckets": buckets, "docs": docs}));
    }
    json!({
        "device_id": me.device_id().to_string(),
        "device_name": masq_store::sync::peers::device_name(db).unwrap(),
        "peers": peers,
        "origins": origins,
        "natives": natives,
        "apps": apps,
    })
}

/// Copies a fixture store into a fresh temp dir with the modes a store wants.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    copy_dir(&fixture_root().join(name), dst.path());
    dst
}

fn copy_dir(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_root().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_store_written_by_the_previous_release_reads_back_the_same() {
    let expected = expected();
    for name in ["a", "b"] {
        let dir = copy_fixture(name);
        let store = open(dir.path());
        let got = snapshot(&store);
        assert_eq!(got, expected[name], "store {name} reads back differently");
        // It takes new writes, and still reads everything after a reopen.
        store
            .app("notes")
            .unwrap()
            .bucket("settings")
            .unwrap()
            .put("after-upgrade", &json!(true))
            .unwrap();
        assert!(store.close());
        let store = open(dir.path());
        assert_eq!(
            store
                .app("notes")
                .unwrap()
                .bucket("settings")
                .unwrap()
                .get("after-upgrade")
                .unwrap(),
            Some(json!(true))
        );
        let mut again = snapshot(&store);
        again["apps"]["notes"]["buckets"]["settings"] =
            expected[name]["apps"]["notes"]["buckets"]["settings"].clone();
        assert_eq!(again, expected[name]);
        store.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_written_by_the_previous_release_keep_syncing() {
    let relay = start(RelayConfig::loopback_any_port()).await.unwrap();
    let (da, db) = (copy_fixture("a"), copy_fixture("b"));
    let (a, b) = (open(da.path()), open(db.path()));
    let cfg = || EngineConfig {
        relay_url: relay.url(),
        resync_interval: Duration::from_millis(500),
    };
    let ea = SyncEngine::start_with(a.clone(), cfg()).unwrap();
    let eb = SyncEngine::start_with(b.clone(), cfg()).unwrap();
    // Writes on both sides after the upgrade, over the sessions the old
    // release stored.
    a.app("notes")
        .unwrap()
        .bucket("b")
        .unwrap()
        .put("from-a", &json!("new a"))
        .unwrap();
    b.app("notes")
        .unwrap()
        .bucket("b")
        .unwrap()
        .put("from-b", &json!("new b"))
        .unwrap();
    let doc = expected()["a"]["apps"]["notes"]["docs"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = masq::DocId::parse(&doc).unwrap();
    a.app("notes")
        .unwrap()
        .docs()
        .change(
            &doc,
            &[ChangeOp::Put {
                path: "/upgraded".into(),
                value: json!(1),
            }],
            None,
        )
        .unwrap();
    eventually(
        "writes made after the upgrade reach the other store",
        T,
        || {
            let get =
                |s: &Store, k: &str| s.app("notes").unwrap().bucket("b").unwrap().get(k).unwrap();
            get(&b, "from-a") == Some(json!("new a"))
                && get(&a, "from-b") == Some(json!("new b"))
                && b.app("notes")
                    .unwrap()
                    .docs()
                    .get(&doc)
                    .unwrap()
                    .get("upgraded")
                    == Some(&json!(1))
        },
    )
    .await;
    ea.shutdown().await;
    eb.shutdown().await;
}

/// Writes `tests/fixtures/store-v1/` with the code under test. Run it only
/// to make a new fixture on purpose (see the module docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn write_fixture() {
    assert_eq!(
        std::env::var("MASQ_WRITE_FIXTURE").as_deref(),
        Ok("1"),
        "set MASQ_WRITE_FIXTURE=1 to overwrite the committed fixture"
    );
    let root = fixture_root();
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let relay = start(RelayConfig::loopback_any_port()).await.unwrap();
    let url = relay.url();
    let (a, b) = (open(&root.join("a")), open(&root.join("b")));
    masq_store::sync::peers::set_device_name(a.db(), "fixture-a").unwrap();
    masq_store::sync::peers::set_device_name(b.db(), "fixture-b").unwrap();
    let inv = masq::internals::pairing::Inviter::start(a.clone(), &url)
        .await
        .unwrap();
    let uri = inv.invite().to_uri();
    let (yes_a, yes_b) = masq::internals::two_users_comparing_codes();
    let (pa, pb) = tokio::join!(
        inv.wait(yes_a),
        masq::internals::pairing::join(&b, &uri, yes_b)
    );
    assert_eq!(pa.unwrap().safety_code, pb.unwrap().safety_code);
    masq::internals::registry::request(a.db(), "http://notes.example", "notes").unwrap();
    masq::internals::registry::approve(a.db(), "http://notes.example", None).unwrap();
    masq::internals::registry::request(a.db(), "http://evil.example", "notes").unwrap();
    masq::internals::registry::deny(a.db(), "http://evil.example").unwrap();
    masq::internals::registry::add_native(b.db(), "cli-notes").unwrap();

    // Concurrent writes of one key on both sides before they sync: a conflict.
    for (s, v) in [(&a, "dark"), (&b, "light")] {
        let notes = s.app("notes").unwrap();
        notes
            .bucket("settings")
            .unwrap()
            .put("theme", &json!(v))
            .unwrap();
    }
    let notes = a.app("notes").unwrap();
    let settings = notes.bucket("settings").unwrap();
    settings.put("count", &json!(42)).unwrap();
    settings
        .put("nested", &json!({"a": [1, 2, {"b": null}], "s": "ü✓"}))
        .unwrap();
    settings.put("gone", &json!(1)).unwrap();
    settings.delete("gone").unwrap();
    notes
        .bucket("b")
        .unwrap()
        .put_many((0..50).map(|i| (format!("k{i:03}"), json!(i))))
        .unwrap();
    let docs = notes.docs();
    let doc = docs
        .create_with(
            &[
                ChangeOp::PutText {
                    path: "/title".into(),
                    value: "hello".into(),
                },
                ChangeOp::Put {
                    path: "/tags".into(),
                    value: json!(["x", "y"]),
                },
            ],
            Some("first"),
        )
        .unwrap();
    docs.change(
        &doc,
        &[ChangeOp::Splice {
            path: "/title".into(),
            index: 5,
            delete: 0,
            insert: " world".into(),
        }],
        Some("second"),
    )
    .unwrap();
    let doomed = docs
        .create_with(
            &[ChangeOp::Put {
                path: "/x".into(),
                value: json!(1),
            }],
            None,
        )
        .unwrap();
    docs.delete(&doomed).unwrap();
    let photos = b.app("photos").unwrap();
    photos
        .docs()
        .create_with(
            &[ChangeOp::Put {
                path: "/album".into(),
                value: json!("summer"),
            }],
            None,
        )
        .unwrap();
    photos
        .bucket("settings")
        .unwrap()
        .put("quality", &json!("high"))
        .unwrap();

    let cfg = || EngineConfig {
        relay_url: url.clone(),
        resync_interval: Duration::from_millis(500),
    };
    let ea = SyncEngine::start_with(a.clone(), cfg()).unwrap();
    let eb = SyncEngine::start_with(b.clone(), cfg()).unwrap();
    eventually("the fixture stores converge", T, || {
        let strip = |v: Value| {
            let mut v = v["apps"].clone();
            for app in v.as_object_mut().unwrap().values_mut() {
                app["docs"]
                    .as_array_mut()
                    .unwrap()
                    .iter_mut()
                    .for_each(|d| d["history"] = Value::Null);
            }
            v
        };
        a.flush_kv().unwrap();
        b.flush_kv().unwrap();
        let (sa, sb) = (snapshot(&a), snapshot(&b));
        strip(sa.clone()) == strip(sb.clone())
            && sa["apps"]["photos"]["docs"]
                .as_array()
                .is_some_and(|d| d.len() == 1)
            && sb["apps"]["notes"]["buckets"]["b"]["entries"]
                .as_array()
                .is_some_and(|d| d.len() == 50)
            && sb["apps"]["notes"]["buckets"]["settings"]["conflict_counts"]
                .as_array()
                .is_some_and(|c| c.iter().any(|e| e[0] == "theme" && e[1] == 2))
    })
    .await;
    // Let the last acknowledgements settle so both sides' sync states are at rest.
    tokio::time::sleep(Duration::from_secs(2)).await;
    ea.shutdown().await;
    eb.shutdown().await;
    let expected = json!({"a": snapshot(&a), "b": snapshot(&b)});
    assert!(a.close() && b.close());
    std::fs::write(
        root.join("expected.json"),
        serde_json::to_string_pretty(&expected).unwrap() + "\n",
    )
    .unwrap();
}
