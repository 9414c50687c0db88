//! The document API: per-app Automerge documents read as JSON and changed by
//! JSON-path operations, with history, time travel, subscriptions, deletion
//! (a tombstone that syncs), export and import.
//!
//! Each app has a *catalog* ([`masq_core::doc::catalog`]): Automerge
//! documents whose roots map every document id of the app to its state.
//! Because the catalog is a replicated document like any other, new
//! documents and deletions propagate by sync.

pub use masq_core::doc::{is_catalog, is_internal, json, ops, DocId, CATALOG_PREFIX};

use automerge::{transaction::Transaction, AutoCommit, Automerge, ChangeHash, ReadDoc};
use serde_json::Value as Json;
use tokio::sync::broadcast;

pub use ops::ChangeOp;

use crate::error::{Error, Result};
use crate::store::{take_locked, App, DocSet, Event, LockedDoc, Origin, Staged};

pub use masq_core::doc::{MAX_CHANGE_BYTES, MAX_IMPORT_BYTES};

pub use masq_core::doc::history::HistoryEntry;

/// Parses hex change hashes.
pub fn parse_heads(heads: &[String]) -> Result<Vec<ChangeHash>> {
    heads
        .iter()
        .map(|h| {
            h.parse::<ChangeHash>()
                .map_err(|_| Error::BadOp(format!("invalid change hash {h:?}")))
        })
        .collect()
}

pub use masq_core::doc::history::heads_hex;

pub(crate) use masq_core::doc::catalog::catalog_entry;
pub use masq_core::doc::catalog::{CATALOG_DELETED, CATALOG_DOC, CATALOG_KV};

/// Writes a catalog entry (see [`masq_core::doc::catalog::put_catalog_entry`]).
pub(crate) fn put_catalog_entry(tx: &mut Transaction<'_>, id: &DocId, state: &str) -> Result<()> {
    Ok(masq_core::doc::catalog::put_catalog_entry(tx, id, state)?)
}

/// The document API of one app.
#[derive(Clone, Debug)]
pub struct Docs {
    pub(crate) app: App,
}

impl App {
    /// The document API.
    pub fn docs(&self) -> Docs {
        Docs { app: self.clone() }
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Docs {
    fn store(&self) -> &crate::store::Store {
        &self.app.store
    }

    fn app_name(&self) -> &str {
        &self.app.name
    }

    /// Creates an empty document and returns its id.
    pub fn create(&self) -> Result<DocId> {
        self.create_with(&[], None)
    }

    /// Creates a document whose first change applies `ops`.
    pub fn create_with(&self, ops: &[ChangeOp], message: Option<&str>) -> Result<DocId> {
        let id = DocId::random();
        let store = self.store();
        let set = self.catalog_and(&id)?;
        let mut locked = set.lock()?;
        let LockedDoc { guard: mut cat, .. } = take_locked(&mut locked, &DocId::catalog_for(&id))?;
        let LockedDoc { guard: mut doc, .. } = take_locked(&mut locked, &id)?;
        let cat_before = cat.doc.get_heads();
        let doc_before = doc.doc.get_heads();
        let msg = message.unwrap_or("create").to_string();
        let opts = || {
            automerge::transaction::CommitOptions::default()
                .with_time(now_secs())
                .with_message(msg.clone())
        };
        doc.doc
            .transact_with(
                |_| opts(),
                |tx| -> Result<()> {
                    for op in ops {
                        ops::apply(tx, op)?;
                    }
                    Ok(())
                },
            )
            .map_err(|f| f.error)?;
        if doc.doc.get_heads().is_empty() {
            doc.doc.empty_commit(opts());
        }
        cat.doc
            .transact_with(
                |_| automerge::transaction::CommitOptions::default().with_time(now_secs()),
                |tx| put_catalog_entry(tx, &id, CATALOG_DOC),
            )
            .map_err(|f| f.error)?;
        let batch = store.db().batch();
        let staged = vec![
            Staged {
                app: self.app_name().to_string(),
                id: DocId::catalog_for(&id),
                guard: cat,
                before: cat_before,
                patches: None,
            },
            Staged {
                app: self.app_name().to_string(),
                id: id.clone(),
                guard: doc,
                before: doc_before,
                patches: None,
            },
        ];
        store.commit_docs(batch, staged, &Origin::Local)?;
        Ok(id)
    }

    /// Ids of the app's live documents (those stored here; deleted ones are gone).
    pub fn list(&self) -> Result<Vec<DocId>> {
        let mut out: Vec<DocId> = self
            .store()
            .db()
            .doc_ids(self.app_name())?
            .into_iter()
            .map(DocId::from_stored)
            .filter(|d| !is_internal(d))
            .collect();
        out.sort();
        Ok(out)
    }

    /// A document and its catalog shard, to be locked together.
    fn catalog_and(&self, id: &DocId) -> Result<DocSet> {
        let app = self.app_name().to_string();
        self.store()
            .doc_set([(app.clone(), DocId::catalog_for(id)), (app, id.clone())])
    }

    /// Locks a user document that must exist (and not be deleted).
    fn existing(&self, id: &DocId) -> Result<crate::store::DocHandle> {
        let h = self.store().doc_handle(self.app_name(), id)?;
        let exists = h
            .lock()
            .map_err(|_| Error::Storage("lock poisoned".into()))?
            .exists;
        if exists {
            return Ok(h);
        }
        let cat_h = self
            .store()
            .doc_handle(self.app_name(), &DocId::catalog_for(id))?;
        let cat = cat_h
            .lock()
            .map_err(|_| Error::Storage("lock poisoned".into()))?;
        match catalog_entry(&cat.doc, id.as_str()).as_deref() {
            Some(CATALOG_DELETED) => Err(Error::DocDeleted(id.to_string())),
            _ => Err(Error::UnknownDoc(id.to_string())),
        }
    }

    /// Runs `f` on the loaded document for reading.
    pub fn read<R>(&self, id: &DocId, f: impl FnOnce(&Automerge) -> R) -> Result<R> {
        let h = self.existing(id)?;
        let g = h
            .lock()
            .map_err(|_| Error::Storage("lock poisoned".into()))?;
        Ok(f(&g.doc))
    }

    /// The document as JSON ([`Error::TooDeep`] for a document nested deeper
    /// than [`json::MAX_DOC_DEPTH`], however it arrived).
    pub fn get(&self, id: &DocId) -> Result<Json> {
        self.read(id, |d| json::read_root(d, None))?
            .map_err(|e| name_too_deep(e, id))
    }

    /// The document as JSON at past `heads` (time travel).
    pub fn get_at(&self, id: &DocId, heads: &[ChangeHash]) -> Result<Json> {
        self.read(id, |d| {
            for h in heads {
                if d.get_change_by_hash(h).is_none() {
                    return Err(Error::UnknownHeads(id.to_string()));
                }
            }
            json::read_root(d, Some(heads)).map_err(|e| name_too_deep(e, id))
        })?
    }

    /// Current heads.
    pub fn heads(&self, id: &DocId) -> Result<Vec<ChangeHash>> {
        self.read(id, |d| d.get_heads())
    }

    /// Applies `ops` as one atomic change (with an optional message); returns the new heads.
    pub fn change(
        &self,
        id: &DocId,
        ops: &[ChangeOp],
        message: Option<&str>,
    ) -> Result<Vec<ChangeHash>> {
        let size = serde_json::to_vec(ops).map(|v| v.len()).unwrap_or(0);
        if size > MAX_CHANGE_BYTES {
            return Err(Error::TooLarge {
                what: "change",
                size,
                limit: MAX_CHANGE_BYTES,
            });
        }
        self.transact(id, message, |tx| {
            for op in ops {
                ops::apply(tx, op)?;
            }
            Ok(())
        })?;
        self.heads(id)
    }

    /// Direct access to an Automerge transaction on the document. Everything `f`
    /// does is one change, committed durably before this returns; if `f` fails
    /// nothing is applied.
    pub fn transact<R>(
        &self,
        id: &DocId,
        message: Option<&str>,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R>,
    ) -> Result<R> {
        let h = self.existing(id)?;
        let mut g = h
            .lock()
            .map_err(|_| Error::Storage("lock poisoned".into()))?;
        if g.deleted || !g.exists {
            // Deleted while this waited for the lock (see `delete`).
            return Err(Error::DocDeleted(id.to_string()));
        }
        let before = g.doc.get_heads();
        let opts = || {
            let mut o = automerge::transaction::CommitOptions::default().with_time(now_secs());
            if let Some(m) = message {
                o.set_message(m);
            }
            o
        };
        // With subscribers, log the change's patches as it is made: cheaper
        // than diffing the document afterwards, which walks all of it.
        let (out, patches) = if !is_internal(id) && self.store().has_listeners(self.app_name()) {
            let mut done = g
                .doc
                .transact_and_log_patches_with(|_| opts(), f)
                .map_err(|f| f.error)?;
            let patches = g.doc.make_patches(&mut done.patch_log);
            (done.result, Some(patches))
        } else {
            let done = g.doc.transact_with(|_| opts(), f).map_err(|f| f.error)?;
            (done.result, None)
        };
        let batch = self.store().db().batch();
        let staged = vec![Staged {
            app: self.app_name().to_string(),
            id: id.clone(),
            guard: g,
            before,
            patches,
        }];
        self.store().commit_docs(batch, staged, &Origin::Local)?;
        Ok(out)
    }

    /// The document's change history, oldest first.
    pub fn history(&self, id: &DocId) -> Result<Vec<HistoryEntry>> {
        self.read(id, masq_core::doc::history::history)
    }

    /// Subscribes to changes of one document (or, with `None`, of all the app's documents).
    pub fn subscribe(&self, id: Option<DocId>) -> Subscription {
        Subscription {
            rx: self.app.subscribe(),
            filter: Filter::Doc(id),
        }
    }

    /// Deletes a document: its data is dropped here and a tombstone in the
    /// catalog tells every other device to drop it too.
    pub fn delete(&self, id: &DocId) -> Result<()> {
        self.existing(id)?;
        let store = self.store();
        // The document is locked too, so a change in progress either
        // commits before the deletion or finds it deleted (`transact`
        // checks `exists` under the lock), never writing after it.
        let set = self.catalog_and(id)?;
        let mut locked = set.lock()?;
        let LockedDoc { guard: mut cat, .. } = take_locked(&mut locked, &DocId::catalog_for(id))?;
        let LockedDoc { guard: mut doc, .. } = take_locked(&mut locked, id)?;
        if !doc.exists {
            return Err(Error::DocDeleted(id.to_string()));
        }
        let before = cat.doc.get_heads();
        cat.doc
            .transact_with(
                |_| automerge::transaction::CommitOptions::default().with_time(now_secs()),
                |tx| put_catalog_entry(tx, id, CATALOG_DELETED),
            )
            .map_err(|f| f.error)?;
        let mut batch = store.db().batch();
        store
            .db()
            .stage_remove_doc(&mut batch, self.app_name(), id.as_str())?;
        let staged = vec![Staged {
            app: self.app_name().to_string(),
            id: DocId::catalog_for(id),
            guard: cat,
            before,
            patches: None,
        }];
        store.commit_docs(batch, staged, &Origin::Local)?;
        // Handles still held elsewhere see the document gone.
        doc.deleted = true;
        doc.exists = false;
        doc.doc = Automerge::new();
        doc.meta = Default::default();
        drop(doc);
        store.forget(self.app_name(), id);
        store.publish(
            self.app_name(),
            Event::DocDeleted {
                doc: id.clone(),
                origin: Origin::Local,
            },
        );
        Ok(())
    }

    /// The document as an Automerge file (`save()` bytes).
    pub fn export(&self, id: &DocId) -> Result<Vec<u8>> {
        self.read(id, |d| d.save())
    }

    /// Imports an Automerge file as a new document (with its full history).
    pub fn import(&self, bytes: &[u8]) -> Result<DocId> {
        if bytes.len() > MAX_IMPORT_BYTES {
            return Err(Error::TooLarge {
                what: "automerge file",
                size: bytes.len(),
                limit: MAX_IMPORT_BYTES,
            });
        }
        let mut incoming = AutoCommit::load(bytes)
            .map_err(|e| Error::BadOp(format!("not an Automerge file: {e}")))?;
        json::check_depth(&incoming).map_err(|e| match Error::from(e) {
            Error::TooDeep { limit, .. } => Error::TooDeep {
                what: "the imported document".into(),
                limit,
            },
            e => e,
        })?;
        let id = DocId::random();
        let store = self.store();
        let set = self.catalog_and(&id)?;
        let mut locked = set.lock()?;
        let LockedDoc { guard: mut cat, .. } = take_locked(&mut locked, &DocId::catalog_for(&id))?;
        let LockedDoc { guard: mut doc, .. } = take_locked(&mut locked, &id)?;
        let cat_before = cat.doc.get_heads();
        let changes = incoming.get_changes(&[]);
        doc.doc.apply_changes(changes)?;
        if doc.doc.get_heads().is_empty() {
            doc.doc.empty_commit(
                automerge::transaction::CommitOptions::default().with_time(now_secs()),
            );
        }
        cat.doc
            .transact_with(
                |_| automerge::transaction::CommitOptions::default().with_time(now_secs()),
                |tx| put_catalog_entry(tx, &id, CATALOG_DOC),
            )
            .map_err(|f| f.error)?;
        let batch = store.db().batch();
        let staged = vec![
            Staged {
                app: self.app_name().to_string(),
                id: DocId::catalog_for(&id),
                guard: cat,
                before: cat_before,
                patches: None,
            },
            Staged {
                app: self.app_name().to_string(),
                id: id.clone(),
                guard: doc,
                before: Vec::new(),
                patches: None,
            },
        ];
        store.commit_docs(batch, staged, &Origin::Local)?;
        Ok(id)
    }
}

pub(crate) use masq_core::api::event::Filter;

/// A stream of change events. A subscriber that falls more than
/// [`EVENT_CHANNEL_CAPACITY`](crate::store::EVENT_CHANNEL_CAPACITY) events behind
/// gets one [`Event::Lagged`] and should re-read what it shows.
pub struct Subscription {
    pub(crate) rx: broadcast::Receiver<Event>,
    pub(crate) filter: Filter,
}

impl Subscription {
    /// The next matching event; `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            let ev = match self.rx.recv().await {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(n)) => Event::Lagged { missed: n },
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if self.filter.matches(&ev) {
                return Some(ev);
            }
        }
    }

    /// Blocking form of [`next`](Self::next), for non-async callers (not inside a runtime).
    pub fn blocking_next(&mut self) -> Option<Event> {
        loop {
            let ev = match self.rx.blocking_recv() {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(n)) => Event::Lagged { missed: n },
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if self.filter.matches(&ev) {
                return Some(ev);
            }
        }
    }

    /// A matching event if one is already waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            let ev = match self.rx.try_recv() {
                Ok(ev) => ev,
                Err(broadcast::error::TryRecvError::Lagged(n)) => Event::Lagged { missed: n },
                Err(_) => return None,
            };
            if self.filter.matches(&ev) {
                return Some(ev);
            }
        }
    }
}

/// Names the document in a [`Error::TooDeep`] from a walk of it.
fn name_too_deep(e: masq_core::doc::DocError, id: &DocId) -> Error {
    match Error::from(e) {
        Error::TooDeep { limit, .. } => Error::TooDeep {
            what: format!("document {id}"),
            limit,
        },
        e => e,
    }
}
