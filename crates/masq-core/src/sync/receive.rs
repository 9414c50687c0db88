//! Applying one received Automerge sync message to its document: the step
//! every store runs for each message of a received batch, with the document
//! already loaded (and locked, where a shell has threads).
//!
//! What it decides: which patches to log (those someone needs: catalog and
//! KV shard bookkeeping, the app's subscribers), the persisted sync state
//! (staged with the message's effects, so a crash never separates them),
//! which catalog entries became tombstones, and the KV index entries a
//! shard's new winners need. The caller commits the write set with the
//! document's new chunk (`doc::stored::stage_doc_change`) and the ratchet
//! state that opened the envelope, all at once.
//!
//! Before that, [`sort_batch`] turns a received batch into the messages a
//! shell applies and the order it applies them in: the same filter, checks
//! and order in every shell.

use std::collections::BTreeMap;

use automerge::sync::{Message, State, SyncDoc};
use automerge::{Automerge, Patch, PatchLog};
use serde_json::Value as Json;

use crate::crypto::DeviceId;
use crate::doc::catalog::{catalog_entry, CATALOG_DELETED};
use crate::doc::{is_catalog, DocError, DocId};
use crate::kv::{bucket_of_shard, changed_keys, stage_reindex};
use crate::layout::meta::stage_sync_state;
use crate::names::validate_name;
use crate::records::WriteSet;
use crate::wire::device::DocMessage;

/// A received batch's messages, each decoded, in the order they are
/// applied: by app, an app's catalog shards before its other documents
/// (a catalog's tombstones decide whether a document's message still
/// applies, and the native store locks in this order), each by id.
#[derive(Debug, Default)]
pub struct SortedBatch {
    /// Key: (app, `false` for a catalog shard, document id).
    pub messages: BTreeMap<(String, bool, DocId), Message>,
    /// Messages with a bad app name or document id, or that do not decode.
    pub rejected: usize,
    /// Messages of an app that `accept` refused (sync off for it, paused,
    /// or another app than a page's): dropped before anything else.
    pub refused: usize,
}

impl SortedBatch {
    /// The messages in order, with their app and document.
    pub fn into_messages(self) -> impl Iterator<Item = (String, DocId, Message)> {
        self.messages
            .into_iter()
            .map(|((app, _, doc), msg)| (app, doc, msg))
    }
}

/// Sorts a received batch (see [`SortedBatch`]): `accept` says whether a
/// message of this app may apply here at all. Of two messages for one
/// document in a batch (no sender makes them), the later stays.
pub fn sort_batch(items: Vec<DocMessage>, mut accept: impl FnMut(&str) -> bool) -> SortedBatch {
    let mut out = SortedBatch::default();
    for it in items {
        if !accept(&it.app) {
            out.refused += 1;
            continue;
        }
        let (Ok(()), Ok(doc)) = (validate_name("app", &it.app), DocId::parse_any(&it.doc)) else {
            out.rejected += 1;
            continue;
        };
        match Message::decode(&it.msg) {
            Ok(m) => {
                out.messages.insert((it.app, !is_catalog(&doc), doc), m);
            }
            Err(_) => out.rejected += 1,
        }
    }
    out
}

/// What one message did to its document.
#[derive(Debug, Default)]
pub struct MessageApplied {
    /// The patches logged while it applied (when asked for, or needed).
    pub patches: Option<Vec<Patch>>,
    /// Whether the document's heads moved.
    pub changed: bool,
    /// For a catalog document: the ids whose entry is now a tombstone.
    pub tombstoned: Vec<String>,
    /// For a KV shard: its changed keys and their new winners (already
    /// staged in the KV index).
    pub kv: Option<KvChanges>,
}

/// The keys of one bucket that a received message changed.
#[derive(Debug, Clone, PartialEq)]
pub struct KvChanges {
    /// The bucket.
    pub bucket: String,
    /// Each changed key and its new winner (`None`: no value left).
    pub winners: Vec<(String, Option<Json>)>,
}

/// Why a message was refused (the document and `state` are unchanged, and
/// nothing was staged).
#[derive(Debug, thiserror::Error)]
#[error("sync message refused: {0}")]
pub struct MessageRefused(#[source] pub automerge::AutomergeError);

/// Applies `msg` from `peer` to `doc` (of `app`, id `id`) under its sync
/// `state`, and stages into `writes` the state and any KV index entries.
/// `subscribers` says whether the app's subscribers want this document's
/// patches. A pending local KV write of the shard must be folded before
/// (see [`kv`](crate::kv)).
#[allow(clippy::too_many_arguments)]
pub fn apply_message(
    writes: &mut WriteSet,
    peer: &DeviceId,
    app: &str,
    id: &DocId,
    doc: &mut Automerge,
    state: &mut State,
    msg: Message,
    subscribers: bool,
) -> Result<Result<MessageApplied, MessageRefused>, DocError> {
    let bucket = bucket_of_shard(id);
    // Patches are logged while the changes apply (cost proportional to the
    // changes) when someone needs them. Diffing afterwards walks the whole
    // document, which made each change of a large document slow to become
    // visible.
    let wanted = is_catalog(id) || bucket.is_some() || subscribers;
    let mut log = if wanted {
        PatchLog::active()
    } else {
        PatchLog::inactive()
    };
    let before = doc.get_heads();
    if let Err(e) = doc.receive_sync_message_log_patches(state, msg, &mut log) {
        return Ok(Err(MessageRefused(e)));
    }
    let patches = wanted.then(|| doc.make_patches(&mut log));
    stage_sync_state(writes, peer, app, id.as_str(), &state.encode());
    let mut out = MessageApplied {
        changed: doc.get_heads() != before,
        ..Default::default()
    };
    if out.changed {
        let keys = changed_keys(patches.as_deref().unwrap_or_default());
        if is_catalog(id) {
            out.tombstoned = keys
                .into_iter()
                .filter(|k| catalog_entry(doc, k).as_deref() == Some(CATALOG_DELETED))
                .collect();
        } else if let Some(bucket) = bucket {
            let winners = stage_reindex(writes, app, bucket, doc, keys.iter().map(String::as_str))?;
            out.kv = Some(KvChanges {
                bucket: bucket.to_string(),
                winners,
            });
        }
    }
    out.patches = patches;
    Ok(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_sorted_catalogs_first_and_its_bad_messages_counted() {
        let good = Automerge::new()
            .generate_sync_message(&mut State::new())
            .unwrap()
            .encode();
        let doc = DocId::random();
        let catalog = DocId::catalog_for(&doc);
        let item = |app: &str, doc: &str, msg: &[u8]| DocMessage {
            app: app.into(),
            doc: doc.into(),
            msg: msg.to_vec(),
        };
        let sorted = sort_batch(
            vec![
                item("notes", doc.as_str(), &good),
                item("off", doc.as_str(), &good),
                item("notes", catalog.as_str(), &good),
                item("bad app!", doc.as_str(), &good),
                item("notes", "not an id", &good),
                item("notes", doc.as_str(), b"junk"),
                item("a", doc.as_str(), &good),
            ],
            |app| app != "off",
        );
        assert_eq!((sorted.rejected, sorted.refused), (3, 1));
        let order: Vec<(String, DocId)> = sorted.into_messages().map(|(a, d, _)| (a, d)).collect();
        assert_eq!(
            order,
            vec![
                ("a".to_string(), doc.clone()),
                ("notes".to_string(), catalog),
                ("notes".to_string(), doc),
            ]
        );
    }
    use crate::doc::catalog::put_catalog_entry;
    use crate::kv::{fold, shard_doc};
    use crate::records::{Table, Write};

    /// Syncs `from` into `to` until quiet, applying every message to `to`
    /// through `apply_message`; returns what each application did.
    fn sync_into(
        id: &DocId,
        from: &mut Automerge,
        to: &mut Automerge,
    ) -> (Vec<MessageApplied>, WriteSet) {
        let (mut sf, mut st) = (State::new(), State::new());
        let mut writes = WriteSet::new();
        let mut applied = Vec::new();
        let peer = DeviceId([1; 32]);
        for _ in 0..10 {
            if let Some(m) = from.generate_sync_message(&mut sf) {
                let m = Message::decode(&m.encode()).unwrap();
                applied.push(
                    apply_message(&mut writes, &peer, "app", id, to, &mut st, m, false)
                        .unwrap()
                        .unwrap(),
                );
            }
            if let Some(m) = to.generate_sync_message(&mut st) {
                from.receive_sync_message(&mut sf, m).unwrap();
            }
        }
        assert_eq!(from.get_heads(), to.get_heads());
        (applied, writes)
    }

    #[test]
    fn a_shard_change_reindexes_its_keys_and_stages_the_sync_state() {
        let id = shard_doc("b", 3);
        let mut a = Automerge::new();
        fold(&mut a, &[], [("k", Some("1")), ("gone", None)]).unwrap();
        let mut b = Automerge::new();
        let (applied, writes) = sync_into(&id, &mut a, &mut b);
        let kv: Vec<_> = applied.iter().filter_map(|x| x.kv.clone()).collect();
        assert_eq!(
            kv,
            [KvChanges {
                bucket: "b".to_string(),
                winners: vec![("k".to_string(), Some(serde_json::json!(1)))]
            }]
        );
        let tables: Vec<Table> = writes
            .iter()
            .map(|w| match w {
                Write::Put { table, .. }
                | Write::Remove { table, .. }
                | Write::RemovePrefix { table, .. } => *table,
            })
            .collect();
        assert!(tables.contains(&Table::Kv) && tables.contains(&Table::Meta));
    }

    #[test]
    fn a_catalog_change_reports_tombstones() {
        let id = DocId::catalog_for(&DocId::random());
        let (d1, d2) = (DocId::random(), DocId::random());
        let mut a = Automerge::new();
        a.transact(|tx| {
            put_catalog_entry(tx, &d1, CATALOG_DELETED)?;
            put_catalog_entry(tx, &d2, "doc")
        })
        .unwrap();
        let mut b = Automerge::new();
        let (applied, _) = sync_into(&id, &mut a, &mut b);
        let dead: Vec<String> = applied.into_iter().flat_map(|x| x.tombstoned).collect();
        assert_eq!(dead, [d1.to_string()]);
    }

    #[test]
    fn a_message_that_does_not_apply_is_refused_and_changes_nothing() {
        // A message whose changes depend on a change `to` never gets.
        let mut a = Automerge::new();
        a.transact(|tx| automerge::transaction::Transactable::put(tx, automerge::ROOT, "x", 1))
            .unwrap();
        let mut to = Automerge::new();
        let mut st = State::new();
        let mut forged = Message::decode(&{
            let mut s = State::new();
            a.generate_sync_message(&mut s).unwrap().encode()
        })
        .unwrap();
        forged.changes = vec![b"\x85\x6f\x4a\x83garbage".to_vec()].into();
        let mut writes = WriteSet::new();
        let id = DocId::random();
        let out = apply_message(
            &mut writes,
            &DeviceId([1; 32]),
            "app",
            &id,
            &mut to,
            &mut st,
            forged,
            true,
        )
        .unwrap();
        assert!(out.is_err());
        assert!(writes.is_empty());
        assert!(to.get_heads().is_empty());
    }
}
