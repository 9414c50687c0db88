//! The key-value API: named buckets of JSON values per app, replicated as
//! Automerge maps and read through a materialized index.
//!
//! **Sharding.** A bucket is spread over [`SHARDS`] Automerge documents so a
//! bucket with a million keys is 256 documents of ~4k keys, each small enough to
//! load and change quickly. A key lives in shard `BLAKE3(key)[0]`, in the
//! document `_kv.<bucket>.<shard as two hex digits>`; the id is the same on
//! every device, so devices that write the same bucket before they ever synced
//! still write the same documents. Each shard's root map holds `key → value`,
//! the value stored as a JSON string (so a put replaces the whole value).
//!
//! **Winner.** Concurrent puts of one key are an Automerge map conflict; every
//! device picks the same winner (Automerge's deterministic rule: the op with the
//! highest (counter, actor)). [`Bucket::conflicts`] shows all kept values.
//!
//! **Index.** The winning value of every key is also written to the `kv`
//! keyspace under `app \0 bucket \0 key`, so get and list never walk
//! Automerge structures: for a local write in the batch that makes it durable,
//! for a remote change in the batch that applies it.
//!
//! **Write-behind.** A local write reaches its shard document a moment after
//! it is acknowledged, folded with the shard's other pending writes into one
//! change ([`pending`] says why and what keeps it correct).

pub mod pending;

use std::collections::{BTreeMap, BTreeSet};

use masq_core::records::WriteSet;
use serde_json::Value as Json;

use crate::doc::{catalog_entry, put_catalog_entry, DocId, Filter, Subscription, CATALOG_KV};
use crate::error::{Error, Result};
use crate::storage::kv_pending::PendingRecord;
use crate::store::{take_locked, App, Event, LockedDoc, Origin, Staged};
pub use pending::MAX_PENDING_PER_SHARD;

pub use masq_core::kv::ListOptions;
pub use masq_core::kv::{
    bucket_of_shard, shard_doc, shard_of, MAX_KEY_BYTES, MAX_LIST_LIMIT, MAX_VALUE_BYTES, SHARDS,
};
use masq_core::kv::{encode_value, validate_key, DEFAULT_LIST_LIMIT};
use masq_core::layout::kv_index::{self, index_key};

/// One bucket of an app.
#[derive(Clone, Debug)]
pub struct Bucket {
    pub(crate) app: App,
    pub(crate) name: String,
}

impl App {
    /// A key-value bucket.
    pub fn bucket(&self, name: &str) -> Result<Bucket> {
        crate::store::validate_name("bucket", name)?;
        Ok(Bucket {
            app: self.clone(),
            name: name.to_string(),
        })
    }
}

impl Bucket {
    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The winning value of `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Json>> {
        validate_key(key)?;
        let db = self.app.store.db();
        match db.kv.get(index_key(&self.app.name, &self.name, key))? {
            None => Ok(None),
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        }
    }

    /// Sets `key` to `value`, durably.
    pub fn put(&self, key: &str, value: &Json) -> Result<()> {
        self.write(vec![(key.to_string(), Some(value.clone()))])
    }

    /// Sets many keys in one atomic, durable write (one Automerge change per shard).
    pub fn put_many(&self, entries: impl IntoIterator<Item = (String, Json)>) -> Result<()> {
        self.write(entries.into_iter().map(|(k, v)| (k, Some(v))).collect())
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool> {
        validate_key(key)?;
        let existed = self.get(key)?.is_some();
        if existed {
            self.write(vec![(key.to_string(), None)])?;
        }
        Ok(existed)
    }

    /// The shards a write touches, with their entries, in shard order.
    fn write(&self, entries: Vec<(String, Option<Json>)>) -> Result<()> {
        // Per shard, key -> new value; a key given twice keeps its last value.
        let mut by_shard: BTreeMap<usize, BTreeMap<String, Option<String>>> = BTreeMap::new();
        for (k, v) in entries {
            validate_key(&k)?;
            let enc = v.as_ref().map(encode_value).transpose()?;
            by_shard.entry(shard_of(&k)).or_default().insert(k, enc);
        }
        if by_shard.is_empty() {
            return Ok(());
        }
        let store = &self.app.store;
        let app = self.app.name.as_str();
        let shard_ids: Vec<DocId> = by_shard.keys().map(|s| shard_doc(&self.name, *s)).collect();
        // Whether a shard is new (looked at one at a time, never two locks
        // at once): then the catalog must list it, in the same batch, and
        // the set to lock takes the catalog shards too.
        let shards = store.doc_set(shard_ids.iter().map(|id| (app.to_string(), id.clone())))?;
        let new_shard = shards.any(|d| !d.exists)?;
        let cat_ids: BTreeSet<DocId> = if new_shard {
            shard_ids.iter().map(DocId::catalog_for).collect()
        } else {
            BTreeSet::new()
        };
        let set = if new_shard {
            store.doc_set(
                cat_ids
                    .iter()
                    .chain(&shard_ids)
                    .map(|id| (app.to_string(), id.clone())),
            )?
        } else {
            shards
        };
        let mut locked = set.lock()?;
        let mut staged: Vec<Staged<'_>> = Vec::new();
        for cat_id in &cat_ids {
            let LockedDoc { guard: mut cat, .. } = take_locked(&mut locked, cat_id)?;
            let before = cat.doc.get_heads();
            let missing: Vec<&DocId> = shard_ids
                .iter()
                .filter(|id| DocId::catalog_for(id) == *cat_id)
                .filter(|id| catalog_entry(&cat.doc, id.as_str()).is_none())
                .collect();
            if !missing.is_empty() {
                cat.doc
                    .transact(|tx| -> Result<()> {
                        for id in &missing {
                            put_catalog_entry(tx, id, CATALOG_KV)?;
                        }
                        Ok(())
                    })
                    .map_err(|f| f.error)?;
            }
            staged.push(Staged {
                app: app.to_string(),
                id: cat_id.clone(),
                guard: cat,
                before,
                patches: None,
            });
        }
        let db = store.db();
        let mut batch = db.batch();
        // Shards whose writes wait for the folder (see `pending`).
        let mut deferred: Vec<&DocId> = Vec::new();
        for (id, (_, items)) in shard_ids.iter().zip(by_shard.iter()) {
            let LockedDoc { guard: mut g, .. } = match take_locked(&mut locked, id) {
                Ok(l) => l,
                Err(e) => {
                    for s in &staged {
                        store.forget(&s.app, &s.id);
                    }
                    return Err(e);
                }
            };
            let before = g.doc.get_heads();
            // A new shard is written at once (its first change creates it,
            // and the catalog lists it in the same batch); so is a shard whose
            // pending list would pass its bound.
            let inline = new_shard || g.kv_pending.len() + items.len() > MAX_PENDING_PER_SHARD;
            if inline {
                let extra = items.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
                if let Err(e) = pending::fold_into(db, &mut batch, app, id, &mut g, extra) {
                    drop(g);
                    // Earlier shards of this write changed in memory only.
                    for s in &staged {
                        store.forget(&s.app, &s.id);
                    }
                    return Err(e);
                }
            } else {
                for (k, v) in items {
                    let seq = store.next_kv_seq();
                    db.stage_pending(&mut batch, app, id.as_str(), seq, k, v.as_deref());
                    g.kv_pending.push(PendingRecord {
                        seq,
                        key: k.clone(),
                        value: v.clone(),
                    });
                }
                deferred.push(id);
            }
            // A local put (or delete) supersedes every value of the key this
            // device has seen, so the new winner is what was just written:
            // index it as is, without reading it back from Automerge.
            let mut index = WriteSet::new();
            for (k, v) in items {
                kv_index::stage_winner(
                    &mut index,
                    app,
                    &self.name,
                    k,
                    v.as_deref().map(str::as_bytes),
                );
            }
            if let Err(e) = db.stage(&mut batch, index) {
                drop(g);
                for s in &staged {
                    store.forget(&s.app, &s.id);
                }
                return Err(e);
            }
            staged.push(Staged {
                app: app.to_string(),
                id: id.clone(),
                guard: g,
                before,
                patches: None,
            });
        }
        // The folder blocks on the shard locks until this batch is queued,
        // so its fold commits after the pending records it removes.
        for id in deferred {
            store.inner.folder.mark(app, id);
        }
        store.commit_docs(batch, staged, &Origin::Local)?;
        if store.has_listeners(app) {
            let events = by_shard.into_values().flatten().map(|(key, enc)| {
                let value = enc.map(|e| serde_json::from_str(&e).unwrap_or(Json::String(e)));
                (key, value)
            });
            for (key, value) in events {
                store.publish(
                    app,
                    Event::Kv {
                        bucket: self.name.clone(),
                        key,
                        value,
                        origin: Origin::Local,
                    },
                );
            }
        }
        Ok(())
    }

    /// How many keys the bucket holds, counting at most `cap` (then `true`:
    /// there are more).
    pub fn count(&self, cap: usize) -> Result<(usize, bool)> {
        let prefix = index_key(&self.app.name, &self.name, "");
        let mut n = 0;
        for g in self.app.store.db().kv.prefix(prefix) {
            g.key()?;
            if n == cap {
                return Ok((n, true));
            }
            n += 1;
        }
        Ok((n, false))
    }

    /// Entries in key order.
    pub fn list(&self, opts: &ListOptions) -> Result<Vec<(String, Json)>> {
        let limit = opts.limit.unwrap_or(DEFAULT_LIST_LIMIT).min(MAX_LIST_LIMIT);
        let db = self.app.store.db();
        let base = index_key(&self.app.name, &self.name, "");
        let (start, prefix) = kv_index::list_start(
            &self.app.name,
            &self.name,
            &opts.prefix,
            opts.start_after.as_deref(),
        );
        let mut out = Vec::new();
        for g in db.kv.range(start..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = g.into_inner()?;
            if !k.starts_with(&prefix) {
                break;
            }
            let key = String::from_utf8_lossy(&k[base.len()..]).to_string();
            out.push((key, serde_json::from_slice(&v)?));
        }
        Ok(out)
    }

    /// Every value Automerge kept for `key` (more than one after concurrent
    /// puts on different devices; the first is the winner `get` returns).
    pub fn conflicts(&self, key: &str) -> Result<Vec<Json>> {
        validate_key(key)?;
        let id = shard_doc(&self.name, shard_of(key));
        // The shard's own local writes first, so Automerge has them.
        pending::fold_docs(&self.app.store, vec![(self.app.name.clone(), id.clone())])?;
        let h = self.app.store.doc_handle(&self.app.name, &id)?;
        let g = h
            .lock()
            .map_err(|_| Error::Storage("lock poisoned".into()))?;
        Ok(masq_core::kv::all_values(&g.doc, key)?)
    }

    /// Watches keys starting with `prefix` (local and remote changes).
    pub fn watch(&self, prefix: &str) -> Subscription {
        Subscription {
            rx: self.app.subscribe(),
            filter: Filter::Kv {
                bucket: self.name.clone(),
                prefix: prefix.to_string(),
            },
        }
    }
}
