//! Fragments: a payload too large for one envelope travels as up to
//! [`MAX_FRAGMENTS`] [`SyncPayload::Fragment`]s, each sealed on its own, and
//! is put back together by the receiver.
//!
//! Rules (a second implementation must follow them):
//! - a payload whose encoding is at most [`MAX_ENVELOPE_PLAINTEXT`] bytes is
//!   sent whole; a larger one is cut into parts of
//!   `MAX_ENVELOPE_PLAINTEXT - FRAGMENT_OVERHEAD` bytes, numbered
//!   `0..total` under one id that the sender never reuses;
//! - the receiver keeps one payload in reassembly per peer: a part with
//!   another id (or another total) abandons the one in progress (the sync
//!   protocol offers the lost changes again on its next round);
//! - a part whose index or total is out of range, or that is larger than
//!   [`MAX_ENVELOPE_PLAINTEXT`] (no sender makes one), is ignored, a repeated
//!   part replaces the earlier copy, and the payload is complete when every
//!   index has arrived, in any order.

use crate::wire::device::SyncPayload;

/// Largest envelope plaintext: a sync envelope stays well under the relay's
/// 1 MiB frame limit after padding and sealing.
pub const MAX_ENVELOPE_PLAINTEXT: usize = 200 * 1024;
/// Most fragments of one payload (with parts of at most
/// [`MAX_ENVELOPE_PLAINTEXT`] bytes, at most 12.5 MiB in reassembly per
/// peer); a larger payload is not sent (the sync layer keeps batches far
/// smaller).
pub const MAX_FRAGMENTS: u16 = 64;
/// Room kept in each fragment's envelope for the fragment header.
pub const FRAGMENT_OVERHEAD: usize = 32;

/// A payload that even [`MAX_FRAGMENTS`] fragments cannot carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("payload of {size} bytes exceeds {MAX_FRAGMENTS} fragments")]
pub struct TooLargeToFragment {
    /// The payload's encoded size.
    pub size: usize,
}

/// The sending side: numbers the fragmented payloads.
#[derive(Debug, Default)]
pub struct Fragmenter {
    /// Id of the next fragmented payload (never reused while this lives).
    next_id: u64,
}

impl Fragmenter {
    /// A fragmenter whose first id is 1.
    pub fn new() -> Self {
        Fragmenter { next_id: 1 }
    }

    /// The envelope plaintexts that carry `payload`: its encoding, or its
    /// fragments' encodings in order.
    pub fn split(&mut self, payload: &SyncPayload) -> Result<Vec<Vec<u8>>, TooLargeToFragment> {
        let bytes = payload.encode();
        if bytes.len() <= MAX_ENVELOPE_PLAINTEXT {
            return Ok(vec![bytes]);
        }
        let parts: Vec<&[u8]> = bytes
            .chunks(MAX_ENVELOPE_PLAINTEXT - FRAGMENT_OVERHEAD)
            .collect();
        let Ok(total) = u16::try_from(parts.len()) else {
            return Err(TooLargeToFragment { size: bytes.len() });
        };
        if total > MAX_FRAGMENTS {
            return Err(TooLargeToFragment { size: bytes.len() });
        }
        let id = self.next_id.max(1);
        self.next_id = id + 1;
        Ok(parts
            .into_iter()
            .enumerate()
            .map(|(index, part)| {
                SyncPayload::Fragment {
                    id,
                    // index < total ≤ MAX_FRAGMENTS, so it fits.
                    index: index as u16,
                    total,
                    bytes: part.to_vec(),
                }
                .encode()
            })
            .collect())
    }
}

/// A fragmented payload in progress: its id, its number of parts, and the
/// parts received so far.
#[derive(Debug)]
struct Partial {
    id: u64,
    total: u16,
    parts: Vec<Option<Vec<u8>>>,
}

/// The receiving side, one per peer: the payload being put back together.
#[derive(Debug, Default)]
pub struct Reassembler {
    /// The payload in progress, if any.
    current: Option<Partial>,
}

impl Reassembler {
    /// Takes one fragment; returns the whole payload's bytes once every part
    /// of it has arrived.
    pub fn push(&mut self, id: u64, index: u16, total: u16, bytes: Vec<u8>) -> Option<Vec<u8>> {
        if total == 0
            || total > MAX_FRAGMENTS
            || index >= total
            || bytes.len() > MAX_ENVELOPE_PLAINTEXT
        {
            return None;
        }
        let fresh = || Partial {
            id,
            total,
            parts: vec![None; total as usize],
        };
        let current = self.current.get_or_insert_with(fresh);
        if current.id != id || current.total != total {
            *current = fresh();
        }
        current.parts[index as usize] = Some(bytes);
        if current.parts.iter().all(Option::is_some) {
            let done = self.current.take()?;
            Some(done.parts.into_iter().flatten().flatten().collect())
        } else {
            None
        }
    }

    /// Whether a payload is partly received.
    pub fn in_progress(&self) -> bool {
        self.current.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::device::DocMessage;

    fn big_batch(size: usize) -> SyncPayload {
        SyncPayload::Batch(vec![DocMessage {
            app: "app".into(),
            doc: "doc".into(),
            msg: (0..size).map(|i| (i * 7 % 251) as u8).collect(),
        }])
    }

    fn parts(plaintexts: &[Vec<u8>]) -> Vec<(u64, u16, u16, Vec<u8>)> {
        plaintexts
            .iter()
            .map(|p| match SyncPayload::decode(p).unwrap() {
                SyncPayload::Fragment {
                    id,
                    index,
                    total,
                    bytes,
                } => (id, index, total, bytes),
                other => panic!("expected a fragment, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_small_payload_goes_whole() {
        let p = big_batch(1000);
        let out = Fragmenter::new().split(&p).unwrap();
        assert_eq!(out, vec![p.encode()]);
    }

    #[test]
    fn fragments_arrive_in_any_order_with_duplicates() {
        let p = big_batch(3 * MAX_ENVELOPE_PLAINTEXT);
        let mut f = Fragmenter::new();
        let mut frags = parts(&f.split(&p).unwrap());
        assert_eq!(frags.len(), 4);
        assert!(frags
            .iter()
            .all(|(id, _, total, _)| *id == 1 && *total == 4));
        frags.reverse();
        let dup = frags[1].clone();
        frags.insert(2, dup);
        let mut r = Reassembler::default();
        let mut done = None;
        for (id, index, total, bytes) in frags {
            assert!(done.is_none(), "completed before the last part");
            done = r.push(id, index, total, bytes);
        }
        assert_eq!(SyncPayload::decode(&done.unwrap()).unwrap(), p);
        assert!(!r.in_progress());
    }

    #[test]
    fn a_lost_part_never_completes_and_the_next_payload_replaces_it() {
        let (a, b) = (
            big_batch(MAX_ENVELOPE_PLAINTEXT + 10),
            big_batch(2 * MAX_ENVELOPE_PLAINTEXT),
        );
        let mut f = Fragmenter::new();
        let fa = parts(&f.split(&a).unwrap());
        let fb = parts(&f.split(&b).unwrap());
        assert_ne!(fa[0].0, fb[0].0, "ids are not reused");
        let mut r = Reassembler::default();
        // The first part of `a` is lost.
        for (id, index, total, bytes) in fa.into_iter().skip(1) {
            assert_eq!(r.push(id, index, total, bytes), None);
        }
        assert!(r.in_progress());
        let mut done = None;
        for (id, index, total, bytes) in fb {
            done = r.push(id, index, total, bytes);
        }
        assert_eq!(SyncPayload::decode(&done.unwrap()).unwrap(), b);
    }

    #[test]
    fn out_of_range_parts_are_ignored() {
        let mut r = Reassembler::default();
        assert_eq!(r.push(1, 0, 0, vec![1]), None);
        assert_eq!(r.push(1, 2, 2, vec![1]), None);
        assert_eq!(r.push(1, 0, MAX_FRAGMENTS + 1, vec![1]), None);
        // A part larger than any sender makes (reassembly stays bounded).
        assert_eq!(r.push(1, 0, 2, vec![0; MAX_ENVELOPE_PLAINTEXT + 1]), None);
        assert!(!r.in_progress());
        // A one-part "fragment" is complete at once.
        assert_eq!(r.push(9, 0, 1, vec![7, 8]), Some(vec![7, 8]));
    }

    #[test]
    fn a_payload_beyond_the_fragment_limit_is_refused() {
        let size = MAX_FRAGMENTS as usize * MAX_ENVELOPE_PLAINTEXT;
        let err = Fragmenter::new().split(&big_batch(size)).unwrap_err();
        assert!(err.size > size);
    }
}
