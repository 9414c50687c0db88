//! The sans-I/O sync core between two and three real stores, payloads passed
//! in memory (no relay, no crypto): documents, KV buckets, catalogs and
//! deletions converge.
#![allow(clippy::unwrap_used)]

use masq::Durability;
use masq::{ChangeOp, Store, StoreOptions};
use masq_core::crypto::DeviceKeypair;
use masq_core::wire::device::{PeerPrefs, SyncPayload};
use masq_store::sync::core::SyncCore;
use serde_json::json;

struct Node {
    id: masq_core::crypto::DeviceId,
    core: SyncCore,
    _dir: tempfile::TempDir,
}

fn node() -> Node {
    node_with(true)
}

/// A node whose local KV writes fold in the background, or only on demand.
fn node_with(fold_in_background: bool) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), node_options(fold_in_background)).unwrap();
    Node {
        id: DeviceKeypair::generate().device_id(),
        core: SyncCore::new(store),
        _dir: dir,
    }
}

/// The options of a test node's store.
fn node_options(fold_in_background: bool) -> StoreOptions {
    StoreOptions {
        durability: Durability::Buffered,
        fold_in_background,
        ..Default::default()
    }
}

/// Two nodes that synced one document of the app `notes`, `{path: value}`.
fn two_nodes_sharing_a_doc(path: &str, value: serde_json::Value) -> (Node, Node, masq::DocId) {
    let mut a = node();
    let mut b = node();
    let id = a
        .core
        .store()
        .app("notes")
        .unwrap()
        .docs()
        .create_with(
            &[ChangeOp::Put {
                path: path.into(),
                value,
            }],
            None,
        )
        .unwrap();
    sync_pair(&mut a, &mut b);
    (a, b, id)
}

/// What the engine does when sync with `peer` starts: `peer` said what it
/// takes (everything here), and it is offered every document.
fn ready(
    core: &mut SyncCore,
    peer: &masq_core::crypto::DeviceId,
) -> masq::Result<Vec<SyncPayload>> {
    core.on_remote_prefs(peer, PeerPrefs::default())?;
    core.on_peer_ready(peer)
}

/// Runs the protocol between a and b until neither has anything to send.
/// The engine hears of folded KV writes on the store's change channel; this
/// loop does not listen to it, so it folds them before it starts.
fn sync_pair(a: &mut Node, b: &mut Node) -> usize {
    a.core.store().flush_kv().unwrap();
    b.core.store().flush_kv().unwrap();
    let to_b = ready(&mut a.core, &b.id).unwrap();
    let to_a = ready(&mut b.core, &a.id).unwrap();
    exchange(a, b, to_b, to_a).0
}

/// Delivers payloads both ways, and the replies they cause, until neither
/// side has anything to send. Returns (rounds, bytes A sent).
fn exchange(
    a: &mut Node,
    b: &mut Node,
    mut to_b: Vec<SyncPayload>,
    mut to_a: Vec<SyncPayload>,
) -> (usize, usize) {
    let mut rounds = 0;
    let mut sent_by_a = 0;
    while !(to_a.is_empty() && to_b.is_empty()) {
        rounds += 1;
        assert!(rounds < 100, "sync did not quiesce");
        let mut next_a = Vec::new();
        let mut next_b = Vec::new();
        for p in to_b.drain(..) {
            let bytes = p.encode();
            sent_by_a += bytes.len();
            let SyncPayload::Batch(items) = SyncPayload::decode(&bytes).unwrap() else {
                panic!()
            };
            let applied = b.core.apply_batch(&a.id, items, |_| {}).unwrap();
            assert_eq!(applied.rejected, 0);
            next_a.extend(b.core.generate_batches(&a.id, &applied.docs).unwrap());
        }
        for p in to_a.drain(..) {
            let SyncPayload::Batch(items) = SyncPayload::decode(&p.encode()).unwrap() else {
                panic!()
            };
            let applied = a.core.apply_batch(&b.id, items, |_| {}).unwrap();
            assert_eq!(applied.rejected, 0);
            next_b.extend(a.core.generate_batches(&b.id, &applied.docs).unwrap());
        }
        to_a = next_a;
        to_b = next_b;
    }
    (rounds, sent_by_a)
}

#[test]
fn two_stores_converge_docs_kv_and_deletions() {
    let mut a = node();
    let mut b = node();
    let docs_a = a.core.store().app("notes").unwrap().docs();
    let docs_b = b.core.store().app("notes").unwrap().docs();
    let id = docs_a
        .create_with(
            &[ChangeOp::PutText {
                path: "/t".into(),
                value: "hello".into(),
            }],
            None,
        )
        .unwrap();
    let gone = docs_a.create().unwrap();
    a.core
        .store()
        .app("notes")
        .unwrap()
        .bucket("kv")
        .unwrap()
        .put("x", &json!(1))
        .unwrap();
    b.core
        .store()
        .app("notes")
        .unwrap()
        .bucket("kv")
        .unwrap()
        .put("y", &json!(2))
        .unwrap();
    b.core
        .store()
        .app("other")
        .unwrap()
        .bucket("kv")
        .unwrap()
        .put("z", &json!(3))
        .unwrap();
    sync_pair(&mut a, &mut b);
    assert_eq!(docs_b.get(&id).unwrap(), json!({"t": "hello"}));
    let kv_a = a.core.store().app("notes").unwrap().bucket("kv").unwrap();
    let kv_b = b.core.store().app("notes").unwrap().bucket("kv").unwrap();
    assert_eq!(kv_a.get("y").unwrap(), Some(json!(2)));
    assert_eq!(kv_b.get("x").unwrap(), Some(json!(1)));
    assert_eq!(
        a.core
            .store()
            .app("other")
            .unwrap()
            .bucket("kv")
            .unwrap()
            .get("z")
            .unwrap(),
        Some(json!(3))
    );

    // Concurrent edits of one doc and one key converge to the same heads and winner.
    docs_a
        .change(
            &id,
            &[ChangeOp::Splice {
                path: "/t".into(),
                index: 0,
                delete: 0,
                insert: "A ".into(),
            }],
            None,
        )
        .unwrap();
    docs_b
        .change(
            &id,
            &[ChangeOp::Splice {
                path: "/t".into(),
                index: 5,
                delete: 0,
                insert: " B".into(),
            }],
            None,
        )
        .unwrap();
    kv_a.put("same", &json!("from a")).unwrap();
    kv_b.put("same", &json!("from b")).unwrap();
    docs_b.delete(&gone).unwrap();
    sync_pair(&mut a, &mut b);
    assert_eq!(docs_a.heads(&id).unwrap(), docs_b.heads(&id).unwrap());
    assert_eq!(docs_a.get(&id).unwrap(), docs_b.get(&id).unwrap());
    assert_eq!(docs_a.get(&id).unwrap(), json!({"t": "A hello B"}));
    assert_eq!(kv_a.get("same").unwrap(), kv_b.get("same").unwrap());
    assert_eq!(kv_a.conflicts("same").unwrap().len(), 2);
    assert!(matches!(docs_a.get(&gone), Err(masq::Error::DocDeleted(_))));
    assert_eq!(docs_a.list().unwrap(), docs_b.list().unwrap());

    // Nothing new: a reconnect exchanges only small messages and changes nothing.
    let heads = docs_a.heads(&id).unwrap();
    sync_pair(&mut a, &mut b);
    assert_eq!(docs_a.heads(&id).unwrap(), heads);
}

#[test]
fn three_stores_converge_through_a_middle_one() {
    let mut a = node();
    let mut b = node();
    let mut c = node();
    let kv = |n: &Node| n.core.store().app("app").unwrap().bucket("b").unwrap();
    kv(&a).put("from-a", &json!("a")).unwrap();
    kv(&c).put("from-c", &json!("c")).unwrap();
    // a and c never talk directly; b relays the data (as a device, not the relay).
    sync_pair(&mut a, &mut b);
    sync_pair(&mut b, &mut c);
    sync_pair(&mut a, &mut b);
    for n in [&a, &b, &c] {
        assert_eq!(kv(n).get("from-a").unwrap(), Some(json!("a")));
        assert_eq!(kv(n).get("from-c").unwrap(), Some(json!("c")));
    }
}

#[test]
fn garbage_sync_messages_are_rejected_without_harm() {
    let mut a = node();
    let b = node();
    let items = vec![
        masq_core::wire::device::DocMessage {
            app: "bad app!".into(),
            doc: "_catalog".into(),
            msg: vec![],
        },
        masq_core::wire::device::DocMessage {
            app: "ok".into(),
            doc: "_catalog".into(),
            msg: vec![0x42, 1, 2, 3],
        },
        masq_core::wire::device::DocMessage {
            app: "ok".into(),
            doc: "not-a-doc-id".into(),
            msg: vec![],
        },
    ];
    let applied = a.core.apply_batch(&b.id, items, |_| {}).unwrap();
    assert_eq!(applied.rejected, 3);
    assert!(applied.docs.is_empty());
    a.core
        .store()
        .app("ok")
        .unwrap()
        .bucket("b")
        .unwrap()
        .put("k", &json!(1))
        .unwrap();
}

/// Many changes in one sync message travel as one Automerge bundle: every
/// kind of edit (text, map, list, counter, concurrent edits on both sides)
/// still converges to the same heads and JSON, and what A sends is a small
/// fraction of the individual change chunks.
#[test]
fn many_changes_travel_as_a_bundle_and_converge() {
    let mut a = node();
    let mut b = node();
    let docs_a = a.core.store().app("notes").unwrap().docs();
    let docs_b = b.core.store().app("notes").unwrap().docs();
    let id = docs_a
        .create_with(
            &[
                ChangeOp::PutText {
                    path: "/t".into(),
                    value: String::new(),
                },
                ChangeOp::Put {
                    path: "/list".into(),
                    value: json!([]),
                },
                ChangeOp::PutCounter {
                    path: "/n".into(),
                    value: 0,
                },
            ],
            None,
        )
        .unwrap();
    // A history first, so the 2 000 changes below are under a third of the
    // document (more, and Automerge sends the whole document instead).
    for i in 0..5000 {
        docs_a
            .change(
                &id,
                &[ChangeOp::Put {
                    path: "/h".into(),
                    value: json!(i),
                }],
                None,
            )
            .unwrap();
    }
    sync_pair(&mut a, &mut b);
    assert_eq!(docs_b.get(&id).unwrap()["h"], json!(4999));
    let synced = docs_a.heads(&id).unwrap();
    for i in 0..2000usize {
        let op = match i % 4 {
            0 => ChangeOp::Splice {
                path: "/t".into(),
                index: i / 4,
                delete: 0,
                insert: "x".into(),
            },
            1 => ChangeOp::Put {
                path: format!("/k{}", i % 50),
                value: json!({"i": i, "s": "v"}),
            },
            2 => ChangeOp::Insert {
                path: format!("/list/{}", i / 4),
                value: json!(i),
            },
            _ => ChangeOp::Increment {
                path: "/n".into(),
                by: 1,
            },
        };
        docs_a.change(&id, &[op], None).unwrap();
    }
    // B edits concurrently.
    for i in 0..20 {
        docs_b
            .change(
                &id,
                &[ChangeOp::Put {
                    path: format!("/b{i}"),
                    value: json!(i),
                }],
                None,
            )
            .unwrap();
    }
    let raw_changes = docs_a.read(&id, |d| d.save_after(&synced).len()).unwrap();
    assert!(raw_changes > 100_000, "{raw_changes}");

    // One exchange from A's side, bytes counted.
    let to_b = ready(&mut a.core, &b.id).unwrap();
    let to_a = ready(&mut b.core, &a.id).unwrap();
    let (_, sent_by_a) = exchange(&mut a, &mut b, to_b, to_a);
    assert_eq!(docs_a.heads(&id).unwrap(), docs_b.heads(&id).unwrap());
    let doc = docs_b.get(&id).unwrap();
    assert_eq!(doc, docs_a.get(&id).unwrap());
    assert_eq!(doc["n"], json!(500));
    assert_eq!(doc["t"].as_str().unwrap().len(), 500);
    assert_eq!(doc["list"].as_array().unwrap().len(), 500);
    assert_eq!(doc["b19"], json!(19));
    assert!(
        sent_by_a * 5 < raw_changes,
        "A sent {sent_by_a} bytes for {raw_changes} bytes of change chunks"
    );
    // B stored the changes durably: a reopened copy has them.
    let Node { core, _dir, .. } = b;
    drop((core, docs_b));
    let reopened = Store::open(_dir.path()).unwrap();
    let docs = reopened.app("notes").unwrap().docs();
    assert_eq!(docs.get(&id).unwrap(), doc);
}

/// A lost frame stalls a document's sync (its state waits for a reply); the
/// resync tick restarts only such states, on the second tick that finds them
/// waiting with nothing received, and then the document converges. A tick
/// with nothing to say sends nothing.
#[test]
fn resync_tick_recovers_a_lost_frame_and_is_quiet_otherwise() {
    let (mut a, mut b, id) = two_nodes_sharing_a_doc("/v", json!(1));
    let docs_a = a.core.store().app("notes").unwrap().docs();
    let docs_b = b.core.store().app("notes").unwrap().docs();
    assert_eq!(docs_b.get(&id).unwrap(), json!({"v": 1}));
    // In sync: ticks on both sides have nothing to send.
    assert!(a.core.on_resync_tick(&b.id).unwrap().is_empty());
    assert!(b.core.on_resync_tick(&a.id).unwrap().is_empty());

    docs_a
        .change(
            &id,
            &[ChangeOp::Put {
                path: "/v".into(),
                value: json!(2),
            }],
            None,
        )
        .unwrap();
    let lost = a
        .core
        .generate_batches(&b.id, &[("notes".into(), id.clone())]);
    assert_eq!(
        lost.unwrap().len(),
        1,
        "the change was offered (and the frame is lost)"
    );
    // First tick: the state is waiting, maybe for a slow reply: left alone.
    assert!(a.core.on_resync_tick(&b.id).unwrap().is_empty());
    // Second tick, still nothing received: restarted, the change is offered again.
    let again = a.core.on_resync_tick(&b.id).unwrap();
    assert!(!again.is_empty());
    exchange(&mut a, &mut b, again, Vec::new());
    assert_eq!(docs_b.get(&id).unwrap(), json!({"v": 2}));
    assert_eq!(docs_a.heads(&id).unwrap(), docs_b.heads(&id).unwrap());
}

/// A subscriber on the receiving store gets the remote change as patches
/// (logged while the change applies), with the same shape as local ones.
#[test]
fn remote_changes_reach_subscribers_as_patches() {
    let mut a = node();
    let mut b = node();
    let docs_a = a.core.store().app("notes").unwrap().docs();
    let docs_b = b.core.store().app("notes").unwrap().docs();
    let id = docs_a
        .create_with(
            &[ChangeOp::PutText {
                path: "/t".into(),
                value: "ab".into(),
            }],
            None,
        )
        .unwrap();
    sync_pair(&mut a, &mut b);
    let mut sub = docs_b.subscribe(Some(id.clone()));
    docs_a
        .change(
            &id,
            &[
                ChangeOp::Put {
                    path: "/a".into(),
                    value: json!(1),
                },
                ChangeOp::Splice {
                    path: "/t".into(),
                    index: 1,
                    delete: 0,
                    insert: "X".into(),
                },
            ],
            None,
        )
        .unwrap();
    sync_pair(&mut a, &mut b);
    let mut seen = Vec::new();
    while let Some(ev) = sub.try_next() {
        if let masq::Event::Doc { doc, patches, .. } = ev {
            assert_eq!(doc, id);
            seen.extend(patches);
        }
    }
    assert!(
        seen.iter()
            .any(|p| p["action"] == "put" && p["path"] == json!(["a"])),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|p| p["path"] == json!(["t", 1])),
        "{seen:?}"
    );
    assert_eq!(docs_b.get(&id).unwrap(), json!({"a": 1, "t": "aXb"}));
}

/// A local KV write still pending when a concurrent remote write of the same
/// key arrives is folded first, so it stays concurrent with the remote one:
/// both devices keep both values and pick the same winner. (Folded after the
/// remote change instead, it would silently override it.)
#[test]
fn a_pending_local_write_stays_concurrent_with_a_remote_one() {
    let mut a = node_with(false);
    let mut b = node_with(false);
    let kv = |n: &Node| n.core.store().app("notes").unwrap().bucket("kv").unwrap();
    // Create the shard on both sides and sync it, so later writes wait.
    kv(&a).put("k", &json!("base")).unwrap();
    sync_pair(&mut a, &mut b);
    kv(&a).put("k", &json!("from a")).unwrap();
    kv(&b).put("k", &json!("from b")).unwrap();
    assert!(a.core.store().db().kv_pending.iter().count() > 0);
    // B's write reaches A while A's is still pending.
    b.core.store().flush_kv().unwrap();
    let to_a = ready(&mut b.core, &a.id).unwrap();
    exchange(&mut a, &mut b, Vec::new(), to_a);
    assert_eq!(a.core.store().db().kv_pending.iter().count(), 0);
    sync_pair(&mut a, &mut b);
    let (ca, cb) = (
        kv(&a).conflicts("k").unwrap(),
        kv(&b).conflicts("k").unwrap(),
    );
    assert_eq!(ca.len(), 2, "{ca:?}");
    assert_eq!(ca, cb);
    let winner = kv(&a).get("k").unwrap();
    assert_eq!(winner, kv(&b).get("k").unwrap());
    assert_eq!(winner.as_ref(), ca.first());
}

/// A message for a KV shard that holds pending local writes, which fails to
/// apply: the pending writes were folded into a change first (as always
/// before remote changes), and the batch that removes their records must
/// store that change too. Before, the refused message skipped the shard and
/// the acknowledged writes were gone from the shard (the next load of it
/// failed on missing dependencies).
#[test]
fn a_refused_message_for_a_shard_with_pending_writes_loses_nothing() {
    use automerge::sync::SyncDoc;
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        durability: Durability::Buffered,
        fold_in_background: false,
        ..Default::default()
    };
    let store = Store::open_with(dir.path(), opts.clone()).unwrap();
    let bucket = store.app("notes").unwrap().bucket("b").unwrap();
    bucket.put("k", &json!(0)).unwrap(); // creates the shard (written at once)
    bucket.put("k", &json!(1)).unwrap(); // pending
    let shard = masq_store::kv::shard_doc("b", masq_store::kv::shard_of("k"));
    // A sync message whose change reuses the store's own (actor, seq) with
    // other contents: it is refused (duplicate sequence number) once the
    // pending write has been folded under that very number.
    let exported = store.app("notes").unwrap().docs().export(&shard).unwrap();
    let mut fork = automerge::Automerge::load(&exported).unwrap();
    let actor = fork.get_changes(&[]).last().unwrap().actor_id().clone();
    fork.set_actor(actor);
    fork.transact(|tx| automerge::transaction::Transactable::put(tx, automerge::ROOT, "x", 1))
        .unwrap();
    let forged = fork.get_last_local_change().unwrap().raw_bytes().to_vec();
    let mut msg = fork
        .generate_sync_message(&mut automerge::sync::State::new())
        .unwrap();
    msg.changes = vec![forged].into();
    let mut core = SyncCore::new(store.clone());
    let applied = core
        .apply_batch(
            &DeviceKeypair::generate().device_id(),
            vec![masq_core::wire::device::DocMessage {
                app: "notes".into(),
                doc: shard.to_string(),
                msg: msg.encode(),
            }],
            |_| {},
        )
        .unwrap();
    assert_eq!(applied.rejected, 1);
    drop(core);
    drop(bucket);
    store.close();
    let store = Store::open_with(dir.path(), opts).unwrap();
    let bucket = store.app("notes").unwrap().bucket("b").unwrap();
    assert_eq!(bucket.get("k").unwrap(), Some(json!(1)));
    // The shard itself loads and holds the write.
    assert_eq!(bucket.conflicts("k").unwrap(), [json!(1)]);
}

/// A peer's deletion wins over a local change that held the document while
/// the deletion arrived: the change may complete, but it is not written back
/// after the tombstone (the received batch locks only the catalog; the store
/// then seals the deletion under the document's own lock).
#[test]
fn a_peer_deletion_is_not_undone_by_a_local_change_in_flight() {
    use std::sync::mpsc;
    use std::time::Duration;
    let (mut a, mut b, id) = two_nodes_sharing_a_doc("/n", json!(0));
    let docs_a = a.core.store().app("notes").unwrap().docs();
    let docs_b = b.core.store().app("notes").unwrap().docs();
    docs_b.delete(&id).unwrap();

    let (ready_tx, ready_rx) = mpsc::channel();
    let mut deletions = docs_a.subscribe(Some(id.clone()));
    let writer = {
        let docs_a = docs_a.clone();
        let id = id.clone();
        std::thread::spawn(move || {
            docs_a.transact(&id, None, |tx| {
                ready_tx.send(()).unwrap();
                // Holds the document until the peer's deletion is committed
                // and announced (the old behaviour, which then wrote the
                // document back), or at most 2 s: a batch that seals the
                // deletion under this lock announces it only after that.
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                while std::time::Instant::now() < deadline {
                    if let Some(masq::Event::DocDeleted { .. }) = deletions.try_next() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                automerge::transaction::Transactable::put(tx, automerge::ROOT, "n", 1)?;
                Ok(())
            })
        })
    };
    ready_rx.recv().unwrap();
    let applier = std::thread::spawn(move || {
        // B speaks first, and A answers only for the documents it received
        // (the catalog), so nothing here needs the document the writer holds
        // before the deletion lands.
        let to_a = ready(&mut b.core, &a.id).unwrap();
        exchange(&mut a, &mut b, Vec::new(), to_a);
        (a, b)
    });
    let (a, _b) = applier.join().unwrap();
    let _ = writer.join().unwrap(); // committed before the seal, or refused after it

    assert!(
        docs_a.list().unwrap().is_empty(),
        "the deleted document came back"
    );
    assert!(docs_a.get(&id).is_err());
    // And from disk.
    let store = a.core.store().clone();
    let Node {
        core, _dir: dir, ..
    } = a;
    drop(docs_a);
    drop(core);
    store.close();
    let store = Store::open_with(dir.path(), node_options(true)).unwrap();
    let docs = store.app("notes").unwrap().docs();
    assert!(docs.list().unwrap().is_empty());
    assert!(docs.get(&id).is_err());
}

/// A local KV write still pending when a peer's batch for its shard arrives
/// is folded by that batch's commit; it is this device's change all the same
/// and must be offered to that peer too. (Announced as the peer's, the
/// engine never offered it back, and the peer waited for the next resync:
/// found by the browser sync test, where a store's `masq kv put` reached a
/// page only after 30 s.)
#[test]
fn a_pending_write_folded_by_a_peer_batch_is_announced_as_local() {
    let mut a = node_with(false);
    let mut b = node_with(false);
    let kv = |n: &Node| n.core.store().app("notes").unwrap().bucket("kv").unwrap();
    kv(&a).put("k", &json!("base")).unwrap();
    sync_pair(&mut a, &mut b);
    // The same key: the same shard (the batch must reach A's pending shard).
    kv(&a).put("k", &json!("from a")).unwrap(); // pending on A
    kv(&b).put("k", &json!("from b")).unwrap();
    b.core.store().flush_kv().unwrap();
    let mut notices = a.core.store().subscribe_changes();
    let to_a = ready(&mut b.core, &a.id).unwrap();
    for p in to_a {
        let SyncPayload::Batch(items) = p else {
            continue;
        };
        a.core.apply_batch(&b.id, items, |_| {}).unwrap();
    }
    let mut local = false;
    while let Ok((app, doc, origin)) = notices.try_recv() {
        if app == "notes" && doc.as_str().starts_with("_kv.kv.") {
            local |= origin == masq::Origin::Local;
        }
    }
    assert!(
        local,
        "the folded local write was announced as the peer's only"
    );
    // And it reaches B.
    let to_b = ready(&mut a.core, &b.id).unwrap();
    exchange(&mut a, &mut b, to_b, Vec::new());
    assert!(kv(&b).conflicts("k").unwrap().contains(&json!("from a")));
}

/// What each tells the other it takes (its own choices), then every
/// document is offered: the engine's start of sync, preferences included.
fn sync_pair_told(a: &mut Node, b: &mut Node) -> usize {
    a.core.store().flush_kv().unwrap();
    b.core.store().flush_kv().unwrap();
    let (pa, pb) = (a.core.prefs_for(&b.id), b.core.prefs_for(&a.id));
    a.core.on_remote_prefs(&b.id, pb).unwrap();
    b.core.on_remote_prefs(&a.id, pa).unwrap();
    let to_b = a.core.on_peer_ready(&b.id).unwrap();
    let to_a = b.core.on_peer_ready(&a.id).unwrap();
    exchange(a, b, to_b, to_a).0
}

fn kv_put(n: &Node, app: &str, key: &str, v: serde_json::Value) {
    let bucket = n.core.store().app(app).unwrap().bucket("kv").unwrap();
    bucket.put(key, &v).unwrap();
}

fn kv_get(n: &Node, app: &str, key: &str) -> Option<serde_json::Value> {
    let bucket = n.core.store().app(app).unwrap().bucket("kv").unwrap();
    bucket.get(key).unwrap()
}

/// Applies `payloads` from `from` at `to`; how many messages the gate dropped.
fn deliver_filtered(
    to: &mut Node,
    from: &masq_core::crypto::DeviceId,
    payloads: Vec<SyncPayload>,
) -> usize {
    let mut filtered = 0;
    for p in payloads {
        if let SyncPayload::Batch(items) = p {
            filtered += to.core.apply_batch(from, items, |_| {}).unwrap().filtered;
        }
    }
    filtered
}

/// M14: `photos` off towards B on A. Nothing of A's photos (documents, KV,
/// catalog) reaches B and nothing of B's reaches A, even from a peer that
/// offers it anyway, while `notes` syncs both ways; back on, both catch up.
#[test]
fn an_app_off_towards_a_device_neither_goes_nor_comes_and_catches_up_when_on() {
    let mut a = node();
    let mut b = node();
    masq_store::sync::peers::set_app_sync(a.core.store().db(), &b.id, "photos", false).unwrap();
    a.core.reload_prefs().unwrap();
    assert_eq!(a.core.prefs_for(&b.id).off, vec!["photos".to_string()]);
    let photo = a
        .core
        .store()
        .app("photos")
        .unwrap()
        .docs()
        .create_with(
            &[ChangeOp::Put {
                path: "/p".into(),
                value: json!("a's photo"),
            }],
            None,
        )
        .unwrap();
    kv_put(&a, "photos", "from-a", json!(1));
    kv_put(&a, "notes", "from-a", json!(1));
    kv_put(&b, "photos", "from-b", json!(2));
    kv_put(&b, "notes", "from-b", json!(2));
    a.core.store().flush_kv().unwrap();
    b.core.store().flush_kv().unwrap();
    let b_photos_before = b.core.store().db().doc_ids("photos").unwrap();
    let a_photos_before = a.core.store().db().doc_ids("photos").unwrap();
    sync_pair_told(&mut a, &mut b);
    assert_eq!(kv_get(&b, "notes", "from-a"), Some(json!(1)));
    assert_eq!(kv_get(&a, "notes", "from-b"), Some(json!(2)));
    // Not one record of the other's photos: no document, no catalog entry,
    // no KV shard change.
    assert_eq!(
        b.core.store().db().doc_ids("photos").unwrap(),
        b_photos_before
    );
    assert_eq!(
        a.core.store().db().doc_ids("photos").unwrap(),
        a_photos_before
    );
    assert_eq!(kv_get(&b, "photos", "from-a"), None);
    assert_eq!(kv_get(&a, "photos", "from-b"), None);
    assert!(b
        .core
        .store()
        .app("photos")
        .unwrap()
        .docs()
        .list()
        .unwrap()
        .is_empty());
    // B offers its photos anyway (it ignores what A said): A drops them.
    b.core.on_remote_prefs(&a.id, PeerPrefs::default()).unwrap();
    let offer = b.core.on_peer_ready(&a.id).unwrap();
    assert!(deliver_filtered(&mut a, &b.id, offer) > 0);
    assert_eq!(kv_get(&a, "photos", "from-b"), None);
    assert_eq!(
        a.core.store().db().doc_ids("photos").unwrap(),
        a_photos_before
    );
    // Back on: the normal sync catches up in full, both ways.
    masq_store::sync::peers::set_app_sync(a.core.store().db(), &b.id, "photos", true).unwrap();
    a.core.reload_prefs().unwrap();
    sync_pair_told(&mut a, &mut b);
    assert_eq!(kv_get(&b, "photos", "from-a"), Some(json!(1)));
    assert_eq!(kv_get(&a, "photos", "from-b"), Some(json!(2)));
    let docs_b = b.core.store().app("photos").unwrap().docs();
    assert_eq!(docs_b.get(&photo).unwrap(), json!({"p": "a's photo"}));
}

/// M14: a paused store sends and takes nothing (its local writes succeed),
/// is still paused after a reopen, and catches up on resume.
#[test]
fn a_paused_store_stays_paused_across_a_reopen_and_catches_up_on_resume() {
    let mut a = node();
    let mut b = node();
    masq_store::sync::peers::set_paused(a.core.store().db(), true).unwrap();
    a.core.reload_prefs().unwrap();
    kv_put(&a, "notes", "a1", json!(1));
    kv_put(&b, "notes", "b1", json!(1));
    sync_pair_told(&mut a, &mut b);
    assert_eq!(kv_get(&b, "notes", "a1"), None);
    assert_eq!(kv_get(&a, "notes", "b1"), None);
    // B offers anyway: A takes nothing.
    b.core.on_remote_prefs(&a.id, PeerPrefs::default()).unwrap();
    let offer = b.core.on_peer_ready(&a.id).unwrap();
    assert!(deliver_filtered(&mut a, &b.id, offer) > 0);
    assert_eq!(kv_get(&a, "notes", "b1"), None);
    // A restarts: still paused.
    let Node { id, core, _dir } = a;
    let store = core.store().clone();
    drop(core);
    assert!(store.close());
    let store = Store::open_with(_dir.path(), node_options(true)).unwrap();
    let mut a = Node {
        id,
        core: SyncCore::new(store),
        _dir,
    };
    assert!(a.core.local_prefs().paused);
    kv_put(&a, "notes", "a2", json!(2));
    sync_pair_told(&mut a, &mut b);
    assert_eq!(kv_get(&b, "notes", "a2"), None);
    assert_eq!(kv_get(&a, "notes", "b1"), None);
    // Resume: everything missed in both directions arrives.
    masq_store::sync::peers::set_paused(a.core.store().db(), false).unwrap();
    a.core.reload_prefs().unwrap();
    sync_pair_told(&mut a, &mut b);
    for k in ["a1", "a2"] {
        assert!(kv_get(&b, "notes", k).is_some(), "{k} on B");
    }
    assert_eq!(kv_get(&a, "notes", "b1"), Some(json!(1)));
}

/// Nothing is offered to a device before it said what it takes: a page
/// that holds one app (`only`) is never handed another app's data.
#[test]
fn nothing_is_offered_before_the_peer_said_what_it_takes() {
    let mut a = node();
    let b = node();
    kv_put(&a, "notes", "k", json!(1));
    kv_put(&a, "photos", "k", json!(1));
    a.core.store().flush_kv().unwrap();
    assert!(a.core.on_peer_ready(&b.id).unwrap().is_empty());
    let offer = a
        .core
        .on_remote_prefs(
            &b.id,
            PeerPrefs {
                only: Some(vec!["notes".into()]),
                ..PeerPrefs::default()
            },
        )
        .unwrap();
    let apps: std::collections::BTreeSet<String> = offer
        .iter()
        .flat_map(|p| match p {
            SyncPayload::Batch(items) => items.iter().map(|i| i.app.clone()).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(
        apps.into_iter().collect::<Vec<_>>(),
        vec!["notes".to_string()]
    );
    // Its session ends: unknown again until it says.
    a.core.peer_offline(&b.id);
    assert!(a.core.on_peer_ready(&b.id).unwrap().is_empty());
}

/// A peer that reconnected without this side seeing it go (the relay
/// replaced its connection and reported no offline): its Hello tells this
/// side to forget its word and send ours again, and sync resumes. Before,
/// both waited for the other's prefs forever.
#[test]
fn a_peer_that_restarted_unseen_gets_our_prefs_again_and_sync_resumes() {
    let mut a = node();
    let mut b = node();
    sync_pair_told(&mut a, &mut b);
    // B's session ended on its side only.
    b.core.peer_offline(&a.id);
    kv_put(&a, "notes", "k", json!(1));
    kv_put(&b, "notes", "j", json!(2));
    a.core.store().flush_kv().unwrap();
    b.core.store().flush_kv().unwrap();
    assert!(
        b.core.on_peer_ready(&a.id).unwrap().is_empty(),
        "B waits for A's word"
    );
    // B's new session opens with Hello: A held B's word, so B restarted.
    assert!(a.core.on_peer_hello(&b.id));
    assert!(!a.core.on_peer_hello(&b.id), "its word is awaited again");
    // A sends its prefs again; B's follow its Hello.
    let to_a = b
        .core
        .on_remote_prefs(&a.id, a.core.prefs_for(&b.id))
        .unwrap();
    let to_b = a
        .core
        .on_remote_prefs(&b.id, b.core.prefs_for(&a.id))
        .unwrap();
    assert!(!to_a.is_empty() && !to_b.is_empty());
    exchange(&mut a, &mut b, to_b, to_a);
    assert_eq!(kv_get(&b, "notes", "k"), Some(json!(1)));
    assert_eq!(kv_get(&a, "notes", "j"), Some(json!(2)));
}
