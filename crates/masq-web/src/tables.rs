//! The page's records in memory: one sorted map per [`Table`], the mirror of
//! the IndexedDB object stores of the same names.
//!
//! The page reads every record once when it opens (IndexedDB reads are
//! asynchronous, the data executor is not), then every write set is applied
//! here and handed to the page to commit ([`encode_writes`]).
//!
//! Architecture invariant: a write set is applied here only once the request
//! that made it succeeded, so the mirror never holds half a request.

use std::collections::BTreeMap;
use std::ops::Bound;

use masq_core::records::{Table, Write, WriteSet};

/// The records of every table.
#[derive(Debug, Default, Clone)]
pub struct Tables {
    /// Indexed by the table's position in [`Table::ALL`].
    maps: [BTreeMap<Vec<u8>, Vec<u8>>; 5],
}

/// The position of `t` in [`Table::ALL`]: its number in the write frames.
pub fn table_index(t: Table) -> u8 {
    match t {
        Table::Docs => 0,
        Table::Chunks => 1,
        Table::Kv => 2,
        Table::Meta => 3,
        Table::KvPending => 4,
    }
}

/// The table numbered `i` in the write frames.
pub fn table_of(i: u8) -> Option<Table> {
    Table::ALL.get(i as usize).copied()
}

/// The smallest key greater than every key starting with `prefix`
/// (`None`: no such key, every byte is 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Tables {
    /// Empty tables.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self, t: Table) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.maps[table_index(t) as usize]
    }

    fn map_mut(&mut self, t: Table) -> &mut BTreeMap<Vec<u8>, Vec<u8>> {
        &mut self.maps[table_index(t) as usize]
    }

    /// Puts one record read back from storage.
    pub fn load(&mut self, t: Table, key: Vec<u8>, value: Vec<u8>) {
        self.map_mut(t).insert(key, value);
    }

    /// The value under `key`.
    pub fn get(&self, t: Table, key: &[u8]) -> Option<&[u8]> {
        self.map(t).get(key).map(Vec::as_slice)
    }

    /// Records with keys from `start` on, in key order.
    pub fn range_from<'a>(
        &'a self,
        t: Table,
        start: &[u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> + 'a {
        self.map(t)
            .range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
    }

    /// Records whose keys start with `prefix`, in key order.
    pub fn prefix<'a>(
        &'a self,
        t: Table,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> + 'a {
        self.range_from(t, prefix)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// Number of records in `t`.
    pub fn len(&self, t: Table) -> usize {
        self.map(t).len()
    }

    /// Whether every table is empty.
    pub fn is_empty(&self) -> bool {
        self.maps.iter().all(BTreeMap::is_empty)
    }

    /// Applies a write set, in order.
    pub fn apply(&mut self, writes: &WriteSet) {
        for w in writes.iter() {
            match w {
                Write::Put { table, key, value } => {
                    self.map_mut(*table).insert(key.clone(), value.clone());
                }
                Write::Remove { table, key } => {
                    self.map_mut(*table).remove(key);
                }
                Write::RemovePrefix { table, prefix } => {
                    let map = self.map_mut(*table);
                    let doomed: Vec<Vec<u8>> = map
                        .range::<[u8], _>((Bound::Included(prefix.as_slice()), Bound::Unbounded))
                        .take_while(|(k, _)| k.starts_with(prefix))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        map.remove(&k);
                    }
                }
            }
        }
    }
}

/// Frame kinds of [`encode_writes`].
const PUT: u8 = 0;
const REMOVE: u8 = 1;
const REMOVE_PREFIX: u8 = 2;

/// A write set as bytes for the page to commit in one IndexedDB
/// transaction, in order. Each write is `kind u8, table u8, key length u32
/// LE, key`, and for a put `value length u32 LE, value`; kind 0 put,
/// 1 remove, 2 remove every key starting with the key.
pub fn encode_writes(writes: &WriteSet) -> Vec<u8> {
    let mut out = Vec::new();
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    for w in writes.iter() {
        match w {
            Write::Put { table, key, value } => {
                out.extend_from_slice(&[PUT, table_index(*table)]);
                field(&mut out, key);
                field(&mut out, value);
            }
            Write::Remove { table, key } => {
                out.extend_from_slice(&[REMOVE, table_index(*table)]);
                field(&mut out, key);
            }
            Write::RemovePrefix { table, prefix } => {
                out.extend_from_slice(&[REMOVE_PREFIX, table_index(*table)]);
                field(&mut out, prefix);
            }
        }
    }
    out
}

/// Reads frames of [`encode_writes`] back (the page's journal, replayed
/// at open); `Err` names what is malformed.
pub fn decode_writes(mut bytes: &[u8]) -> Result<WriteSet, String> {
    fn field<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], String> {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or("a frame ends inside a length")?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err("a frame ends inside a field".into());
        }
        let (f, rest) = rest.split_at(len);
        *bytes = rest;
        Ok(f)
    }
    let mut out = WriteSet::new();
    while let Some((&[kind, table], rest)) = bytes.split_first_chunk::<2>() {
        bytes = rest;
        let table = table_of(table).ok_or_else(|| format!("unknown table {table}"))?;
        let key = field(&mut bytes)?.to_vec();
        match kind {
            PUT => {
                let value = field(&mut bytes)?.to_vec();
                out.put(table, key, value);
            }
            REMOVE => out.remove(table, key),
            REMOVE_PREFIX => out.remove_prefix(table, key),
            other => return Err(format!("unknown write kind {other}")),
        }
    }
    if !bytes.is_empty() {
        return Err("a frame ends inside its header".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_apply_write_sets_in_order() {
        let mut t = Tables::new();
        let mut w = WriteSet::new();
        w.put(Table::Chunks, b"a\0x\0I1".to_vec(), b"one".to_vec());
        w.put(Table::Chunks, b"a\0x\0I2".to_vec(), b"two".to_vec());
        w.put(Table::Chunks, b"a\0y\0I1".to_vec(), b"other".to_vec());
        w.put(Table::Kv, b"k".to_vec(), b"1".to_vec());
        w.remove(Table::Kv, b"k".to_vec());
        w.put(Table::Kv, b"k".to_vec(), b"2".to_vec());
        t.apply(&w);
        assert_eq!(t.get(Table::Kv, b"k"), Some(&b"2"[..]));
        assert_eq!(t.prefix(Table::Chunks, b"a\0x\0").count(), 2);
        let mut w = WriteSet::new();
        w.remove_prefix(Table::Chunks, b"a\0x\0".to_vec());
        t.apply(&w);
        assert_eq!(t.prefix(Table::Chunks, b"a\0x\0").count(), 0);
        assert_eq!(t.len(Table::Chunks), 1);
    }

    #[test]
    fn write_frames_say_kind_table_key_and_value() {
        let mut w = WriteSet::new();
        w.put(Table::Kv, b"k".to_vec(), b"vv".to_vec());
        w.remove(Table::Docs, b"d".to_vec());
        w.remove_prefix(Table::Chunks, b"p".to_vec());
        assert_eq!(
            encode_writes(&w),
            [
                &[0u8, 2, 1, 0, 0, 0, b'k', 2, 0, 0, 0, b'v', b'v'][..],
                &[1, 0, 1, 0, 0, 0, b'd'],
                &[2, 1, 1, 0, 0, 0, b'p'],
            ]
            .concat()
        );
        for t in Table::ALL {
            assert_eq!(table_of(table_index(t)), Some(t));
        }
        assert_eq!(decode_writes(&encode_writes(&w)), Ok(w.clone()));
        let bytes = encode_writes(&w);
        // Cut anywhere but between two writes: an error, never a guess.
        for cut in 1..bytes.len() {
            match cut {
                13 | 20 => assert!(decode_writes(&bytes[..cut]).is_ok()),
                _ => assert!(decode_writes(&bytes[..cut]).is_err(), "cut at {cut}"),
            }
        }
        assert!(decode_writes(&[9, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
