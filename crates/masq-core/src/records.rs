//! Abstract persistence: the tables every masq store keeps, and writes to
//! them as data.
//!
//! The core never touches a disk. Where it decides what to store, it appends
//! [`Write`]s to a [`WriteSet`]; the shell commits a whole set atomically and
//! durably (the native store: one fjall batch, its keyspaces named by
//! [`Table::name`]; the browser: one IndexedDB transaction, one object store
//! per table). What a write set means is fixed here, so both shells store the
//! same records under the same keys.
//!
//! The read side is [`Records`]: a point read and a prefix scan over a
//! [`Table`], which each shell implements over its storage (masq-store's
//! `Db` over fjall, masq-web's `PeerStore` over its in-memory tables), so the
//! core's readers (`device::meta`) are written once.
//!
//! Architecture invariant: a write set is applied whole or not at all, and in
//! order (a later write to the same key wins).

/// A table of the store. Changing a name is a storage format change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// `app \0 doc` → document metadata
    /// ([`DocMeta`](crate::layout::doc_chunks::DocMeta)).
    Docs,
    /// `app \0 doc \0 kind seq` → snapshot or incremental Automerge chunk
    /// ([`layout::doc_chunks`](crate::layout::doc_chunks)).
    Chunks,
    /// `app \0 bucket \0 key` → the winning JSON value (materialized KV index,
    /// [`layout::kv_index`](crate::layout::kv_index)).
    Kv,
    /// Store-level facts: device identity, peers, sessions, sync states
    /// (one prefix each, [`layout::meta`](crate::layout::meta)).
    Meta,
    /// `app \0 doc \0 seq` → a local key-value write not yet folded into its
    /// shard document ([`layout::kv_pending`](crate::layout::kv_pending)).
    KvPending,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 5] = [
        Table::Docs,
        Table::Chunks,
        Table::Kv,
        Table::Meta,
        Table::KvPending,
    ];

    /// The table's stored name (fjall keyspace, IndexedDB object store).
    pub const fn name(self) -> &'static str {
        match self {
            Table::Docs => "docs",
            Table::Chunks => "chunks",
            Table::Kv => "kv",
            Table::Meta => "meta",
            Table::KvPending => "kv_pending",
        }
    }
}

/// One stored record: (key, value).
pub type Record = (Vec<u8>, Vec<u8>);

/// Reading a shell's committed records (and, in a page, the writes staged
/// since: a page's reads see its own outbox, as natively a read after a
/// commit sees it).
pub trait Records {
    /// What a failed read is (a disk error natively; a page reads memory).
    type Error;

    /// The value under `key` in `table`, if any.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error>;

    /// Every (key, value) of `table` whose key starts with `prefix`, in key
    /// order.
    #[allow(clippy::type_complexity)]
    fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Self::Error>;
}

/// One write to a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Store `value` under `key` (replacing what was there).
    Put {
        /// The table.
        table: Table,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key` (nothing if absent).
    Remove {
        /// The table.
        table: Table,
        /// The key.
        key: Vec<u8>,
    },
    /// Remove every key that starts with `prefix`, as stored when the set is
    /// applied. The shell expands it (a range scan, an IndexedDB key range).
    RemovePrefix {
        /// The table.
        table: Table,
        /// The prefix.
        prefix: Vec<u8>,
    },
}

/// Writes that go to storage together, atomically and in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSet {
    /// The writes, in order.
    writes: Vec<Write>,
}

impl WriteSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a put.
    pub fn put(&mut self, table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.push(Write::Put {
            table,
            key: key.into(),
            value: value.into(),
        });
    }

    /// Appends a removal.
    pub fn remove(&mut self, table: Table, key: impl Into<Vec<u8>>) {
        self.writes.push(Write::Remove {
            table,
            key: key.into(),
        });
    }

    /// Appends the removal of every key under `prefix`.
    pub fn remove_prefix(&mut self, table: Table, prefix: impl Into<Vec<u8>>) {
        self.writes.push(Write::RemovePrefix {
            table,
            prefix: prefix.into(),
        });
    }

    /// Appends every write of `other`, after this set's own.
    pub fn append(&mut self, other: WriteSet) {
        self.writes.extend(other.writes);
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether the set holds no write.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The writes, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Write> {
        self.writes.iter()
    }

    /// The same set without the puts and removals that a later put or
    /// removal of the same key overrides: applied, both leave the tables
    /// the same. (A prefix removal between the two changes nothing: the later
    /// write decides the key either way.) A shell that commits many
    /// requests' writes together stores a document's metadata once instead
    /// of once per change.
    pub fn coalesced(self) -> WriteSet {
        let mut seen: std::collections::HashSet<(Table, &[u8])> = std::collections::HashSet::new();
        let mut keep = vec![true; self.writes.len()];
        for (i, w) in self.writes.iter().enumerate().rev() {
            let (table, key) = match w {
                Write::Put { table, key, .. } | Write::Remove { table, key } => (*table, key),
                Write::RemovePrefix { .. } => continue,
            };
            if !seen.insert((table, key.as_slice())) {
                keep[i] = false;
            }
        }
        let mut keep = keep.into_iter();
        let writes = self
            .writes
            .into_iter()
            .filter(|_| keep.next().unwrap_or(true))
            .collect();
        WriteSet { writes }
    }
}

impl IntoIterator for WriteSet {
    type Item = Write;
    type IntoIter = std::vec::IntoIter<Write>;
    fn into_iter(self) -> Self::IntoIter {
        self.writes.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies `w` to a model of the tables, as a shell would.
    fn applied(w: &WriteSet) -> std::collections::BTreeMap<(Table, Vec<u8>), Vec<u8>> {
        let mut m = std::collections::BTreeMap::new();
        for w in w.iter() {
            match w {
                Write::Put { table, key, value } => {
                    m.insert((*table, key.clone()), value.clone());
                }
                Write::Remove { table, key } => {
                    m.remove(&(*table, key.clone()));
                }
                Write::RemovePrefix { table, prefix } => {
                    m.retain(|(t, k), _| !(t == table && k.starts_with(prefix)));
                }
            }
        }
        m
    }

    #[test]
    fn a_coalesced_set_leaves_the_tables_as_the_whole_set_does() {
        // Pseudo-random sets over few keys, so keys repeat and prefixes hit.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..500 {
            let mut w = WriteSet::new();
            for _ in 0..next(30) {
                let table = Table::ALL[next(2) as usize];
                let key = vec![b'a' + next(3) as u8, b'a' + next(3) as u8];
                match next(5) {
                    0 => w.remove(table, key),
                    1 => w.remove_prefix(table, key[..1].to_vec()),
                    _ => w.put(table, key, vec![next(255) as u8]),
                }
            }
            let c = w.clone().coalesced();
            assert!(c.len() <= w.len());
            assert_eq!(applied(&c), applied(&w), "{w:?}");
        }
        let mut w = WriteSet::new();
        w.put(Table::Docs, b"m".to_vec(), b"1".to_vec());
        w.put(Table::Chunks, b"c1".to_vec(), b"x".to_vec());
        w.put(Table::Docs, b"m".to_vec(), b"2".to_vec());
        assert_eq!(w.coalesced().len(), 2);
    }

    #[test]
    fn table_names_are_the_stored_keyspace_names() {
        let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names, ["docs", "chunks", "kv", "meta", "kv_pending"]);
    }

    #[test]
    fn a_set_keeps_its_order() {
        let mut a = WriteSet::new();
        a.put(Table::Kv, b"k".to_vec(), b"1".to_vec());
        let mut b = WriteSet::new();
        b.remove(Table::Kv, b"k".to_vec());
        b.remove_prefix(Table::Chunks, b"p".to_vec());
        a.append(b);
        assert_eq!(a.len(), 3);
        let kinds: Vec<_> = a
            .into_iter()
            .map(|w| match w {
                Write::Put { .. } => 'p',
                Write::Remove { .. } => 'r',
                Write::RemovePrefix { .. } => 'x',
            })
            .collect();
        assert_eq!(kinds, ['p', 'r', 'x']);
    }
}
