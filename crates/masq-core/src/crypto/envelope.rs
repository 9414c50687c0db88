//! The sealed envelope: what leaves a device, byte for byte.
//!
//! ```text
//! offset  size  field
//! 0       1     version (1)
//! 1       32    sender DeviceId
//! 33      32    recipient DeviceId
//! 65      32    ratchet header: sender's current DH ratchet public key
//! 97      4     ratchet header: PN, messages in the previous sending chain (u32 BE)
//! 101     4     ratchet header: N, message number in this chain (u32 BE)
//! 105     ..    XChaCha20-Poly1305 ciphertext of the padded plaintext, 16-byte tag at the end
//! ```
//!
//! The associated data is bytes 0..105 (everything before the ciphertext), so
//! no header field can be changed without failing authentication. The
//! plaintext is padded (ISO/IEC 7816-4: `0x80` then zeros) to the Padmé length
//! of `len + 1` (at least [`MIN_PADDED`]), which leaks at most O(log log n)
//! bits of the length to the relay at ≤ 12 % overhead.

use super::error::CryptoError;
use super::identity::DeviceId;

/// Envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;
/// Bytes before the ciphertext (also the associated data).
pub const HEADER_LEN: usize = 1 + 32 + 32 + 32 + 4 + 4;
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
    /// Ciphertext with tag.
    pub ciphertext: Vec<u8>,
}

impl Envelope {
    /// The associated data: the encoded header.
    pub fn header_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = ENVELOPE_VERSION;
        h[1..33].copy_from_slice(&self.sender.0);
        h[33..65].copy_from_slice(&self.recipient.0);
        h[65..97].copy_from_slice(&self.header.dh);
        h[97..101].copy_from_slice(&self.header.pn.to_be_bytes());
        h[101..105].copy_from_slice(&self.header.n.to_be_bytes());
        h
    }

    /// Encodes the envelope.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.ciphertext.len());
        out.extend_from_slice(&self.header_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Decodes an envelope; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, CryptoError> {
        let (&version, _) = bytes.split_first().ok_or(CryptoError::Truncated)?;
        if version != ENVELOPE_VERSION {
            return Err(CryptoError::BadVersion(version));
        }
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(CryptoError::Truncated);
        }
        let arr = |r: std::ops::Range<usize>| -> [u8; 32] {
            let mut a = [0u8; 32];
            a.copy_from_slice(&bytes[r]);
            a
        };
        let u32_at =
            |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Ok(Self {
            sender: DeviceId(arr(1..33)),
            recipient: DeviceId(arr(33..65)),
            header: RatchetHeader {
                dh: arr(65..97),
                pn: u32_at(97),
                n: u32_at(101),
            },
            ciphertext: bytes[HEADER_LEN..].to_vec(),
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
    let e = usize::BITS - 1 - len.leading_zeros(); // floor(log2 len)
    let s = usize::BITS - e.leading_zeros(); // floor(log2 e) + 1
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
        assert_eq!(unpad(pad(b"hello")).unwrap(), b"hello");
        assert_eq!(unpad(pad(b"")).unwrap(), b"");
        assert_eq!(unpad(vec![0, 0]), Err(CryptoError::BadPadding));
        assert_eq!(unpad(vec![1, 2]), Err(CryptoError::BadPadding));
    }

    #[test]
    fn decode_errors() {
        assert_eq!(Envelope::decode(&[]), Err(CryptoError::Truncated));
        assert_eq!(Envelope::decode(&[2; 200]), Err(CryptoError::BadVersion(2)));
        assert_eq!(Envelope::decode(&[1; 50]), Err(CryptoError::Truncated));
    }
}
