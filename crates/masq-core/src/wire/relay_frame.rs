//! Relay frames: the binary WebSocket messages between a device and the relay.
//!
//! Every frame is `version (1 byte, = 1) || type (1 byte) || body`. Integers
//! are big-endian. DeviceIds are 32 bytes. Payloads are opaque to the relay.
//!
//! | type | direction | name | body |
//! |------|-----------|------|------|
//! | 0x01 | relay→device | Challenge | relay ephemeral X25519 public key (32), nonce (32) |
//! | 0x02 | relay→device | AuthOk | the authenticated DeviceId (32) |
//! | 0x03 | relay→device | Deliver | sender DeviceId (32), payload (rest) |
//! | 0x04 | relay→device | Undeliverable | message id (u64), recipient (32), reason (u8) |
//! | 0x05 | relay→device | Presence | DeviceId (32), online (u8: 0/1) |
//! | 0x06 | relay→device | RendezvousPeer | joined (u8: 1 the other side joined, 0 it left) |
//! | 0x07 | relay→device | RendezvousData | payload (rest) |
//! | 0x08 | relay→device | Error | code (u16), UTF-8 message (rest) |
//! | 0x11 | device→relay | Auth | device static public key (32), proof (32) |
//! | 0x12 | device→relay | Send | message id (u64), recipient (32), payload (rest) |
//! | 0x13 | device→relay | Subscribe | count (u16), DeviceIds (32 each) |
//! | 0x14 | device→relay | RendezvousJoin | slot public key (32), proof (32) |
//! | 0x15 | device→relay | RendezvousSend | payload (rest) |
//! | 0x16 | device→relay | Allow | count (u16), DeviceIds (32 each) |
//!
//! Architecture invariant: pure byte encoding; knows nothing of tokio, sockets,
//! storage or what payloads contain. Decoding never panics.

use crate::crypto::DeviceId;

/// Frame format version.
pub const FRAME_VERSION: u8 = 1;
/// Most ids in one Subscribe or Allow frame (what the frame can carry; the
/// relay's own, smaller limits are `relay::config::MAX_WATCH_IDS` and
/// `MAX_ALLOW_IDS`).
pub const MAX_SUBSCRIBE_IDS: usize = 4096;

/// Why a message could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum UndeliverableReason {
    /// The recipient has no live connection.
    Offline = 1,
    /// Sending to yourself is refused.
    ToSelf = 2,
    /// The recipient's outbound queue was full.
    RecipientBusy = 3,
    /// The sender exceeded its message rate.
    RateLimited = 4,
    /// The recipient has not allowed this sender (see [`Frame::Allow`]).
    NotAllowed = 5,
}

impl UndeliverableReason {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Offline,
            2 => Self::ToSelf,
            3 => Self::RecipientBusy,
            4 => Self::RateLimited,
            5 => Self::NotAllowed,
            _ => return None,
        })
    }
}

/// Error codes in [`Frame::Error`] (also used as WebSocket close codes 4000+code).
pub mod codes {
    /// The frame did not decode.
    pub const BAD_FRAME: u16 = 1;
    /// A frame that needs authentication came before it.
    pub const NOT_AUTHENTICATED: u16 = 2;
    /// The authentication proof was wrong.
    pub const AUTH_FAILED: u16 = 3;
    /// A newer connection of the same device replaced this one.
    pub const REPLACED: u16 = 4;
    /// The connection did not read fast enough; its queue overflowed.
    pub const TOO_SLOW: u16 = 5;
    /// The rendezvous slot is full, used or expired.
    pub const RENDEZVOUS_REFUSED: u16 = 6;
    /// No rendezvous joined.
    pub const NO_RENDEZVOUS: u16 = 7;
    /// Nothing received for too long.
    pub const IDLE: u16 = 8;
    /// The relay is shutting down.
    pub const SHUTDOWN: u16 = 9;
    /// The relay has too many connections.
    pub const FULL: u16 = 10;
    /// Authentication did not finish in time.
    pub const HANDSHAKE_TIMEOUT: u16 = 11;
    /// A frame type the relay does not accept from devices.
    pub const UNEXPECTED_FRAME: u16 = 12;
    /// Authentication refused: the public key is of low order (its
    /// Diffie-Hellman result is all zero, so the proof proves nothing).
    pub const LOW_ORDER_KEY: u16 = 13;
    /// A Subscribe frame named more devices than the relay watches for one
    /// connection (the previous watch list stays; the connection stays open).
    pub const TOO_MANY_WATCHED: u16 = 14;
    /// An Allow frame named more devices than the relay keeps for one
    /// connection (the previous allow list stays; the connection stays open).
    pub const TOO_MANY_ALLOWED: u16 = 15;
    /// A rendezvous join whose slot-key proof does not verify (the joiner
    /// does not hold the invite secret); the connection stays open.
    pub const RENDEZVOUS_AUTH_FAILED: u16 = 16;
}

/// A relay frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Relay's authentication challenge.
    Challenge {
        /// Fresh per-connection X25519 public key of the relay.
        relay_public: [u8; 32],
        /// Fresh random nonce.
        nonce: [u8; 32],
    },
    /// Authentication succeeded.
    AuthOk(DeviceId),
    /// A payload from another device.
    Deliver {
        /// Who sent it (authenticated by the relay).
        from: DeviceId,
        /// Opaque payload.
        payload: Vec<u8>,
    },
    /// A send could not be delivered.
    Undeliverable {
        /// The sender's message id.
        msg_id: u64,
        /// The intended recipient.
        to: DeviceId,
        /// Why.
        reason: UndeliverableReason,
    },
    /// A subscribed device came online or went offline.
    Presence {
        /// Which device.
        id: DeviceId,
        /// Online now.
        online: bool,
    },
    /// The other member of our rendezvous slot joined (true) or left (false).
    RendezvousPeer {
        /// Joined or left.
        joined: bool,
    },
    /// Data from the other member of our rendezvous slot.
    RendezvousData(Vec<u8>),
    /// An error for this connection.
    Error {
        /// See [`codes`].
        code: u16,
        /// Human-readable text.
        message: String,
    },
    /// Device's answer to the challenge.
    Auth {
        /// The device's static X25519 public key.
        public: [u8; 32],
        /// `BLAKE3-keyed(derive_key(AUTH_CONTEXT, DH), nonce || relay_public || public)`.
        proof: [u8; 32],
    },
    /// Forward `payload` to `to`.
    Send {
        /// Sender-chosen id, echoed in Undeliverable.
        msg_id: u64,
        /// Recipient.
        to: DeviceId,
        /// Opaque payload.
        payload: Vec<u8>,
    },
    /// Watch these devices' presence (replaces the previous set).
    Subscribe(Vec<DeviceId>),
    /// Join the rendezvous slot named by `slot_public` (slot id =
    /// BLAKE3(slot_public)), proving the slot secret over the connection's
    /// challenge.
    RendezvousJoin {
        /// The slot's X25519 public key (derived from the invite secret).
        slot_public: [u8; 32],
        /// `BLAKE3-keyed(derive_key(SLOT_CONTEXT, DH), nonce || relay_public || slot_public)`.
        proof: [u8; 32],
    },
    /// Send to the other member of the slot.
    RendezvousSend(Vec<u8>),
    /// Only these devices may send to this connection (replaces the previous
    /// list). Until a connection sends one, anyone may.
    Allow(Vec<DeviceId>),
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Empty or too short.
    #[error("truncated frame")]
    Truncated,
    /// Unknown version.
    #[error("unsupported frame version {0}")]
    BadVersion(u8),
    /// Unknown type byte.
    #[error("unknown frame type {0:#04x}")]
    BadType(u8),
    /// A field has an invalid value.
    #[error("invalid field: {0}")]
    BadField(&'static str),
    /// Bytes after a fixed-size body.
    #[error("trailing bytes")]
    Trailing,
}

fn k32(b: &[u8]) -> Result<[u8; 32], FrameError> {
    b.get(..32)
        .and_then(|s| s.try_into().ok())
        .ok_or(FrameError::Truncated)
}

fn exact(body: &[u8], n: usize) -> Result<(), FrameError> {
    match body.len().cmp(&n) {
        std::cmp::Ordering::Less => Err(FrameError::Truncated),
        std::cmp::Ordering::Greater => Err(FrameError::Trailing),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

fn u64_at(b: &[u8]) -> Result<u64, FrameError> {
    b.get(..8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(FrameError::Truncated)
}

impl Frame {
    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FRAME_VERSION];
        match self {
            Frame::Challenge {
                relay_public,
                nonce,
            } => {
                out.push(0x01);
                out.extend_from_slice(relay_public);
                out.extend_from_slice(nonce);
            }
            Frame::AuthOk(id) => {
                out.push(0x02);
                out.extend_from_slice(&id.0);
            }
            Frame::Deliver { from, payload } => {
                out.reserve(33 + payload.len());
                out.push(0x03);
                out.extend_from_slice(&from.0);
                out.extend_from_slice(payload);
            }
            Frame::Undeliverable { msg_id, to, reason } => {
                out.push(0x04);
                out.extend_from_slice(&msg_id.to_be_bytes());
                out.extend_from_slice(&to.0);
                out.push(*reason as u8);
            }
            Frame::Presence { id, online } => {
                out.push(0x05);
                out.extend_from_slice(&id.0);
                out.push(u8::from(*online));
            }
            Frame::RendezvousPeer { joined } => {
                out.push(0x06);
                out.push(u8::from(*joined));
            }
            Frame::RendezvousData(p) => {
                out.push(0x07);
                out.extend_from_slice(p);
            }
            Frame::Error { code, message } => {
                out.push(0x08);
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(message.as_bytes());
            }
            Frame::Auth { public, proof } => {
                out.push(0x11);
                out.extend_from_slice(public);
                out.extend_from_slice(proof);
            }
            Frame::Send {
                msg_id,
                to,
                payload,
            } => {
                out.reserve(41 + payload.len());
                out.push(0x12);
                out.extend_from_slice(&msg_id.to_be_bytes());
                out.extend_from_slice(&to.0);
                out.extend_from_slice(payload);
            }
            Frame::Subscribe(ids) | Frame::Allow(ids) => {
                out.push(if matches!(self, Frame::Allow(_)) {
                    0x16
                } else {
                    0x13
                });
                let n = ids.len().min(MAX_SUBSCRIBE_IDS);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                for id in &ids[..n] {
                    out.extend_from_slice(&id.0);
                }
            }
            Frame::RendezvousJoin { slot_public, proof } => {
                out.push(0x14);
                out.extend_from_slice(slot_public);
                out.extend_from_slice(proof);
            }
            Frame::RendezvousSend(p) => {
                out.push(0x15);
                out.extend_from_slice(p);
            }
        }
        out
    }

    /// Decodes a frame; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let [version, kind, body @ ..] = bytes else {
            return Err(FrameError::Truncated);
        };
        if *version != FRAME_VERSION {
            return Err(FrameError::BadVersion(*version));
        }
        Ok(match kind {
            0x01 => {
                exact(body, 64)?;
                Frame::Challenge {
                    relay_public: k32(body)?,
                    nonce: k32(&body[32..])?,
                }
            }
            0x02 => {
                exact(body, 32)?;
                Frame::AuthOk(DeviceId(k32(body)?))
            }
            0x03 => Frame::Deliver {
                from: DeviceId(k32(body)?),
                payload: body[32..].to_vec(),
            },
            0x04 => {
                exact(body, 41)?;
                Frame::Undeliverable {
                    msg_id: u64_at(body)?,
                    to: DeviceId(k32(&body[8..])?),
                    reason: UndeliverableReason::from_u8(body[40])
                        .ok_or(FrameError::BadField("reason"))?,
                }
            }
            0x05 => {
                exact(body, 33)?;
                let online = match body[32] {
                    0 => false,
                    1 => true,
                    _ => return Err(FrameError::BadField("online")),
                };
                Frame::Presence {
                    id: DeviceId(k32(body)?),
                    online,
                }
            }
            0x06 => {
                exact(body, 1)?;
                Frame::RendezvousPeer {
                    joined: body[0] == 1,
                }
            }
            0x07 => Frame::RendezvousData(body.to_vec()),
            0x08 => {
                if body.len() < 2 {
                    return Err(FrameError::Truncated);
                }
                let message = String::from_utf8(body[2..].to_vec())
                    .map_err(|_| FrameError::BadField("message"))?;
                Frame::Error {
                    code: u16::from_be_bytes([body[0], body[1]]),
                    message,
                }
            }
            0x11 => {
                exact(body, 64)?;
                Frame::Auth {
                    public: k32(body)?,
                    proof: k32(&body[32..])?,
                }
            }
            0x12 => {
                if body.len() < 40 {
                    return Err(FrameError::Truncated);
                }
                Frame::Send {
                    msg_id: u64_at(body)?,
                    to: DeviceId(k32(&body[8..])?),
                    payload: body[40..].to_vec(),
                }
            }
            0x13 | 0x16 => {
                if body.len() < 2 {
                    return Err(FrameError::Truncated);
                }
                let n = u16::from_be_bytes([body[0], body[1]]) as usize;
                if n > MAX_SUBSCRIBE_IDS {
                    return Err(FrameError::BadField(if *kind == 0x13 {
                        "subscribe count"
                    } else {
                        "allow count"
                    }));
                }
                exact(&body[2..], n * 32)?;
                let ids = body[2..]
                    .chunks_exact(32)
                    .filter_map(|c| c.try_into().ok())
                    .map(DeviceId)
                    .collect();
                if *kind == 0x13 {
                    Frame::Subscribe(ids)
                } else {
                    Frame::Allow(ids)
                }
            }
            0x14 => {
                exact(body, 64)?;
                Frame::RendezvousJoin {
                    slot_public: k32(body)?,
                    proof: k32(&body[32..])?,
                }
            }
            0x15 => Frame::RendezvousSend(body.to_vec()),
            t => return Err(FrameError::BadType(*t)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_frame() {
        let id = DeviceId([7; 32]);
        let frames = vec![
            Frame::Challenge {
                relay_public: [1; 32],
                nonce: [2; 32],
            },
            Frame::AuthOk(id),
            Frame::Deliver {
                from: id,
                payload: vec![1, 2, 3],
            },
            Frame::Undeliverable {
                msg_id: 9,
                to: id,
                reason: UndeliverableReason::Offline,
            },
            Frame::Presence { id, online: true },
            Frame::RendezvousPeer { joined: false },
            Frame::RendezvousData(vec![5; 10]),
            Frame::Error {
                code: codes::AUTH_FAILED,
                message: "nope".into(),
            },
            Frame::Auth {
                public: [3; 32],
                proof: [4; 32],
            },
            Frame::Send {
                msg_id: u64::MAX,
                to: id,
                payload: vec![],
            },
            Frame::Subscribe(vec![id, DeviceId([8; 32])]),
            Frame::RendezvousJoin {
                slot_public: [9; 32],
                proof: [10; 32],
            },
            Frame::RendezvousSend(vec![0; 3]),
            Frame::Allow(vec![id]),
            Frame::Undeliverable {
                msg_id: 1,
                to: id,
                reason: UndeliverableReason::NotAllowed,
            },
        ];
        for f in frames {
            assert_eq!(Frame::decode(&f.encode()), Ok(f));
        }
    }

    #[test]
    fn garbage_never_panics() {
        assert_eq!(Frame::decode(&[]), Err(FrameError::Truncated));
        assert_eq!(Frame::decode(&[2, 1]), Err(FrameError::BadVersion(2)));
        assert_eq!(Frame::decode(&[1, 0x99]), Err(FrameError::BadType(0x99)));
        assert_eq!(
            Frame::decode(&[1, 0x13, 0xff, 0xff]),
            Err(FrameError::BadField("subscribe count"))
        );
        for len in 0..100usize {
            for kind in [1u8, 2, 3, 4, 5, 6, 7, 8, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16] {
                let mut b = vec![1, kind];
                b.extend((0..len).map(|i| (i * 31 % 256) as u8));
                let _ = Frame::decode(&b);
            }
        }
    }
}
