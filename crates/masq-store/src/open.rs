//! Opening a store: the database, the key-value writes the last run left
//! pending, and the folder thread that folds them (see
//! [`crate::kv::pending`]). Above both the store's lower layer and the
//! key-value folding, so neither needs the other's opening.

use std::path::Path;

use masq_core::doc::DocId;

use crate::error::Result;
use crate::fold_queue::FoldQueue;
use crate::kv::pending::run_folder;
use crate::storage::Db;
use crate::store::{Store, StoreOptions};

impl Store {
    /// Opens the store in `dir` with default options (fsync durability).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, StoreOptions::default())
    }

    /// Opens the store in `dir`.
    pub fn open_with(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let db = Db::open(&dir, opts.durability)?;
        // Writes left pending by the last run (a crash, or a closed store
        // that did not fold in the background) are folded first thing.
        let pending = db.scan_pending()?;
        let folder = FoldQueue::default();
        for (app, id) in &pending.docs {
            folder.mark(app, &DocId::parse_any(id)?);
        }
        let inner = Store::inner(db, dir, &opts, folder, pending.max_seq + 1);
        let thread = if opts.fold_in_background {
            let store = Store::for_folder(inner.clone());
            Some(
                std::thread::Builder::new()
                    .name("masq-kv-fold".into())
                    .spawn(move || run_folder(store))?,
            )
        } else {
            None
        };
        Ok(Store::owning(inner, thread))
    }
}
