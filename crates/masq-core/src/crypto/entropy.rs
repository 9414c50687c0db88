//! Where randomness comes from: the operating system's CSPRNG, unless the
//! caller installs another source for the current thread with
//! [`with_source`] (the simulator does, so that one seed replays a whole
//! world byte for byte: keys, nonces, document and actor ids).
//!
//! Every random byte the core uses passes through [`fill`] (through
//! `crypto::random_bytes`), so a source installed here reaches handshakes,
//! ratchets, pairing, invites, note keys, document ids and the Automerge
//! actor ids masq gives its documents.
//!
//! Architecture invariant: a source lives only while [`with_source`]'s
//! closure runs, on that thread; nothing else can replace the OS's.

use std::cell::RefCell;

/// A source of random bytes.
pub trait Entropy {
    /// Fills `buf`.
    fn fill(&mut self, buf: &mut [u8]);
}

thread_local! {
    /// The source installed on this thread, if any.
    static SOURCE: RefCell<Option<Box<dyn Entropy>>> = const { RefCell::new(None) };
}

/// Runs `f` with `source` as this thread's randomness, then restores what
/// was there (also when `f` panics).
pub fn with_source<R>(source: Box<dyn Entropy>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Box<dyn Entropy>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SOURCE.with(|s| *s.borrow_mut() = previous);
        }
    }
    let _restore = Restore(SOURCE.with(|s| s.borrow_mut().replace(source)));
    f()
}

/// Fills `buf` from this thread's source, or the OS's CSPRNG.
///
/// Panics only if the OS has no entropy source at all, which no supported
/// platform lacks; there is no sane way to continue without one.
pub fn fill(buf: &mut [u8]) {
    let done = SOURCE.with(|s| match s.borrow_mut().as_mut() {
        Some(src) => {
            src.fill(buf);
            true
        }
        None => false,
    });
    if !done {
        #[allow(clippy::expect_used)]
        getrandom::fill(buf).expect("operating system CSPRNG unavailable");
    }
}

/// A deterministic source for simulations and tests: BLAKE3's extendable
/// output keyed by a seed (an audited primitive; never for real keys).
pub struct SeededEntropy {
    /// The stream.
    reader: blake3::OutputReader,
}

impl SeededEntropy {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Self {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        let mut h = blake3::Hasher::new_keyed(&key);
        h.update(b"masq 2026-12 simulation entropy");
        SeededEntropy {
            reader: h.finalize_xof(),
        }
    }
}

impl Entropy for SeededEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        self.reader.fill(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_source_replays_and_is_gone_after_its_closure() {
        let draw = || *crate::crypto::random_bytes::<32>();
        let a = with_source(Box::new(SeededEntropy::new(7)), || (draw(), draw()));
        let b = with_source(Box::new(SeededEntropy::new(7)), || (draw(), draw()));
        assert_eq!(a, b);
        assert_ne!(a.0, a.1);
        let c = with_source(Box::new(SeededEntropy::new(8)), draw);
        assert_ne!(a.0, c);
        // Outside, the OS's: not the seeded stream.
        assert_ne!(draw(), a.0);
        // Restored after a panic too.
        let r = std::panic::catch_unwind(|| {
            with_source(Box::new(SeededEntropy::new(7)), || panic!("boom"))
        });
        assert!(r.is_err());
        assert_ne!(draw(), a.0);
    }
}
