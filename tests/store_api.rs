//! Round trips of every document and KV operation on a real fjall store in a
//! temp dir, reopening, subscriptions, and bad input.
#![allow(clippy::unwrap_used)]

use masq::ChangeOp;
use masq::Event;
use masq::{Error, ListOptions, Store, StoreOptions};
use serde_json::json;

fn open_buffered(dir: &std::path::Path) -> Store {
    Store::open_with(
        dir,
        StoreOptions {
            durability: masq::Durability::Buffered,
            ..Default::default()
        },
    )
    .unwrap()
}

fn op(v: serde_json::Value) -> ChangeOp {
    serde_json::from_value(v).unwrap()
}

#[test]
fn document_round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (id, heads_v1);
    {
        let store = Store::open(dir.path()).unwrap();
        let docs = store.app("notes").unwrap().docs();
        id = docs
            .create_with(
                &[op(json!({"op":"put","path":"/title","value":"first"}))],
                Some("init"),
            )
            .unwrap();
        heads_v1 = docs.heads(&id).unwrap();
        docs.change(
            &id,
            &[
                op(json!({"op":"put","path":"/title","value":"second"})),
                op(json!({"op":"put_text","path":"/body","value":"hello"})),
                op(json!({"op":"splice","path":"/body","index":5,"insert":", world"})),
                op(json!({"op":"put_counter","path":"/views","value":10})),
                op(json!({"op":"increment","path":"/views","by":-3})),
                op(json!({"op":"put","path":"/tags","value":["a","c"]})),
                op(json!({"op":"insert","path":"/tags/1","value":"b"})),
                op(json!({"op":"insert","path":"/tags/-","value":{"deep":[1,2]}})),
                op(json!({"op":"put","path":"/gone","value":null})),
                op(json!({"op":"delete","path":"/gone"})),
            ],
            Some("edit"),
        )
        .unwrap();
        // Direct transaction access.
        docs.transact(&id, Some("raw"), |tx| {
            use automerge::transaction::Transactable;
            tx.put(automerge::ROOT, "raw", 42_i64)?;
            Ok(())
        })
        .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let docs = store.app("notes").unwrap().docs();
    let expected = json!({
        "title": "second", "body": "hello, world", "views": 7,
        "tags": ["a", "b", "c", {"deep": [1, 2]}], "raw": 42
    });
    assert_eq!(docs.get(&id).unwrap(), expected);
    assert_eq!(
        docs.get_at(&id, &heads_v1).unwrap(),
        json!({"title": "first"})
    );
    let hist = docs.history(&id).unwrap();
    let msgs: Vec<_> = hist
        .iter()
        .map(|h| h.message.clone().unwrap_or_default())
        .collect();
    assert_eq!(msgs, vec!["init", "edit", "raw"]);
    assert_eq!(hist[1].deps, vec![hist[0].hash.clone()]);
    assert_eq!(docs.list().unwrap(), vec![id.clone()]);

    // Export and import keep the full history.
    let bytes = docs.export(&id).unwrap();
    let copy = docs.import(&bytes).unwrap();
    assert_eq!(docs.get(&copy).unwrap(), expected);
    assert_eq!(docs.history(&copy).unwrap().len(), 3);

    // Delete leaves a tombstone.
    docs.delete(&id).unwrap();
    assert!(matches!(docs.get(&id), Err(Error::DocDeleted(_))));
    assert_eq!(docs.list().unwrap(), vec![copy.clone()]);
    drop(docs);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let docs = store.app("notes").unwrap().docs();
    assert!(matches!(docs.get(&id), Err(Error::DocDeleted(_))));
    assert_eq!(docs.get(&copy).unwrap(), expected);
}

#[test]
fn many_changes_compact_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let store = open_buffered(dir.path());
        let docs = store.app("a").unwrap().docs();
        id = docs
            .create_with(&[op(json!({"op":"put_text","path":"/t","value":""}))], None)
            .unwrap();
        for i in 0..600 {
            docs.change(
                &id,
                &[op(
                    json!({"op":"splice","path":"/t","index":i,"insert":"x"}),
                )],
                None,
            )
            .unwrap();
        }
        let meta = store.db().doc_meta("a", id.as_str()).unwrap().unwrap();
        assert!(
            meta.snapshot_bytes > 0,
            "compaction should have written a snapshot"
        );
        assert!(
            !masq_store::storage::doc_chunks::needs_compaction(&meta),
            "after each write the layout is within the compaction policy: {meta:?}"
        );
        // Compaction deleted every folded chunk: what is stored is the
        // snapshot plus exactly the live incremental chunks.
        let mut prefix = masq_store::storage::doc_chunks::doc_key("a", id.as_str());
        prefix.push(0);
        let stored = store.db().chunks.prefix(&prefix).count();
        assert_eq!(stored, 1 + meta.incr_chunks as usize, "{meta:?}");
    }
    let store = Store::open(dir.path()).unwrap();
    let docs = store.app("a").unwrap().docs();
    assert_eq!(docs.get(&id).unwrap()["t"].as_str().unwrap().len(), 600);
    assert_eq!(docs.history(&id).unwrap().len(), 601);
}

#[test]
fn kv_round_trip_list_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let b = store.app("todo").unwrap().bucket("items").unwrap();
        b.put("a", &json!(1)).unwrap();
        b.put("b/1", &json!({"x": [1, 2]})).unwrap();
        b.put_many((0..50).map(|i| (format!("c{i:03}"), json!(i))))
            .unwrap();
        assert!(b.delete("a").unwrap());
        assert!(!b.delete("a").unwrap());
        // Another app and another bucket do not see these keys.
        assert_eq!(
            store
                .app("other")
                .unwrap()
                .bucket("items")
                .unwrap()
                .get("b/1")
                .unwrap(),
            None
        );
        assert_eq!(
            store
                .app("todo")
                .unwrap()
                .bucket("misc")
                .unwrap()
                .get("b/1")
                .unwrap(),
            None
        );
    }
    let store = Store::open(dir.path()).unwrap();
    let b = store.app("todo").unwrap().bucket("items").unwrap();
    assert_eq!(b.get("a").unwrap(), None);
    assert_eq!(b.get("b/1").unwrap(), Some(json!({"x": [1, 2]})));
    let page = b
        .list(&ListOptions {
            prefix: "c".into(),
            start_after: Some("c010".into()),
            limit: Some(5),
        })
        .unwrap();
    let keys: Vec<_> = page.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec!["c011", "c012", "c013", "c014", "c015"]);
    assert_eq!(b.list(&ListOptions::default()).unwrap().len(), 51);
    assert_eq!(b.conflicts("b/1").unwrap(), vec![json!({"x": [1, 2]})]);
}

#[test]
fn subscriptions_see_local_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let app = store.app("w").unwrap();
    let b = app.bucket("b").unwrap();
    let mut watch = b.watch("user/");
    let docs = app.docs();
    let id = docs.create().unwrap();
    let mut sub = docs.subscribe(Some(id.clone()));
    b.put("other", &json!(0)).unwrap();
    b.put("user/1", &json!("ann")).unwrap();
    b.delete("user/1").unwrap();
    match watch.try_next().unwrap() {
        Event::Kv { key, value, .. } => {
            assert_eq!(key, "user/1");
            assert_eq!(value, Some(json!("ann")));
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(matches!(
        watch.try_next().unwrap(),
        Event::Kv { value: None, .. }
    ));
    assert!(watch.try_next().is_none());
    docs.change(&id, &[op(json!({"op":"put","path":"/a","value":1}))], None)
        .unwrap();
    match sub.try_next().unwrap() {
        Event::Doc { doc, patches, .. } => {
            assert_eq!(doc, id);
            assert_eq!(patches[0]["action"], "put");
            assert_eq!(patches[0]["path"], json!(["a"]));
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(
        store.app("bad name!"),
        Err(Error::InvalidName { .. })
    ));
    let app = store.app("x").unwrap();
    let docs = app.docs();
    let id = docs
        .create_with(&[op(json!({"op":"put","path":"/s","value":"str"}))], None)
        .unwrap();
    let cases = vec![
        (
            json!({"op":"put","path":"/s/inner","value":1}),
            "wrong_type",
        ),
        (json!({"op":"put","path":"no-slash","value":1}), "bad_path"),
        (json!({"op":"increment","path":"/s"}), "wrong_type"),
        (
            json!({"op":"splice","path":"/s","index":0,"insert":"x"}),
            "wrong_type",
        ),
        (json!({"op":"delete","path":"/missing"}), "bad_path"),
        (
            json!({"op":"put","path":"/missing/deeper","value":1}),
            "bad_path",
        ),
    ];
    for (o, code) in cases {
        let err = docs.change(&id, &[op(o.clone())], None).unwrap_err();
        assert_eq!(err.code(), code, "{o}: {err}");
    }
    // A failed op in a multi-op change applies nothing.
    let before = docs.get(&id).unwrap();
    docs.change(
        &id,
        &[
            op(json!({"op":"put","path":"/new","value":1})),
            op(json!({"op":"increment","path":"/s"})),
        ],
        None,
    )
    .unwrap_err();
    assert_eq!(docs.get(&id).unwrap(), before);
    assert!(matches!(
        docs.get(&masq::DocId::random()),
        Err(Error::UnknownDoc(_))
    ));
    assert!(masq::DocId::parse("not an id").is_err());
    let b = app.bucket("b").unwrap();
    let huge = json!("x".repeat(masq_store::kv::MAX_VALUE_BYTES + 1));
    assert!(matches!(b.put("k", &huge), Err(Error::TooLarge { .. })));
    assert!(matches!(
        b.put("", &json!(1)),
        Err(Error::InvalidName { .. })
    ));
    assert!(docs.import(b"definitely not automerge").is_err());
    // The store still works after all that.
    b.put("k", &json!(1)).unwrap();
    assert_eq!(b.get("k").unwrap(), Some(json!(1)));
}

#[test]
fn corrupt_chunk_names_document_and_others_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let (good, bad);
    {
        let store = Store::open(dir.path()).unwrap();
        let docs = store.app("c").unwrap().docs();
        good = docs
            .create_with(&[op(json!({"op":"put","path":"/v","value":1}))], None)
            .unwrap();
        bad = docs
            .create_with(&[op(json!({"op":"put","path":"/v","value":2}))], None)
            .unwrap();
        // Overwrite bad's first chunk with garbage, directly in fjall.
        let mut key = b"c\0".to_vec();
        key.extend_from_slice(bad.as_str().as_bytes());
        key.extend_from_slice(b"\0I");
        key.extend_from_slice(&0u64.to_be_bytes());
        store
            .db()
            .chunks
            .insert(key, b"\x85\x6f\x4a\x83garbage".to_vec())
            .unwrap();
        store.db().persist_all().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let docs = store.app("c").unwrap().docs();
    match docs.get(&bad) {
        Err(Error::Corrupt { doc, .. }) => assert_eq!(doc, bad.to_string()),
        other => panic!("expected corrupt error, got {other:?}"),
    }
    assert_eq!(docs.get(&good).unwrap(), json!({"v": 1}));
}

#[test]
fn second_open_of_same_dir_is_refused_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(dir.path()).unwrap();
    match Store::open(dir.path()) {
        Err(Error::Locked(_)) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn concurrent_writers_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let b = store.app("cw").unwrap().bucket("b").unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let b = b.clone();
            s.spawn(move || {
                for i in 0..50 {
                    b.put(&format!("t{t}-{i}"), &json!(i)).unwrap();
                }
            });
        }
    });
    assert_eq!(
        b.list(&ListOptions {
            limit: Some(10_000),
            ..Default::default()
        })
        .unwrap()
        .len(),
        400
    );
}

#[test]
fn cache_stays_within_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 512 * 1024;
    let store = Store::open_with(
        dir.path(),
        StoreOptions {
            durability: masq::Durability::Buffered,
            cache_bytes: budget,
            ..Default::default()
        },
    )
    .unwrap();
    let docs = store.app("m").unwrap().docs();
    let mut ids = Vec::new();
    for i in 0..300 {
        ids.push(
            docs.create_with(&[op(json!({"op":"put","path":"/i","value":i}))], None)
                .unwrap(),
        );
    }
    let (_, bytes) = store.cache_usage();
    assert!(bytes <= budget, "cache uses {bytes} > {budget}");
    // Evicted documents load again on demand.
    assert_eq!(docs.get(&ids[0]).unwrap(), json!({"i": 0}));
}

/// Local KV writes are durable and readable at once, wait as pending records
/// until folded into their shard documents, survive a close with the folder
/// off, and are folded at the next open; a key written twice keeps its last
/// value in Automerge as in the index.
#[test]
fn pending_kv_writes_survive_close_and_fold_at_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let held = || StoreOptions {
        durability: masq::Durability::Buffered,
        fold_in_background: false,
        ..Default::default()
    };
    {
        let store = Store::open_with(dir.path(), held()).unwrap();
        let b = store.app("wb").unwrap().bucket("b").unwrap();
        // First write of each shard creates it (written at once); later ones wait.
        b.put_many((0..600).map(|i| (format!("k{i}"), json!({ "v": 0 }))))
            .unwrap();
        for i in 0..600 {
            b.put(&format!("k{i}"), &json!({ "v": i })).unwrap();
        }
        b.put("k7", &json!("last")).unwrap();
        assert!(b.delete("k8").unwrap());
        let pending = store.db().kv_pending.iter().count();
        assert!(pending >= 600, "only {pending} writes pending");
        assert_eq!(b.get("k7").unwrap(), Some(json!("last")));
        assert_eq!(b.get("k8").unwrap(), None);
        assert_eq!(b.get("k9").unwrap(), Some(json!({ "v": 9 })));
    }
    let store = Store::open(dir.path()).unwrap();
    store.flush_kv().unwrap();
    assert_eq!(store.db().kv_pending.iter().count(), 0);
    let b = store.app("wb").unwrap().bucket("b").unwrap();
    for i in (0..600).filter(|i| *i != 7 && *i != 8) {
        let key = format!("k{i}");
        // `conflicts` reads Automerge itself, not the index.
        assert_eq!(b.conflicts(&key).unwrap(), vec![json!({ "v": i })], "{key}");
        assert_eq!(b.get(&key).unwrap(), Some(json!({ "v": i })));
    }
    assert_eq!(b.conflicts("k7").unwrap(), vec![json!("last")]);
    assert!(b.conflicts("k8").unwrap().is_empty());
    assert_eq!(b.get("k8").unwrap(), None);
}

/// With the background folder on, writes reach Automerge without anyone
/// asking for it.
#[test]
fn the_folder_drains_pending_writes_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_buffered(dir.path());
    let b = store.app("wb").unwrap().bucket("b").unwrap();
    for i in 0..3000 {
        b.put(&format!("k{}", i % 700), &json!(i)).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.db().kv_pending.iter().count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pending writes were never folded"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for i in 2300..3000 {
        let key = format!("k{}", i % 700);
        assert_eq!(b.conflicts(&key).unwrap(), vec![json!(i)]);
    }
}

/// A shard holds at most `MAX_PENDING_PER_SHARD` pending writes: the put
/// that would pass the bound folds them (and itself) at once.
#[test]
fn a_full_pending_list_folds_inline() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path(),
        StoreOptions {
            durability: masq::Durability::Buffered,
            fold_in_background: false,
            ..Default::default()
        },
    )
    .unwrap();
    let b = store.app("wb").unwrap().bucket("b").unwrap();
    let shard = masq_store::kv::shard_of("seed");
    let keys: Vec<String> = (0..)
        .map(|i| format!("s{i}"))
        .filter(|k| masq_store::kv::shard_of(k) == shard)
        .take(masq_store::kv::MAX_PENDING_PER_SHARD + 50)
        .collect();
    b.put("seed", &json!(0)).unwrap(); // creates the shard
    let mut most = 0;
    for (i, k) in keys.iter().enumerate() {
        b.put(k, &json!(i)).unwrap();
        most = most.max(store.db().kv_pending.iter().count());
    }
    assert_eq!(most, masq_store::kv::MAX_PENDING_PER_SHARD);
    assert!(store.db().kv_pending.iter().count() < 60);
    // The index and Automerge agree.
    assert_eq!(b.conflicts(&keys[0]).unwrap(), vec![json!(0)]);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(b.get(k).unwrap(), Some(json!(i)));
    }
}

/// A change racing the deletion of its document either lands before the
/// deletion or is refused: it never writes the document back after it. The
/// deletion takes the document's lock too, and a change that waited for it
/// finds the document gone. Checked after a reopen, from what is on disk.
#[test]
fn a_change_racing_a_delete_never_brings_the_document_back() {
    let dir = tempfile::tempdir().unwrap();
    let rounds = 200;
    {
        let store = open_buffered(dir.path());
        let docs = store.app("notes").unwrap().docs();
        for round in 0..rounds {
            let id = docs.create().unwrap();
            let writer = {
                let docs = docs.clone();
                let id = id.clone();
                std::thread::spawn(move || {
                    let mut refused = 0;
                    for i in 0..20 {
                        match docs.change(
                            &id,
                            &[op(json!({"op":"put","path":"/n","value":i}))],
                            None,
                        ) {
                            Ok(_) => {}
                            Err(Error::DocDeleted(_) | Error::UnknownDoc(_)) => refused += 1,
                            Err(e) => panic!("round {round}: {e}"),
                        }
                    }
                    refused
                })
            };
            if round % 2 == 0 {
                std::thread::yield_now();
            }
            docs.delete(&id).unwrap();
            writer.join().unwrap();
            assert!(matches!(docs.get(&id), Err(Error::DocDeleted(_))));
        }
        assert!(
            docs.list().unwrap().is_empty(),
            "{:?}",
            docs.list().unwrap()
        );
        store.close();
    }
    let store = open_buffered(dir.path());
    let docs = store.app("notes").unwrap().docs();
    assert!(
        docs.list().unwrap().is_empty(),
        "came back: {:?}",
        docs.list().unwrap()
    );
}

/// Writers of every kind at once (document creates, changes and deletes, KV
/// puts that create shards and list them in the catalog, background folds)
/// take their locks through one ordered set, so none waits for another in a
/// cycle: this finishes, and every acknowledged write is there after a reopen.
#[test]
fn writers_of_every_kind_at_once_do_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_buffered(dir.path());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let app = store.app("mixed").unwrap();
            std::thread::spawn(move || {
                let docs = app.docs();
                let bucket = app.bucket("b").unwrap();
                let mut kept = Vec::new();
                for i in 0..150 {
                    bucket.put(&format!("t{t}-{i}"), &json!(i)).unwrap();
                    let id = docs.create().unwrap();
                    docs.change(&id, &[op(json!({"op":"put","path":"/i","value":i}))], None)
                        .unwrap();
                    if i % 3 == 0 {
                        docs.delete(&id).unwrap();
                    } else {
                        kept.push(id);
                    }
                }
                kept
            })
        })
        .collect();
    let kept: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    store.close();
    let store = open_buffered(dir.path());
    let app = store.app("mixed").unwrap();
    assert_eq!(app.docs().list().unwrap().len(), kept.len());
    for id in &kept {
        assert!(app.docs().get(id).unwrap()["i"].is_number());
    }
    let bucket = app.bucket("b").unwrap();
    for t in 0..4 {
        for i in 0..150 {
            assert_eq!(bucket.get(&format!("t{t}-{i}")).unwrap(), Some(json!(i)));
        }
    }
}
