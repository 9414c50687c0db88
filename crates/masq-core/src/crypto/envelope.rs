//! The sealed envelope: what leaves a device, byte for byte.
//!
//! Version 2 (sent since M12):
//!
//! ```text
//! offset  size  field
//! 0       1     version (2)
//! 1       32    sender DeviceId
//! 33      32    recipient DeviceId
//! 65      32    ratchet header: sender's current DH ratchet public key
//! 97      4     ratchet header: PN, messages in the previous sending chain (u32 BE)
//! 101     4     ratchet header: N, message number in this chain (u32 BE)
//! 105     24    XChaCha20 nonce, random per envelope
//! 129     ..    XChaCha20-Poly1305 ciphertext of the padded plaintext, 16-byte tag at the end
//! ```
//!
//! Version 1 (still opened, never sent) is the same without the nonce field:
//! its ciphertext starts at 105 and its nonce was derived from the message
//! key. A derived nonce repeats whenever a message key is used twice, which a
//! rolled-back disk makes happen (a restored backup, a VM snapshot, a power
//! cut under `--durability buffered`); a random 192-bit nonce does not, so a
//! key reused that way no longer breaks the cipher (XChaCha20 is made for
//! random nonces).
//!
//! The associated data is every byte before the ciphertext, so no header
//! field (nor the nonce) can be changed without failing authentication. The
//! plaintext is padded (ISO/IEC 7816-4: `0x80` then zeros) to the Padmé length
//! of `len + 1` (at least [`MIN_PADDED`]), which leaks at most O(log log n)
//! bits of the length to the relay at ≤ 12 % overhead.

use super::error::CryptoError;
use super::identity::DeviceId;

/// Envelope format version sent.
pub const ENVELOPE_VERSION: u8 = 2;
/// The previous version, still opened (nonce derived from the message key).
pub const ENVELOPE_VERSION_1: u8 = 1;
/// Bytes of the ratchet header fields and ids (both versions).
pub const IDS_AND_RATCHET_LEN: usize = 1 + 32 + 32 + 32 + 4 + 4;
/// Length of the random nonce carried by a version 2 envelope.
pub const NONCE_LEN: usize = 24;
/// Bytes before the ciphertext of a version 2 envelope (also its associated data).
pub const HEADER_LEN: usize = IDS_AND_RATCHET_LEN + NONCE_LEN;
/// AEAD tag length.
pub const TAG_LEN: usize = 16;
/// Smallest padded plaintext.
pub const MIN_PADDED: usize = 64;

/// The Double Ratchet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatchetHeader {
    /// Sender's DH ratchet public key.
    pub dh: [u8; 32],
    /// Length of the sender's previous sending chain.
    pub pn: u32,
    /// Message number in the current chain.
    pub n: u32,
}

/// A parsed envelope (the ciphertext still sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Sender.
    pub sender: DeviceId,
    /// Recipient.
    pub recipient: DeviceId,
    /// Ratchet header.
    pub header: RatchetHeader,
    /// The random nonce (version 2); `None` for a version 1 envelope, whose
    /// nonce is derived from the message key.
    pub nonce: Option<[u8; NONCE_LEN]>,
    /// Ciphertext with tag.
    pub ciphertext: Vec<u8>,
}

impl Envelope {
    /// The associated data: the encoded header (with the nonce, in version 2).
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.push(if self.nonce.is_some() {
            ENVELOPE_VERSION
        } else {
            ENVELOPE_VERSION_1
        });
        h.extend_from_slice(&self.sender.0);
        h.extend_from_slice(&self.recipient.0);
        h.extend_from_slice(&self.header.dh);
        h.extend_from_slice(&self.header.pn.to_be_bytes());
        h.extend_from_slice(&self.header.n.to_be_bytes());
        if let Some(n) = &self.nonce {
            h.extend_from_slice(n);
        }
        h
    }

    /// Encodes the envelope.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.header_bytes();
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Decodes an envelope of either version; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, CryptoError> {
        let (&version, _) = bytes.split_first().ok_or(CryptoError::Truncated)?;
        let header_len = match version {
            ENVELOPE_VERSION => HEADER_LEN,
            ENVELOPE_VERSION_1 => IDS_AND_RATCHET_LEN,
            other => return Err(CryptoError::BadVersion(other)),
        };
        if bytes.len() < header_len + TAG_LEN {
            return Err(CryptoError::Truncated);
        }
        let arr = |r: std::ops::Range<usize>| -> [u8; 32] {
            let mut a = [0u8; 32];
            a.copy_from_slice(&bytes[r]);
            a
        };
        let u32_at =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let nonce = (version == ENVELOPE_VERSION).then(|| {
            let mut n = [0u8; NONCE_LEN];
            n.copy_from_slice(&bytes[IDS_AND_RATCHET_LEN..HEADER_LEN]);
            n
        });
        Ok(Self {
            sender: DeviceId(arr(1..33)),
            recipient: DeviceId(arr(33..65)),
            header: RatchetHeader {
                dh: arr(65..97),
                pn: u32_at(97),
                n: u32_at(101),
            },
            nonce,
            ciphertext: bytes[header_len..].to_vec(),
        })
    }

    /// The sender of an envelope without parsing the rest (to pick the session).
    pub fn peek_sender(bytes: &[u8]) -> Result<DeviceId, CryptoError> {
        Self::decode(bytes).map(|e| e.sender)
    }
}

/// Padmé length for `len` (Nikitin et al., 2019), at least [`MIN_PADDED`].
pub fn padme(len: usize) -> usize {
    if len <= MIN_PADDED {
        return MIN_PADDED;
    }
    // floor(log2 len)
    let e = usize::BITS - 1 - len.leading_zeros();
    // floor(log2 e) + 1: `e` is a u32, so its bit length is counted in u32
    // (counting it in usize made `s` exceed `e`, and nothing was padded
    // above MIN_PADDED: the known answers of the padding sizes found it).
    let s = u32::BITS - e.leading_zeros();
    let last_bits = e.saturating_sub(s);
    let mask = (1usize << last_bits) - 1;
    (len + mask) & !mask
}

/// Pads: plaintext || 0x80 || zeros, to `padme(len + 1)`.
pub fn pad(plaintext: &[u8]) -> Vec<u8> {
    let target = padme(plaintext.len() + 1);
    let mut out = Vec::with_capacity(target + TAG_LEN);
    out.extend_from_slice(plaintext);
    out.push(0x80);
    out.resize(target, 0);
    out
}

/// Removes the padding added by [`pad`].
pub fn unpad(mut padded: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
    let end = padded
        .iter()
        .rposition(|b| *b != 0)
        .ok_or(CryptoError::BadPadding)?;
    if padded[end] != 0x80 {
        return Err(CryptoError::BadPadding);
    }
    padded.truncate(end);
    Ok(padded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padme_bounds() {
        for len in [1usize, 63, 64, 65, 100, 1000, 4096, 65_537, 1 << 20] {
            let p = padme(len);
            assert!(p >= len);
            assert!(
                p as f64 <= (len.max(MIN_PADDED) as f64) * 1.13,
                "{len} -> {p}"
            );
        }
        // Padmé's own values: the low E - S bits of the length are rounded
        // up (E = floor(log2 len), S = floor(log2 E) + 1).
        for (len, padded) in [
            (64, 64),
            (65, 72),
            (100, 104),
            (1000, 1024),
            (4097, 4352),
            (100_001, 100_352),
        ] {
            assert_eq!(padme(len), padded, "padme({len})");
        }
        assert_eq!(unpad(pad(b"hello")).unwrap(), b"hello");
        assert_eq!(unpad(pad(b"")).unwrap(), b"");
        assert_eq!(unpad(vec![0, 0]), Err(CryptoError::BadPadding));
        assert_eq!(unpad(vec![1, 2]), Err(CryptoError::BadPadding));
    }

    #[test]
    fn both_versions_round_trip_with_their_own_header() {
        let env = |nonce| Envelope {
            sender: DeviceId([1; 32]),
            recipient: DeviceId([2; 32]),
            header: RatchetHeader {
                dh: [3; 32],
                pn: 4,
                n: 5,
            },
            nonce,
            ciphertext: vec![9; TAG_LEN + 1],
        };
        for e in [env(Some([7; NONCE_LEN])), env(None)] {
            let bytes = e.encode();
            let len = if e.nonce.is_some() {
                HEADER_LEN
            } else {
                IDS_AND_RATCHET_LEN
            };
            assert_eq!(bytes.len(), len + TAG_LEN + 1);
            assert_eq!(Envelope::decode(&bytes).unwrap(), e);
        }
        assert_eq!(env(Some([7; NONCE_LEN])).encode()[0], 2);
        assert_eq!(env(None).encode()[0], 1);
    }

    #[test]
    fn decode_errors() {
        assert_eq!(Envelope::decode(&[]), Err(CryptoError::Truncated));
        assert_eq!(Envelope::decode(&[3; 200]), Err(CryptoError::BadVersion(3)));
        assert_eq!(Envelope::decode(&[1; 50]), Err(CryptoError::Truncated));
        // A version 2 header is longer: a v1-sized envelope is truncated.
        assert_eq!(
            Envelope::decode(&[2; IDS_AND_RATCHET_LEN + TAG_LEN]),
            Err(CryptoError::Truncated)
        );
    }
}
