//! The messages of a pairing (invite version 2), as they travel inside the
//! pairing channel ([`PairingChannel`](crate::crypto::pairing::PairingChannel)).
//!
//! Every message is `PAIRING_VERSION(1) || tag(1) || body`:
//!
//! | tag | message | sender | body |
//! |-----|---------|--------|------|
//! | 1 | [`PairMessage::Commit`] | joiner | commitment (32) |
//! | 2 | [`PairMessage::Offer`] | inviter | public key (32), name, nonce (32) |
//! | 3 | [`PairMessage::Reveal`] | joiner | public key (32), name, nonce (32) |
//! | 4 | [`PairMessage::Confirm`] | joiner | MAC (32) |
//! | 5 | [`PairMessage::Decline`] | either | — |
//! | 6 | [`PairMessage::Welcome`] | inviter | count (u16 BE), then per device: public key (32), name; then MAC (32) |
//!
//! A name is `len(u8) || UTF-8`, at most [`MAX_NAME_BYTES`](super::device::MAX_NAME_BYTES).
//! The exchange itself (what follows what, what the commitment and the code
//! are) is `masq_core::sync::pairing`.
//!
//! Architecture invariant: encode/decode only; decoding never panics.

use super::device::{put_name, PeerInfo, Reader, WireError, MAX_GROUP_DEVICES};

/// Version byte of every pairing message (pairing v1 sent
/// `SyncPayload::Introduce` in the channel, with no commitment).
pub const PAIRING_VERSION: u8 = 2;

/// One message of a pairing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairMessage {
    /// The joiner's commitment to its [`Reveal`](Self::Reveal), sent before
    /// it has seen anything of the inviter.
    Commit([u8; 32]),
    /// The inviter's key, name and nonce, sent once it holds the commitment.
    Offer {
        /// The inviter.
        peer: PeerInfo,
        /// 32 fresh random bytes.
        nonce: [u8; 32],
    },
    /// The joiner's key, name and nonce: what it committed to.
    Reveal {
        /// The joiner.
        peer: PeerInfo,
        /// 32 fresh random bytes.
        nonce: [u8; 32],
    },
    /// "My user confirmed the code" (joiner → inviter; the inviter's
    /// confirmation is its [`Welcome`](Self::Welcome)), with a MAC only the
    /// two devices can make (`masq_core::sync::pairing`).
    Confirm([u8; 32]),
    /// "My user said no, or gave up": the pairing ends, nothing is stored.
    Decline,
    /// The inviter's other devices, sent once both users confirmed, and a
    /// MAC only the two devices can make over them.
    Welcome(Vec<PeerInfo>, [u8; 32]),
}

fn put_peer(out: &mut Vec<u8>, p: &PeerInfo) {
    out.extend_from_slice(&p.public_key);
    put_name(out, &p.name);
}

fn read_peer(r: &mut Reader<'_>) -> Result<PeerInfo, WireError> {
    let public_key = r.key32("peer key")?;
    let name = r.name("peer name")?;
    Ok(PeerInfo { public_key, name })
}

/// The encoded device list of a welcome (count, then each device): what its
/// MAC covers.
pub fn welcome_list(list: &[PeerInfo]) -> Vec<u8> {
    let n = list.len().min(MAX_GROUP_DEVICES);
    let mut out = (n as u16).to_be_bytes().to_vec();
    for p in list.iter().take(n) {
        put_peer(&mut out, p);
    }
    out
}

impl PairMessage {
    /// The encoded bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![PAIRING_VERSION];
        match self {
            PairMessage::Commit(c) => {
                out.push(1);
                out.extend_from_slice(c);
            }
            PairMessage::Offer { peer, nonce } | PairMessage::Reveal { peer, nonce } => {
                out.push(if matches!(self, PairMessage::Offer { .. }) {
                    2
                } else {
                    3
                });
                put_peer(&mut out, peer);
                out.extend_from_slice(nonce);
            }
            PairMessage::Confirm(mac) => {
                out.push(4);
                out.extend_from_slice(mac);
            }
            PairMessage::Decline => out.push(5),
            PairMessage::Welcome(list, mac) => {
                out.push(6);
                out.extend_from_slice(&welcome_list(list));
                out.extend_from_slice(mac);
            }
        }
        out
    }

    /// Decodes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader { b: bytes };
        let v = r.u8("version")?;
        if v != PAIRING_VERSION {
            return Err(WireError::BadVersion(v));
        }
        let out = match r.u8("kind")? {
            1 => PairMessage::Commit(r.key32("commitment")?),
            2 => PairMessage::Offer {
                peer: read_peer(&mut r)?,
                nonce: r.key32("nonce")?,
            },
            3 => PairMessage::Reveal {
                peer: read_peer(&mut r)?,
                nonce: r.key32("nonce")?,
            },
            4 => PairMessage::Confirm(r.key32("mac")?),
            5 => PairMessage::Decline,
            6 => {
                let n = r.u16("device count")? as usize;
                if n > MAX_GROUP_DEVICES {
                    return Err(WireError::Truncated("device count"));
                }
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    list.push(read_peer(&mut r)?);
                }
                PairMessage::Welcome(list, r.key32("mac")?)
            }
            k => return Err(WireError::BadKind(k)),
        };
        r.end()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_and_nothing_decodes_with_a_panic() {
        let peer = PeerInfo {
            public_key: [3; 32],
            name: "phone".into(),
        };
        let all = [
            PairMessage::Commit([1; 32]),
            PairMessage::Offer {
                peer: peer.clone(),
                nonce: [2; 32],
            },
            PairMessage::Reveal {
                peer: peer.clone(),
                nonce: [4; 32],
            },
            PairMessage::Confirm([5; 32]),
            PairMessage::Decline,
            PairMessage::Welcome(vec![peer.clone(), peer], [6; 32]),
        ];
        for m in &all {
            let bytes = m.encode();
            assert_eq!(&PairMessage::decode(&bytes).unwrap(), m);
            for cut in 0..bytes.len() {
                assert!(
                    PairMessage::decode(&bytes[..cut]).is_err(),
                    "{m:?} cut at {cut}"
                );
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(PairMessage::decode(&long), Err(WireError::Trailing));
        }
        assert_eq!(
            PairMessage::decode(&[1, 3]),
            Err(WireError::BadVersion(1)),
            "a pairing v1 message is refused by version"
        );
        assert_eq!(PairMessage::decode(&[2, 9]), Err(WireError::BadKind(9)));
        assert_eq!(
            PairMessage::decode(&[2, 6, 0xff, 0xff]),
            Err(WireError::Truncated("device count"))
        );
    }
}
