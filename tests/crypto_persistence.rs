//! Ratchet state persistence with real fjall on a temp dir: a crash between
//! persisting and sending, or between receiving and applying, leaves sessions
//! usable, never reuses a message key, and never loses or double-applies a message.
#![allow(clippy::unwrap_used)]

use masq_core::crypto::envelope::Envelope;
use masq_core::crypto::handshake::{initiate, respond};
use masq_core::crypto::{CryptoError, DeviceKeypair, Session};
use masq_store::storage::{Db, Durability};
use masq_store::sync::peers;

fn sessions() -> (Session, Session) {
    let a = DeviceKeypair::generate();
    let b = DeviceKeypair::generate();
    let (p, init) = initiate(&a, &b.public(), 1);
    let (sb, resp) = respond(&b, &a.public(), &init).unwrap();
    (p.finish(&resp).unwrap(), sb)
}

fn save(db: &Db, s: &Session) {
    let mut batch = db.batch();
    peers::stage_session(db, &mut batch, &s.peer(), &s.to_bytes());
    db.commit(batch).unwrap();
}

fn load(db: &Db, s: &Session) -> Session {
    Session::from_bytes(&peers::session_bytes(db, &s.peer()).unwrap().unwrap()).unwrap()
}

#[test]
fn crash_after_persist_before_send_never_reuses_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = sessions();
    let first = a.seal(b"hello").unwrap();
    b.open(&first).unwrap();
    let lost;
    {
        let db = Db::open(dir.path(), Durability::Fsync).unwrap();
        save(&db, &a);
        // Seal, persist the advanced state, then "crash" before the envelope leaves.
        lost = a.seal(b"never sent").unwrap();
        save(&db, &a);
    } // crash: the Db is dropped; `lost` was never delivered
    let db = Db::open(dir.path(), Durability::Fsync).unwrap();
    let mut a2 = load(&db, &a);
    let next = a2.seal(b"after restart").unwrap();
    let h_lost = Envelope::decode(&lost).unwrap().header;
    let h_next = Envelope::decode(&next).unwrap().header;
    assert_ne!(
        (h_lost.dh, h_lost.n),
        (h_next.dh, h_next.n),
        "a message key was used twice"
    );
    assert_eq!(b.open(&next).unwrap(), b"after restart");
    // And the session keeps working both ways.
    let r = b.seal(b"reply").unwrap();
    assert_eq!(a2.open(&r).unwrap(), b"reply");
}

#[test]
fn crash_between_receive_and_apply_neither_loses_nor_double_applies() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b) = sessions();
    let m = a.seal(b"apply me once").unwrap();
    let effect_key = b"effect/1".to_vec();
    {
        let db = Db::open(dir.path(), Durability::Fsync).unwrap();
        save(&db, &b);
        // Receive on a copy, stage state + effect in one batch, crash before commit.
        let mut next = b.clone();
        let pt = next.open(&m).unwrap();
        let mut batch = db.batch();
        peers::stage_session(&db, &mut batch, &next.peer(), &next.to_bytes());
        batch.insert(&db.meta, effect_key.clone(), pt);
        drop(batch); // crash: never committed
    }
    {
        let db = Db::open(dir.path(), Durability::Fsync).unwrap();
        assert!(
            db.meta.get(&effect_key).unwrap().is_none(),
            "no effect without its state"
        );
        // The message is delivered again (sync resends): it still opens.
        let mut b2 = load(&db, &b);
        let mut next = b2.clone();
        let pt = next.open(&m).unwrap();
        let mut batch = db.batch();
        peers::stage_session(&db, &mut batch, &next.peer(), &next.to_bytes());
        batch.insert(&db.meta, effect_key.clone(), pt);
        db.commit(batch).unwrap();
        b2 = next;
        let _ = b2;
    } // crash after commit
    let db = Db::open(dir.path(), Durability::Fsync).unwrap();
    assert_eq!(
        db.meta.get(&effect_key).unwrap().unwrap().as_ref(),
        b"apply me once"
    );
    // A third delivery is a replay: the effect is not applied twice.
    let mut b3 = load(&db, &b);
    assert_eq!(b3.open(&m), Err(CryptoError::Replay));
    // The session is still usable.
    let later = a.seal(b"later").unwrap();
    assert_eq!(b3.open(&later).unwrap(), b"later");
}

/// Copies every file of `from` into `to` (a data directory "restored from
/// a backup").
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A data directory copied (a backup, a VM snapshot), the original sends,
/// then the copy starts and sends: both seal under the same ratchet position
/// (the copy cannot know), so the same message key, but never under the
/// same nonce (random, carried in the envelope), and the receiver opens the
/// one it gets. Before M12 the nonce came from the message key, so these two
/// envelopes shared key and nonce.
#[test]
fn a_restored_copy_never_reuses_a_key_with_the_same_nonce() {
    let root = tempfile::tempdir().unwrap();
    let (original, copy) = (root.path().join("original"), root.path().join("copy"));
    let (mut a, mut b) = sessions();
    b.open(&a.seal(b"hello").unwrap()).unwrap();
    {
        let db = Db::open(&original, Durability::Buffered).unwrap();
        save(&db, &a);
        db.persist_all().unwrap();
    }
    copy_dir(&original, &copy);
    let from_original = {
        let db = Db::open(&original, Durability::Buffered).unwrap();
        let mut s = load(&db, &a);
        let env = s.seal(b"from the original").unwrap();
        let mut batch = db.batch();
        peers::stage_session(&db, &mut batch, &s.peer(), &s.to_bytes());
        db.commit_fsync(batch).unwrap();
        env
    };
    let from_copy = {
        let db = Db::open(&copy, Durability::Buffered).unwrap();
        load(&db, &a).seal(b"from the copy").unwrap()
    };
    let (e1, e2) = (
        Envelope::decode(&from_original).unwrap(),
        Envelope::decode(&from_copy).unwrap(),
    );
    assert_eq!(
        (e1.header.dh, e1.header.n),
        (e2.header.dh, e2.header.n),
        "same key"
    );
    assert!(
        e1.nonce.is_some() && e2.nonce.is_some(),
        "version 2 envelopes"
    );
    assert_ne!(e1.nonce, e2.nonce, "a key was used twice with one nonce");
    assert_eq!(
        b.clone().open(&from_original).unwrap(),
        b"from the original"
    );
    assert_eq!(b.open(&from_copy).unwrap(), b"from the copy");
}
