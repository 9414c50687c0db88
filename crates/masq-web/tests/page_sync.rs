//! The page's device natively, two pages through a relay simulated in
//! memory (the relay's side of the protocol: challenge, verdict, presence,
//! forwarding, the rendezvous slot): pairing, sessions, and sync of KV and
//! documents, with the frames as the page's JavaScript would carry them.
//! The real thing (Chromium, `masq relay` and `masq store` processes) is
//! `tests/browser/sync.mjs`; this covers the same engine under `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use masq_core::api::execute::{execute, Outcome};
use masq_core::api::parse_request;
use masq_core::crypto::relay_auth::{auth_proof, slot_proof};
use masq_core::crypto::{DeviceId, DeviceKeypair};
use masq_core::layout::doc_chunks;
use masq_core::records::Table;
use masq_core::wire::relay_frame::Frame;
use masq_web::pairing::Pairing;
use masq_web::peer_store::PeerStore;
use masq_web::sync::PageSync;
use masq_web::tables::Tables;
use serde_json::{json, Value};
use x25519_dalek::PublicKey;

/// One page: its store and its device.
struct Page {
    store: PeerStore,
    sync: PageSync,
    /// What the page committed (its IndexedDB), to reopen it from.
    disk: Tables,
}

impl Page {
    fn new() -> Self {
        Self::open(Tables::new())
    }

    /// The page opened from `disk` (a reload).
    fn open(disk: Tables) -> Self {
        let mut loaded = Tables::new();
        loaded.apply(&{
            let mut w = masq_core::records::WriteSet::new();
            for t in Table::ALL {
                for (k, v) in disk.prefix(t, &[]) {
                    w.put(t, k.clone(), v.clone());
                }
            }
            w
        });
        let store = PeerStore::open("notes", loaded).unwrap();
        store.set_time(1_800_000_000);
        let sync = PageSync::open(&store).unwrap();
        Page { store, sync, disk }
    }

    fn id(&self) -> DeviceId {
        self.sync.device_id()
    }

    /// One request, then what a batch's end does: offer the changes, take
    /// the writes (the page would commit them here).
    fn run(&mut self, req: Value) -> Value {
        let mut req = req;
        req["id"] = json!(1);
        let env = parse_request(&req.to_string()).unwrap();
        let out = match execute(&self.store, env.request).unwrap() {
            Outcome::Value(v) => v,
            Outcome::Subscribe(_) => json!("sub"),
        };
        self.end_batch();
        out
    }

    fn end_batch(&mut self) {
        self.sync.flush(&self.store).unwrap();
        let writes = self.store.take_writes().unwrap();
        self.disk.apply(&writes);
    }
}

/// The relay's side, for two devices.
struct Relay {
    key: DeviceKeypair,
    nonce: [u8; 32],
}

impl Relay {
    fn new() -> Self {
        Relay {
            key: DeviceKeypair::generate(),
            nonce: [9; 32],
        }
    }

    fn challenge(&self) -> Vec<u8> {
        Frame::Challenge {
            relay_public: *self.key.public().as_bytes(),
            nonce: self.nonce,
        }
        .encode()
    }

    /// Checks an `Auth` frame as the relay does; the device it proves.
    fn check_auth(&self, bytes: &[u8]) -> DeviceId {
        let Frame::Auth { public, proof } = Frame::decode(bytes).unwrap() else {
            panic!("expected Auth");
        };
        let dh = self.key.diffie_hellman(&PublicKey::from(public));
        assert_eq!(
            proof,
            auth_proof(&dh, &self.nonce, self.key.public().as_bytes(), &public),
            "the page's proof must be the one the relay checks"
        );
        DeviceId::from_public(&PublicKey::from(public))
    }

    /// Connects a page's device: challenge, proof, verdict.
    fn connect(&self, p: &mut Page, now: Duration) {
        p.sync.on_relay_open();
        let r = p
            .sync
            .on_relay_frame(&p.store, &self.challenge(), now)
            .unwrap();
        assert!(r.is_ok());
        let frames = p.sync.take_frames();
        assert_eq!(self.check_auth(&frames[0]), p.id());
        p.sync
            .on_relay_frame(&p.store, &Frame::AuthOk(p.id()).encode(), now)
            .unwrap()
            .unwrap();
    }

    /// Carries frames between two connected pages until both are quiet:
    /// `Send` becomes `Deliver`, `Subscribe` gets the watched device's
    /// presence. Returns how many frames it carried.
    fn route(&self, a: &mut Page, b: &mut Page, now: Duration) -> usize {
        let mut carried = 0;
        for _ in 0..200 {
            a.end_batch();
            b.end_batch();
            let (fa, fb) = (a.sync.take_frames(), b.sync.take_frames());
            if fa.is_empty() && fb.is_empty() {
                return carried;
            }
            carried += fa.len() + fb.len();
            Self::carry(fa, a, b, now);
            Self::carry(fb, b, a, now);
        }
        panic!("sync did not quiesce");
    }

    /// The relay's handling of `from`'s frames, with `to` the other device.
    fn carry(frames: Vec<Vec<u8>>, from: &mut Page, to: &mut Page, now: Duration) {
        for bytes in frames {
            let (target, frame) = match Frame::decode(&bytes).unwrap() {
                Frame::Send { payload, .. } => (
                    &mut *to,
                    Frame::Deliver {
                        from: from.id(),
                        payload,
                    },
                ),
                Frame::Subscribe(ids) if ids.contains(&to.id()) => (
                    &mut *from,
                    Frame::Presence {
                        id: to.id(),
                        online: true,
                    },
                ),
                _ => continue,
            };
            let r = target
                .sync
                .on_relay_frame(&target.store, &frame.encode(), now)
                .unwrap();
            assert!(r.is_ok());
        }
    }

    /// Runs a pairing between an inviter and a joiner through the
    /// rendezvous slot; both finish in their stores.
    fn pair(&self, inviter: &mut Page, joiner: &mut Page) -> (Value, Value) {
        let mut inv = Pairing::invite(
            "ws://relay.test",
            1_800_000_000,
            inviter.sync.keypair(),
            "phone",
        );
        let uri = inv.invite_ref().to_uri();
        let mut join = Pairing::join(&uri, 1_800_000_000, joiner.sync.keypair(), "tablet").unwrap();
        // Each opens its connection and joins the slot with a valid proof.
        for p in [&mut inv, &mut join] {
            p.on_frame(&self.challenge()).unwrap();
            let auth = p.take_frames();
            let device = self.check_auth(&auth[0]);
            p.on_frame(&Frame::AuthOk(device).encode()).unwrap();
            let Frame::RendezvousJoin { slot_public, proof } =
                Frame::decode(&p.take_frames()[0]).unwrap()
            else {
                panic!("expected a rendezvous join");
            };
            let dh = self.key.diffie_hellman(&PublicKey::from(slot_public));
            assert_eq!(
                proof,
                slot_proof(&dh, &self.nonce, self.key.public().as_bytes(), &slot_public)
            );
        }
        // Both are in: the joiner commits, the inviter offers, the joiner
        // reveals; both show the code.
        let joined = Frame::RendezvousPeer { joined: true }.encode();
        inv.on_frame(&joined).unwrap();
        join.on_frame(&joined).unwrap();
        let relay_data = |frames: Vec<Vec<u8>>| -> Vec<u8> {
            assert_eq!(frames.len(), 1);
            let Frame::RendezvousSend(d) = Frame::decode(&frames[0]).unwrap() else {
                panic!("expected rendezvous data");
            };
            Frame::RendezvousData(d).encode()
        };
        inv.on_frame(&relay_data(join.take_frames())).unwrap();
        join.on_frame(&relay_data(inv.take_frames())).unwrap();
        inv.on_frame(&relay_data(join.take_frames())).unwrap();
        let code = |p: &mut Pairing| -> String {
            let c: Value = serde_json::from_str(&p.take_code().expect("a code")).unwrap();
            c["code"].as_str().unwrap().to_string()
        };
        assert_eq!(code(&mut inv), code(&mut join));
        // The joiner's user says yes: nothing is ready on either side yet.
        join.confirm(true).unwrap();
        inv.on_frame(&relay_data(join.take_frames())).unwrap();
        assert!(!inv.is_ready() && !join.is_ready());
        // The inviter's user says yes: it finishes, and its welcome ends
        // the joiner's side.
        inv.confirm(true).unwrap();
        assert!(inv.is_ready());
        let paired_inv = inv.finish(&inviter.store, inviter.sync.keypair()).unwrap();
        inviter.sync.peers_changed(&inviter.store).unwrap();
        join.on_frame(&relay_data(inv.take_frames())).unwrap();
        assert!(join.is_ready());
        let paired_join = join.finish(&joiner.store, joiner.sync.keypair()).unwrap();
        joiner.sync.peers_changed(&joiner.store).unwrap();
        (
            serde_json::to_value(paired_inv).unwrap(),
            serde_json::to_value(paired_join).unwrap(),
        )
    }
}

/// Two pages paired through the relay, connected, their sync started.
fn paired_and_syncing() -> (Relay, Page, Page, Duration) {
    let relay = Relay::new();
    let (mut a, mut b) = (Page::new(), Page::new());
    relay.pair(&mut a, &mut b);
    let now = Duration::from_secs(1_800_000_000);
    relay.connect(&mut a, now);
    relay.connect(&mut b, now);
    relay.route(&mut a, &mut b, now);
    (relay, a, b, now)
}

#[test]
fn two_pages_pair_through_the_rendezvous_and_sync_kv_and_documents() {
    let relay = Relay::new();
    let (mut a, mut b) = (Page::new(), Page::new());
    a.run(json!({"op": "kv.put", "key": "before", "value": "pairing"}));
    let (pa, pb) = relay.pair(&mut a, &mut b);
    assert_eq!(pa["safety_code"], pb["safety_code"]);
    assert_eq!(pa["device_id"], json!(b.id().to_string()));
    assert_eq!(pb["device_id"], json!(a.id().to_string()));
    let now = Duration::from_secs(1_800_000_000);
    relay.connect(&mut a, now);
    relay.connect(&mut b, now);
    relay.route(&mut a, &mut b, now);
    assert!(a.sync.is_ready(&b.id()) && b.sync.is_ready(&a.id()));
    // What A had before pairing, and what each writes now, reaches the other.
    assert_eq!(
        b.run(json!({"op": "kv.get", "key": "before"})),
        json!("pairing")
    );
    b.run(json!({"op": "kv.put", "key": "from-b", "value": {"n": 1}}));
    let doc = a.run(
        json!({"op": "doc.create", "ops": [{"op": "put_text", "path": "/t", "value": "hello"}]}),
    )["doc"]
        .clone();
    relay.route(&mut a, &mut b, now);
    assert_eq!(
        a.run(json!({"op": "kv.get", "key": "from-b"})),
        json!({"n": 1})
    );
    assert_eq!(
        b.run(json!({"op": "doc.get", "doc": doc}))["t"],
        json!("hello")
    );
    // Concurrent edits of one text converge.
    a.run(json!({"op": "doc.change", "doc": doc, "ops": [{"op": "splice", "path": "/t", "index": 0, "insert": "A"}]}));
    b.run(json!({"op": "doc.change", "doc": doc, "ops": [{"op": "splice", "path": "/t", "index": 5, "insert": "B"}]}));
    relay.route(&mut a, &mut b, now);
    let (ta, tb) = (
        a.run(json!({"op": "doc.get", "doc": doc}))["t"].clone(),
        b.run(json!({"op": "doc.get", "doc": doc}))["t"].clone(),
    );
    assert_eq!(ta, tb);
    assert_eq!(ta, json!("AhelloB"));
    // A deletion syncs, and the sessions were persisted in the meta table.
    a.run(json!({"op": "doc.delete", "doc": doc}));
    relay.route(&mut a, &mut b, now);
    assert!(b
        .run(json!({"op": "doc.list"}))
        .as_array()
        .unwrap()
        .is_empty());
    assert!(a
        .store
        .meta(&masq_core::layout::meta::session_key(&b.id()))
        .is_some());
}

#[test]
fn a_forged_or_replayed_packet_is_refused_and_sync_goes_on() {
    let (relay, mut a, mut b, now) = paired_and_syncing();
    // A packet from a device nobody paired, and garbage from a paired one.
    let stranger = DeviceKeypair::generate().device_id();
    for (from, payload) in [(stranger, vec![1, 2, 3]), (a.id(), vec![0xff; 64])] {
        let frame = Frame::Deliver { from, payload }.encode();
        assert!(b
            .sync
            .on_relay_frame(&b.store, &frame, now)
            .unwrap()
            .is_ok());
    }
    assert_eq!(b.sync.stats().rejected, 2);
    // A real envelope delivered twice: the second is a replay.
    a.run(json!({"op": "kv.put", "key": "k", "value": 1}));
    let frames = a.sync.take_frames();
    let mut delivered = 0;
    for bytes in frames {
        if let Frame::Send { payload, .. } = Frame::decode(&bytes).unwrap() {
            let d = Frame::Deliver {
                from: a.id(),
                payload,
            }
            .encode();
            b.sync.on_relay_frame(&b.store, &d, now).unwrap().unwrap();
            b.sync.on_relay_frame(&b.store, &d, now).unwrap().unwrap();
            delivered += 1;
        }
    }
    assert!(delivered > 0);
    assert_eq!(b.sync.stats().rejected, 2 + delivered);
    relay.route(&mut a, &mut b, now);
    assert_eq!(b.run(json!({"op": "kv.get", "key": "k"})), json!(1));
}

#[test]
fn a_corrupt_document_is_skipped_and_the_others_sync() {
    let (relay, mut a, mut b, now) = paired_and_syncing();
    let create = |p: &mut Page, text: &str| {
        p.run(json!({"op": "doc.create", "ops": [{"op": "put", "path": "/t", "value": text}]}))
            ["doc"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (bad, good) = (create(&mut a, "bad"), create(&mut a, "good"));
    relay.route(&mut a, &mut b, now);
    // A reloads with one document's stored records mangled (a bad disk, a
    // bug of an old version): every chunk of it no longer decodes.
    let mut disk = std::mem::take(&mut a.disk);
    let prefix = doc_chunks::chunk_prefix("notes", &bad);
    let keys: Vec<Vec<u8>> = disk
        .prefix(Table::Chunks, &prefix)
        .map(|(k, _)| k.clone())
        .collect();
    assert!(!keys.is_empty());
    for k in keys {
        disk.load(Table::Chunks, k, vec![0xde, 0xad, 0xbe, 0xef]);
    }
    let mut a = Page::open(disk);
    b.sync.on_relay_closed();
    relay.connect(&mut a, now);
    relay.connect(&mut b, now);
    // Both documents change on B while A is offered and answers: the
    // corrupt one is skipped on A's side, and nothing else stops.
    for (doc, text) in [(&bad, "bad2"), (&good, "good2")] {
        b.run(json!({"op": "doc.change", "doc": doc, "ops": [{"op": "put", "path": "/t", "value": text}]}));
    }
    b.run(json!({"op": "kv.put", "key": "after", "value": 1}));
    relay.route(&mut a, &mut b, now);
    assert!(a.sync.is_ready(&b.id()));
    assert_eq!(
        a.run(json!({"op": "doc.get", "doc": good}))["t"],
        json!("good2")
    );
    assert_eq!(a.run(json!({"op": "kv.get", "key": "after"})), json!(1));
    let env = parse_request(&json!({"id": 1, "op": "doc.get", "doc": bad}).to_string()).unwrap();
    let err = execute(&a.store, env.request).err().unwrap();
    assert_eq!(err.code, "corrupt");
    let last = a.sync.stats().last_error.clone().unwrap_or_default();
    assert!(last.contains("corrupt"), "{last}");
    assert!(a.sync.stats().rejected > 0);
}

#[test]
fn frames_of_a_closed_relay_connection_never_go_out_on_the_next() {
    let (relay, mut a, _b, now) = paired_and_syncing();
    a.run(json!({"op": "kv.put", "key": "k", "value": 1}));
    // The write's envelopes wait for the commit; the socket drops first.
    a.sync.on_relay_closed();
    a.sync.on_relay_open();
    assert!(a.sync.take_frames().is_empty());
    // The new connection's first frame is the answer to its challenge.
    a.sync
        .on_relay_frame(&a.store, &relay.challenge(), now)
        .unwrap()
        .unwrap();
    let frames = a.sync.take_frames();
    assert_eq!(relay.check_auth(&frames[0]), a.id());
}

/// A page reconnects without the other side seeing it go (the relay
/// replaced its connection, no offline): its Hello makes the other forget
/// its word and send its own again, so sync resumes both ways. Before,
/// the reconnected page waited for prefs that never came and offered
/// nothing.
#[test]
fn a_page_that_reconnects_unseen_syncs_again_both_ways() {
    let (relay, mut a, mut b, now) = paired_and_syncing();
    b.sync.on_relay_closed();
    relay.connect(&mut b, now);
    relay.route(&mut a, &mut b, now);
    assert!(a.sync.is_ready(&b.id()) && b.sync.is_ready(&a.id()));
    b.run(json!({"op": "kv.put", "key": "from-b", "value": 2}));
    a.run(json!({"op": "kv.put", "key": "from-a", "value": 1}));
    relay.route(&mut a, &mut b, now);
    assert_eq!(a.run(json!({"op": "kv.get", "key": "from-b"})), json!(2));
    assert_eq!(b.run(json!({"op": "kv.get", "key": "from-a"})), json!(1));
}

/// A page's device operations are the core's (`masq_core::device::ops`),
/// with the codes a native store answers (tests/sync_prefs.rs): `not_found`
/// for no match, `bad_request` for an empty needle or a bad name; a
/// fingerprint prefix in any case finds the device.
#[test]
fn device_ops_answer_the_same_codes_as_a_store() {
    use masq_core::device::ops;
    let (_relay, mut a, b, _now) = paired_and_syncing();
    let me = a.id();
    assert_eq!(
        ops::remove(&a.store, me, "ffff-ffff", 0).unwrap_err().code,
        "not_found"
    );
    assert_eq!(
        ops::remove(&a.store, me, " ", 0).unwrap_err().code,
        "bad_request"
    );
    assert_eq!(ops::set_name(&a.store, "").unwrap_err().code, "bad_request");
    assert_eq!(
        ops::set_name(&a.store, &"x".repeat(256)).unwrap_err().code,
        "bad_request"
    );
    ops::set_name(&a.store, " tablet ").unwrap();
    let list = ops::devices_list(&a.store, a.sync.keypair(), |_| Default::default()).unwrap();
    assert_eq!(list["me"]["name"], json!("tablet"));
    let fp = b.id().fingerprint();
    let gone = ops::remove(&a.store, me, &fp[..6].to_ascii_uppercase(), 0).unwrap();
    assert_eq!(gone, b.id());
    a.sync.peers_changed(&a.store).unwrap();
    assert!(!a.sync.is_ready(&b.id()));
    let list = ops::devices_list(&a.store, a.sync.keypair(), |_| Default::default()).unwrap();
    assert_eq!(list["devices"], json!([]));
    assert_eq!(list["removed"][0]["fingerprint"], json!(fp));
}
