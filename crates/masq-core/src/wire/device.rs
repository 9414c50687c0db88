//! Byte formats of what devices say to each other through the relay.
//!
//! Two layers, both opaque to the relay:
//! - [`DevicePacket`]: what a device hands the relay as a payload — a handshake
//!   message (authenticated by the static keys, not secret) or a sealed envelope.
//! - [`SyncPayload`]: the plaintext inside a sealed envelope — a batch of
//!   Automerge sync messages, a fragment of a large one, or a peer-management note.
//!
//! Architecture invariant: pure encode/decode; knows nothing of tokio, fjall or
//! the crypto behind the envelope. Decoding never panics on any input.

use thiserror::Error;

/// Version byte of [`SyncPayload`].
pub const SYNC_PAYLOAD_VERSION: u8 = 1;
/// Most sync messages in one batch.
pub const MAX_BATCH_ITEMS: usize = 65_535;
/// Longest app or document name on the wire.
pub const MAX_NAME_BYTES: usize = 255;
/// Most app names in one [`PeerPrefs`] list: far more apps than a person
/// turns off towards one device, and small enough that a paired device
/// cannot make every offer scan long lists (a longer list is cut when
/// encoded, and refused when decoded).
pub const MAX_PREF_APPS: usize = 256;
/// Most devices a [`Removal`] vouches for: the relay's own limit on the
/// devices one device may watch (`MAX_WATCH_IDS`), so a group larger than
/// this cannot exist; a longer list is cut when encoded and refused when
/// decoded.
pub const MAX_GROUP_DEVICES: usize = 1024;

/// Why bytes did not decode.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    /// Input ended early.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// Unknown version byte.
    #[error("unsupported version {0}")]
    BadVersion(u8),
    /// Unknown kind/tag byte.
    #[error("unknown kind {0}")]
    BadKind(u8),
    /// A name is not UTF-8 or too long.
    #[error("bad name")]
    BadName,
    /// Bytes left over after a complete message.
    #[error("trailing bytes")]
    Trailing,
}

/// What a device sends through the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePacket {
    /// First handshake message (crypto::handshake), tag 1.
    HandshakeInit(Vec<u8>),
    /// Handshake response, tag 2.
    HandshakeResponse(Vec<u8>),
    /// A sealed Double Ratchet envelope, tag 3.
    Sealed(Vec<u8>),
    /// The answer to an init stamped at or below the responder's mark
    /// (`crypto::handshake::refuse`), tag 4.
    InitRefused(Vec<u8>),
}

impl DevicePacket {
    /// Encodes as `tag || bytes`.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, body) = match self {
            DevicePacket::HandshakeInit(b) => (1u8, b),
            DevicePacket::HandshakeResponse(b) => (2, b),
            DevicePacket::Sealed(b) => (3, b),
            DevicePacket::InitRefused(b) => (4, b),
        };
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(tag);
        out.extend_from_slice(body);
        out
    }

    /// Decodes `tag || bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let (&tag, body) = bytes
            .split_first()
            .ok_or(WireError::Truncated("packet tag"))?;
        let body = body.to_vec();
        match tag {
            1 => Ok(DevicePacket::HandshakeInit(body)),
            2 => Ok(DevicePacket::HandshakeResponse(body)),
            3 => Ok(DevicePacket::Sealed(body)),
            4 => Ok(DevicePacket::InitRefused(body)),
            t => Err(WireError::BadKind(t)),
        }
    }
}

/// One Automerge sync message for one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMessage {
    /// App namespace.
    pub app: String,
    /// Document id.
    pub doc: String,
    /// `automerge::sync::Message::encode()` bytes.
    pub msg: Vec<u8>,
}

/// A device known to the sender, as told to another device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// X25519 static public key.
    pub public_key: [u8; 32],
    /// Human name of the device.
    pub name: String,
}

/// What the sender takes from the receiver (kind 6 of [`SyncPayload`]):
/// sent when sync starts and again whenever it changes. A device offers
/// another its documents only once that device's prefs arrived in the
/// session, and only of apps they say it takes (`masq_core::sync::prefs`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerPrefs {
    /// The sender paused all sync: it takes nothing now.
    pub paused: bool,
    /// Apps the sender turned off towards the receiver.
    pub off: Vec<String>,
    /// The only apps the sender holds (a web page in peer mode holds its
    /// own app, and must never be handed another's data); `None`: any app.
    pub only: Option<Vec<String>>,
}

impl PeerPrefs {
    /// Whether the sender of these prefs takes `app`'s documents.
    pub fn takes(&self, app: &str) -> bool {
        !self.paused
            && !self.off.iter().any(|a| a == app)
            && self
                .only
                .as_ref()
                .is_none_or(|only| only.iter().any(|a| a == app))
    }
}

/// "`device` was removed from the user's devices by `by`" (kind 7 of
/// [`SyncPayload`]): an entry of the membership log
/// (`masq_core::sync::membership`), passed on unchanged by every device
/// that learns it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The removed device's id.
    pub device: [u8; 32],
    /// The id of the device where the user removed it.
    pub by: [u8; 32],
    /// Every device the remover still held when it removed `device`
    /// (itself included): devices that `device` introduced and that are
    /// not in this list are removed with it, since it may have brought
    /// them in after its removal.
    pub vouched: Vec<[u8; 32]>,
}

/// The plaintext inside a sealed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncPayload {
    /// Sync messages for several documents (kind 1).
    Batch(Vec<DocMessage>),
    /// Part `index` of `total` of a payload too large for one envelope (kind 2).
    Fragment {
        /// Identifies the fragmented payload (per sender).
        id: u64,
        /// This part's index.
        index: u16,
        /// Number of parts.
        total: u16,
        /// The bytes of this part.
        bytes: Vec<u8>,
    },
    /// "These devices are yours too": sent to a newly paired device (its peers)
    /// and to existing devices (the new one) (kind 3).
    Introduce(Vec<PeerInfo>),
    /// "This device was removed; drop its sessions" (kind 4), by DeviceId:
    /// what builds before the membership log sent; still read (notes queued
    /// by them may wait on disk), never sent.
    Removed([u8; 32]),
    /// The sender's device name (kind 5), sent once after a session starts.
    Hello {
        /// Human name.
        name: String,
    },
    /// What the sender takes from the receiver (kind 6).
    Prefs(PeerPrefs),
    /// A removal of the membership log (kind 7).
    Removal(Removal),
}

pub(crate) struct Reader<'a> {
    pub(crate) b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let s = self.take(2, what)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let s = self.take(4, what)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
    pub(crate) fn name(&mut self, what: &'static str) -> Result<String, WireError> {
        let n = self.u8(what)? as usize;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| WireError::BadName)
    }
    pub(crate) fn names(&mut self, what: &'static str) -> Result<Vec<String>, WireError> {
        let n = self.u16(what)? as usize;
        if n > MAX_PREF_APPS {
            return Err(WireError::Truncated(what));
        }
        (0..n).map(|_| self.name(what)).collect()
    }
    pub(crate) fn key32(&mut self, what: &'static str) -> Result<[u8; 32], WireError> {
        let s = self.take(32, what)?;
        let mut a = [0u8; 32];
        a.copy_from_slice(s);
        Ok(a)
    }
    pub(crate) fn end(&self) -> Result<(), WireError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing)
        }
    }
}

pub(crate) fn put_name(out: &mut Vec<u8>, s: &str) {
    // Names longer than MAX_NAME_BYTES are cut at a char boundary; callers validate first.
    let mut end = s.len().min(MAX_NAME_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_names(out: &mut Vec<u8>, names: &[String]) {
    let n = names.len().min(MAX_PREF_APPS);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for name in names.iter().take(n) {
        put_name(out, name);
    }
}

impl SyncPayload {
    /// Encoded size of a batch item (for packing batches under a size limit).
    pub fn item_size(m: &DocMessage) -> usize {
        1 + m.app.len() + 1 + m.doc.len() + 4 + m.msg.len()
    }

    /// Encodes: `version || kind || body` (see `docs/protocol.md`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![SYNC_PAYLOAD_VERSION];
        match self {
            SyncPayload::Batch(items) => {
                out.push(1);
                out.extend_from_slice(&(items.len().min(MAX_BATCH_ITEMS) as u16).to_be_bytes());
                for m in items.iter().take(MAX_BATCH_ITEMS) {
                    put_name(&mut out, &m.app);
                    put_name(&mut out, &m.doc);
                    out.extend_from_slice(&(m.msg.len() as u32).to_be_bytes());
                    out.extend_from_slice(&m.msg);
                }
            }
            SyncPayload::Fragment {
                id,
                index,
                total,
                bytes,
            } => {
                out.push(2);
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&index.to_be_bytes());
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(bytes);
            }
            SyncPayload::Introduce(peers) => {
                out.push(3);
                out.extend_from_slice(&(peers.len().min(u16::MAX as usize) as u16).to_be_bytes());
                for p in peers.iter().take(u16::MAX as usize) {
                    out.extend_from_slice(&p.public_key);
                    put_name(&mut out, &p.name);
                }
            }
            SyncPayload::Removed(id) => {
                out.push(4);
                out.extend_from_slice(id);
            }
            SyncPayload::Hello { name } => {
                out.push(5);
                put_name(&mut out, name);
            }
            SyncPayload::Prefs(p) => {
                out.push(6);
                out.push(u8::from(p.paused) | (u8::from(p.only.is_some()) << 1));
                put_names(&mut out, &p.off);
                if let Some(only) = &p.only {
                    put_names(&mut out, only);
                }
            }
            SyncPayload::Removal(r) => {
                out.push(7);
                out.extend_from_slice(&r.device);
                out.extend_from_slice(&r.by);
                let n = r.vouched.len().min(MAX_GROUP_DEVICES);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                for id in r.vouched.iter().take(n) {
                    out.extend_from_slice(id);
                }
            }
        }
        out
    }

    /// Decodes; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader { b: bytes };
        let v = r.u8("version")?;
        if v != SYNC_PAYLOAD_VERSION {
            return Err(WireError::BadVersion(v));
        }
        let out = match r.u8("kind")? {
            1 => {
                let n = r.u16("batch count")? as usize;
                let mut items = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let app = r.name("app")?;
                    let doc = r.name("doc")?;
                    let len = r.u32("msg len")? as usize;
                    let msg = r.take(len, "msg")?.to_vec();
                    items.push(DocMessage { app, doc, msg });
                }
                SyncPayload::Batch(items)
            }
            2 => {
                let id = r.u64("fragment id")?;
                let index = r.u16("fragment index")?;
                let total = r.u16("fragment total")?;
                let bytes = r.b.to_vec();
                r.b = &[];
                SyncPayload::Fragment {
                    id,
                    index,
                    total,
                    bytes,
                }
            }
            3 => {
                let n = r.u16("peer count")? as usize;
                let mut peers = Vec::with_capacity(n.min(256));
                for _ in 0..n {
                    let public_key = r.key32("peer key")?;
                    let name = r.name("peer name")?;
                    peers.push(PeerInfo { public_key, name });
                }
                SyncPayload::Introduce(peers)
            }
            4 => SyncPayload::Removed(r.key32("device id")?),
            5 => SyncPayload::Hello {
                name: r.name("name")?,
            },
            6 => {
                let flags = r.u8("prefs flags")?;
                let off = r.names("apps off")?;
                let only = if flags & 2 != 0 {
                    Some(r.names("only apps")?)
                } else {
                    None
                };
                SyncPayload::Prefs(PeerPrefs {
                    paused: flags & 1 != 0,
                    off,
                    only,
                })
            }
            7 => {
                let device = r.key32("removed device")?;
                let by = r.key32("remover")?;
                let n = r.u16("vouched count")? as usize;
                if n > MAX_GROUP_DEVICES {
                    return Err(WireError::Truncated("vouched devices"));
                }
                let vouched = (0..n)
                    .map(|_| r.key32("vouched device"))
                    .collect::<Result<_, _>>()?;
                SyncPayload::Removal(Removal {
                    device,
                    by,
                    vouched,
                })
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
    fn round_trips() {
        let cases = vec![
            SyncPayload::Batch(vec![
                DocMessage {
                    app: "notes".into(),
                    doc: "_catalog".into(),
                    msg: vec![1, 2, 3],
                },
                DocMessage {
                    app: "a".into(),
                    doc: "x".into(),
                    msg: vec![],
                },
            ]),
            SyncPayload::Fragment {
                id: 7,
                index: 1,
                total: 3,
                bytes: vec![9; 10],
            },
            SyncPayload::Introduce(vec![PeerInfo {
                public_key: [5; 32],
                name: "laptop".into(),
            }]),
            SyncPayload::Removed([3; 32]),
            SyncPayload::Hello {
                name: "phone".into(),
            },
            SyncPayload::Prefs(PeerPrefs::default()),
            SyncPayload::Removal(Removal {
                device: [1; 32],
                by: [2; 32],
                vouched: vec![[2; 32], [4; 32]],
            }),
            SyncPayload::Prefs(PeerPrefs {
                paused: true,
                off: vec!["photos".into(), "work".into()],
                only: None,
            }),
            SyncPayload::Prefs(PeerPrefs {
                paused: false,
                off: vec![],
                only: Some(vec!["notes".into()]),
            }),
        ];
        for c in cases {
            assert_eq!(SyncPayload::decode(&c.encode()), Ok(c));
        }
        for p in [
            DevicePacket::HandshakeInit(vec![1]),
            DevicePacket::HandshakeResponse(vec![]),
            DevicePacket::Sealed(vec![4, 5]),
            DevicePacket::InitRefused(vec![6]),
        ] {
            assert_eq!(DevicePacket::decode(&p.encode()), Ok(p));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(SyncPayload::decode(&[]).is_err());
        assert_eq!(SyncPayload::decode(&[9, 1]), Err(WireError::BadVersion(9)));
        assert_eq!(SyncPayload::decode(&[1, 99]), Err(WireError::BadKind(99)));
        assert!(SyncPayload::decode(&[1, 1, 0, 5, 3]).is_err());
        let mut ok = SyncPayload::Hello { name: "x".into() }.encode();
        ok.push(0);
        assert_eq!(SyncPayload::decode(&ok), Err(WireError::Trailing));
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = SyncPayload::decode(&bytes);
            let _ = DevicePacket::decode(&bytes);
        }
    }

    #[test]
    fn prefs_say_which_apps_the_sender_takes() {
        let p = PeerPrefs {
            paused: false,
            off: vec!["photos".into()],
            only: None,
        };
        assert!(p.takes("notes") && !p.takes("photos"));
        let page = PeerPrefs {
            only: Some(vec!["notes".into()]),
            ..PeerPrefs::default()
        };
        assert!(page.takes("notes") && !page.takes("photos"));
        let paused = PeerPrefs {
            paused: true,
            ..PeerPrefs::default()
        };
        assert!(!paused.takes("notes"));
        // A list longer than the limit does not decode (no allocation bomb).
        let mut bytes = vec![SYNC_PAYLOAD_VERSION, 6, 0];
        bytes.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(SyncPayload::decode(&bytes).is_err());
    }
}
