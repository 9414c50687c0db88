//! What goes into a sync payload: Automerge sync messages packed into batches
//! under [`MAX_BATCH_BYTES`], each message's changes bundled when that is
//! smaller ([`bundle_changes`]).

use automerge::sync::Message;
use automerge::Automerge;

use crate::wire::device::{DocMessage, SyncPayload};

/// Largest encoded batch payload: batches are packed under it; a single
/// bigger sync message is split into [`fragments`](super::fragments). Well
/// under the relay's frame limit.
pub const MAX_BATCH_BYTES: usize = 192 * 1024;

/// A sync message carrying at least this many changes sends them as one
/// Automerge bundle instead (see [`bundle_changes`]).
pub const BUNDLE_MIN_CHANGES: usize = 4;

/// Replaces the change chunks of `msg` by one Automerge bundle of the same
/// changes, when there are at least [`BUNDLE_MIN_CHANGES`] and the bundle is
/// smaller.
///
/// Automerge's sync protocol sends each change as its own chunk (about 100
/// bytes for a one-key edit, most of it actor id, dependency hash and
/// checksum); a bundle encodes a run of changes with the columnar compression
/// of `save()` (1 000 one-key edits: 101 KB as chunks, 2 KB as a bundle). The
/// receiver needs nothing new: Automerge hands a message's chunks to
/// `load_incremental`, which reads bundles too, and recomputes every change's
/// hash from it. Automerge marks the bundle format experimental, so it is used
/// only on the wire, never stored, and both ends run the automerge version
/// pinned in Cargo.lock (the sync payload version is checked strictly).
/// If anything goes wrong the message keeps its chunks.
pub fn bundle_changes(doc: &Automerge, msg: &mut Message) {
    // A v1 message has one chunk per change; a v2 message one chunk holding
    // the change chunks back to back (or a whole document, left alone).
    let mut hashes = Vec::new();
    let mut raw_len = 0usize;
    for data in msg.changes.iter() {
        raw_len += data.len();
        let Some(chunks) = split_change_chunks(data) else {
            return;
        };
        for chunk in chunks {
            match automerge::Change::try_from(chunk) {
                Ok(c) => hashes.push(c.hash()),
                Err(_) => return,
            }
        }
    }
    if hashes.len() < BUNDLE_MIN_CHANGES {
        return;
    }
    if let Ok(bundle) = doc.bundle(hashes) {
        if bundle.bytes().len() < raw_len {
            msg.changes = vec![bundle.bytes().to_vec()].into();
        }
    }
}

/// Splits back-to-back Automerge change chunks (each: 4-byte magic, 4-byte
/// checksum, type byte, LEB128 body length, body). `None` if any chunk is not
/// an uncompressed change (type 1), e.g. a whole document.
pub fn split_change_chunks(mut data: &[u8]) -> Option<Vec<&[u8]>> {
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    const CHANGE: u8 = 1;
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.get(..4)? != MAGIC || *data.get(8)? != CHANGE {
            return None;
        }
        let (mut len, mut shift, mut pos) = (0usize, 0u32, 9usize);
        loop {
            let b = *data.get(pos)?;
            pos += 1;
            len |= usize::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 56 {
                return None;
            }
        }
        let end = pos.checked_add(len)?;
        out.push(data.get(..end)?);
        data = &data[end..];
    }
    Some(out)
}

/// Packs document messages, in order, into batch payloads of at most
/// [`MAX_BATCH_BYTES`] each (a message bigger than that goes alone).
pub fn pack_batches(messages: impl IntoIterator<Item = DocMessage>) -> Vec<SyncPayload> {
    let mut out = Vec::new();
    let mut cur: Vec<DocMessage> = Vec::new();
    let mut size = 0usize;
    for m in messages {
        let s = SyncPayload::item_size(&m);
        if !cur.is_empty() && size + s > MAX_BATCH_BYTES {
            out.push(SyncPayload::Batch(std::mem::take(&mut cur)));
            size = 0;
        }
        size += s;
        cur.push(m);
    }
    if !cur.is_empty() {
        out.push(SyncPayload::Batch(cur));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync::{State, SyncDoc};
    use automerge::transaction::Transactable;

    #[test]
    fn splits_back_to_back_changes_and_refuses_anything_else() {
        let mut doc = automerge::Automerge::new();
        for i in 0..3i64 {
            doc.transact(|tx| tx.put(automerge::ROOT, "k", i)).unwrap();
        }
        let all = doc.save_after(&[]);
        let chunks = split_change_chunks(&all).unwrap();
        assert_eq!(chunks.len(), 3);
        for c in &chunks {
            automerge::Change::try_from(*c).unwrap();
        }
        // Truncated, garbage, and a whole document: refused, no panic.
        assert!(split_change_chunks(&all[..all.len() - 1]).is_none());
        assert!(split_change_chunks(&[0x85, 0x6f, 0x4a, 0x83, 0, 0, 0, 0, 1, 0xff]).is_none());
        assert!(split_change_chunks(b"garbage").is_none());
        assert!(split_change_chunks(&doc.save()).is_none());
        assert_eq!(split_change_chunks(&[]).unwrap().len(), 0);
    }

    /// Exchanges messages until both sides are quiet, bundling every message
    /// `a` sends; returns the most bytes one bundling saved.
    fn sync(a: &mut Automerge, b: &mut Automerge, sa: &mut State, sb: &mut State) -> usize {
        let mut biggest_gain = 0usize;
        for _ in 0..10 {
            if let Some(mut m) = a.generate_sync_message(sa) {
                let plain = m.clone().encode().len();
                bundle_changes(a, &mut m);
                biggest_gain = biggest_gain.max(plain.saturating_sub(m.clone().encode().len()));
                b.receive_sync_message(sb, Message::decode(&m.encode()).unwrap())
                    .unwrap();
            }
            if let Some(m) = b.generate_sync_message(sb) {
                a.receive_sync_message(sa, m).unwrap();
            }
        }
        biggest_gain
    }

    /// Once two devices are in sync, a run of new changes goes as one
    /// bundle, smaller, and still brings every change. (A history first, so
    /// the new changes are under a third of the document: more, and
    /// Automerge sends the whole document instead.)
    #[test]
    fn a_bundled_message_syncs_the_same_changes() {
        let mut a = Automerge::new();
        for i in 0..500i64 {
            a.transact(|tx| tx.put(automerge::ROOT, "h", i)).unwrap();
        }
        let mut b = Automerge::new();
        let (mut sa, mut sb) = (State::new(), State::new());
        sync(&mut a, &mut b, &mut sa, &mut sb);
        for i in 0..50i64 {
            a.transact(|tx| tx.put(automerge::ROOT, "k", i)).unwrap();
        }
        let gain = sync(&mut a, &mut b, &mut sa, &mut sb);
        assert_eq!(a.get_heads(), b.get_heads());
        assert!(gain > 1000, "bundling saved only {gain} bytes");
    }

    #[test]
    fn batches_stay_under_the_limit_and_keep_order() {
        let msg = |i: usize, len: usize| DocMessage {
            app: "a".into(),
            doc: format!("d{i}"),
            msg: vec![0; len],
        };
        let big = MAX_BATCH_BYTES / 3;
        let out = pack_batches(
            (0..7)
                .map(|i| msg(i, big))
                .chain([msg(7, MAX_BATCH_BYTES * 2)]),
        );
        let mut seen = Vec::new();
        for p in &out {
            let SyncPayload::Batch(items) = p else {
                panic!()
            };
            let size: usize = items.iter().map(SyncPayload::item_size).sum();
            assert!(items.len() == 1 || size <= MAX_BATCH_BYTES);
            seen.extend(items.iter().map(|m| m.doc.clone()));
        }
        assert_eq!(seen, (0..8).map(|i| format!("d{i}")).collect::<Vec<_>>());
        assert!(pack_batches([]).is_empty());
    }
}
