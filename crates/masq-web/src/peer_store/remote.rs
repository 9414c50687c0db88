//! The page's store as the core device's host
//! ([`DeviceHost`](masq_core::device::DeviceHost)): its records (read
//! through [`Records`], committed into the outbox), the sync messages it
//! generates for a peer, and a peer's batch applied in one transaction with
//! the ratchet state that opened it.
//!
//! The same steps as the native store's sync core (`masq-store::sync::core`),
//! over the page's records: catalogs before documents, documents deleted
//! here stay deleted, a KV shard's new winners go into the index in the same
//! commit, and the sync state of each message is stored with its changes.
//!
//! One difference on purpose: a page holds one app. Messages for any other
//! app are counted ([`Applied::other_apps`]) and dropped, never stored.

use std::collections::BTreeMap;

use automerge::sync::{State, SyncDoc};
use masq_core::api::event::Event;
use masq_core::api::ApiError;
use masq_core::crypto::DeviceId;
use masq_core::device::host::{self as device_host, Applied, Commit, DeviceHost};
use masq_core::doc::catalog::{catalog_entry, CATALOG_DELETED};
use masq_core::doc::{is_catalog, is_internal, DocId};
use masq_core::layout::doc_chunks;
use masq_core::records::{Records, Table, WriteSet};
use masq_core::sync::batching::bundle_changes;
use masq_core::sync::doc_states::DocStates;
use masq_core::sync::receive::{apply_message, sort_batch};
use masq_core::wire::device::DocMessage;

use super::PeerStore;
use crate::sync::{is_document_fault, DEFAULT_NAME};

impl Records for PeerStore {
    type Error = ApiError;

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, ApiError> {
        Ok(self.tables.borrow().get(table, key).map(<[u8]>::to_vec))
    }

    fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ApiError> {
        Ok(self
            .tables
            .borrow()
            .prefix(table, prefix)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl DeviceHost for PeerStore {
    type GroupGuard<'a> = ();

    /// Into the mirror and the outbox: the page commits the outbox before
    /// it sends the device's frames (the host contract).
    fn commit(&self, writes: WriteSet, _why: Commit) -> Result<(), ApiError> {
        self.put_records(writes);
        Ok(())
    }

    fn all_docs(&self) -> Result<Vec<(String, DocId)>, ApiError> {
        Ok(self
            .app_docs()
            .into_iter()
            .map(|d| (self.app.clone(), d))
            .collect())
    }

    fn settle_local_writes(&self) -> Result<(), ApiError> {
        self.fold_batch()
    }

    fn generate(
        &self,
        app: &str,
        doc: &DocId,
        st: &mut State,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        if app != self.app {
            return Ok(None);
        }
        self.with_doc(doc, |l| {
            if l.meta.is_none() {
                return Ok(None);
            }
            Ok(l.doc.generate_sync_message(st).map(|mut m| {
                bundle_changes(&l.doc, &mut m);
                m.encode()
            }))
        })
    }

    fn apply_batch(
        &self,
        peer: &DeviceId,
        items: Vec<DocMessage>,
        states: &mut DocStates,
        extra: WriteSet,
    ) -> Result<Applied, ApiError> {
        self.apply_remote(peer, items, states, extra)
    }

    fn is_document_fault(e: &ApiError) -> bool {
        is_document_fault(e)
    }

    fn lock_group(&self) {}

    fn only_apps(&self) -> Option<Vec<String>> {
        Some(vec![self.app.clone()])
    }

    fn default_name(&self) -> String {
        DEFAULT_NAME.to_string()
    }
}

impl PeerStore {
    /// The `meta` record under `key`.
    pub fn meta(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.tables
            .borrow()
            .get(Table::Meta, key)
            .map(<[u8]>::to_vec)
    }

    /// Records that belong to no request (the identity, peers, ratchet
    /// sessions, notes): into the mirror and the outbox, committed with
    /// the batch like a request's writes.
    pub fn put_records(&self, writes: WriteSet) {
        if writes.is_empty() {
            return;
        }
        self.tables.borrow_mut().apply(&writes);
        self.outbox.borrow_mut().append(writes);
    }

    /// Every stored document of the app, catalogs first (a peer learns of
    /// deletions before it is offered what was deleted).
    pub fn app_docs(&self) -> Vec<DocId> {
        let prefix = doc_chunks::app_prefix(&self.app);
        let tables = self.tables.borrow();
        let mut out: Vec<DocId> = tables
            .prefix(Table::Docs, &prefix)
            .filter_map(|(k, _)| std::str::from_utf8(&k[prefix.len()..]).ok())
            .filter_map(|s| DocId::parse_any(s).ok())
            .collect();
        out.sort_by_key(|id| (!is_catalog(id), id.clone()));
        out
    }

    /// The documents changed since the last call, each with the one peer
    /// its changes came from (`None`: from here, or several).
    pub fn take_changed(&self) -> BTreeMap<DocId, Option<DeviceId>> {
        std::mem::take(&mut *self.changed.borrow_mut())
    }

    /// Folds the batch's KV writes into their shard documents now (before
    /// sync messages about them are generated or a peer's applied).
    pub fn fold_batch(&self) -> Result<(), ApiError> {
        self.fold_pending(None)
    }

    /// Applies a batch of sync messages from `peer` as ONE transaction,
    /// with `extra` (the ratchet state that opened it): either all of it
    /// reaches the outbox or none. Messages that do not decode or apply are
    /// counted and skipped; the rest apply.
    fn apply_remote(
        &self,
        peer: &DeviceId,
        items: Vec<DocMessage>,
        states: &mut DocStates,
        extra: WriteSet,
    ) -> Result<Applied, ApiError> {
        // This page's KV writes of the batch become a change first, as the
        // native store folds its pending writes before a peer's apply.
        self.fold_pending(None)?;
        let mut applied = Applied::default();
        // Decode and check first; catalogs first (their tombstones decide
        // about the documents). The core's rules, as natively.
        let batch = sort_batch(items, |app| app == self.app);
        applied.other_apps = batch.refused;
        applied.rejected = batch.rejected;
        let mut sorted = batch.messages;
        // Documents deleted here never come back through a late message.
        let mut deleted_here = Vec::new();
        for (_, _, doc) in sorted.keys() {
            if is_internal(doc) {
                continue;
            }
            let entry = match self.with_doc(&DocId::catalog_for(doc), |c| {
                Ok(catalog_entry(&c.doc, doc.as_str()))
            }) {
                Ok(entry) => entry,
                // A catalog that does not decode cannot say what was
                // deleted here: its documents' messages wait (rejected).
                Err(e) if is_document_fault(&e) => {
                    applied.rejected += 1;
                    deleted_here.push(doc.clone());
                    continue;
                }
                Err(e) => return Err(e),
            };
            if entry.as_deref() == Some(CATALOG_DELETED) {
                deleted_here.push(doc.clone());
            }
        }
        sorted.retain(|(_, _, doc), _| !deleted_here.contains(doc));
        let listening = self.listening.get();
        self.write(|txn| {
            txn.from = Some(*peer);
            txn.writes.append(extra);
            let mut tombstoned: Vec<String> = Vec::new();
            for ((_, _, doc), msg) in sorted {
                if tombstoned.iter().any(|t| t == doc.as_str()) {
                    continue; // deleted by this very batch
                }
                // A document whose stored records do not decode takes no
                // message (it stays as it is, its reads answer `corrupt`);
                // the rest of the batch applies.
                match self.with_doc(&doc, |_| Ok(())) {
                    Ok(()) => {}
                    Err(e) if is_document_fault(&e) => {
                        applied.rejected += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                txn.touched.push(doc.clone());
                let key = (*peer, self.app.clone(), doc.clone());
                states.note_received(key.clone());
                let st = device_host::state_mut(self, states, key)?;
                let subscribers = listening && !is_internal(&doc);
                let (before, done) = self.with_doc(&doc, |l| {
                    let before = l.doc.get_heads();
                    let done = apply_message(
                        &mut txn.writes,
                        peer,
                        &self.app,
                        &doc,
                        &mut l.doc,
                        st,
                        msg,
                        subscribers,
                    )?;
                    Ok((before, done))
                })?;
                let Ok(done) = done else {
                    applied.rejected += 1;
                    continue;
                };
                tombstoned.extend(done.tombstoned);
                if let Some(kv) = done.kv {
                    if listening {
                        for (key, value) in kv.winners {
                            txn.events.push(Event::Kv {
                                bucket: kv.bucket.clone(),
                                key,
                                value,
                                origin: txn.origin(),
                            });
                        }
                    }
                }
                // Staged even when nothing changed: a document this page does
                // not have yet is stored (empty) here, as natively, so that
                // the reply asking for its changes is generated.
                self.stage(txn, &doc, &before, done.patches)?;
                applied.docs.push((self.app.clone(), doc));
            }
            // Documents a peer deleted: their records go in the same commit.
            for id in tombstoned {
                let Ok(doc) = DocId::parse_any(&id) else {
                    continue;
                };
                let key = doc_chunks::doc_key(&self.app, doc.as_str());
                let stored = self.tables.borrow().get(Table::Docs, &key).is_some();
                if is_internal(&doc) || !stored {
                    continue;
                }
                doc_chunks::stage_remove_doc(&mut txn.writes, &self.app, doc.as_str());
                txn.deleted.push(doc.clone());
                txn.changed.retain(|d| *d != doc);
                if listening {
                    txn.events.push(Event::DocDeleted {
                        doc,
                        origin: txn.origin(),
                    });
                }
            }
            Ok(applied)
        })
    }
}
