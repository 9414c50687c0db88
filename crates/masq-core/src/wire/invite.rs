//! Pairing invites: `masq:pair?v=2&relay=<url>&slot=<64 hex>&secret=<base58>&exp=<unix secs>`.
//!
//! The secret is 256 random bits, used once; the slot names the relay's
//! rendezvous and is derived from the secret (`crypto::pairing::slot_id`:
//! the hash of the slot key's public half, so only a secret holder can join
//! it); `exp` is when the invite stops being accepted (10 minutes after
//! it was made, matching the relay's slot lifetime). `v=2` names the pairing
//! with a commitment and both users' confirmation (`masq_core::sync::pairing`);
//! an invite of version 1 (made by masq before it) is refused with a message
//! that says so, since the two pairings cannot talk. An invite whose slot does
//! not match its secret is refused as malformed.

use crate::crypto::random_bytes;
use zeroize::Zeroizing;

/// The version of invite (and pairing) this build makes and takes.
pub const INVITE_VERSION: u8 = 2;
const INVITE_VERSION_STR: &str = "2";

/// How long an invite is valid.
pub const INVITE_TTL_SECS: i64 = 600;

/// A pairing invite.
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    /// Relay URL both devices use.
    pub relay: String,
    /// Rendezvous slot id.
    pub slot: [u8; 32],
    /// One-time secret (wiped on drop).
    pub secret: Zeroizing<[u8; 32]>,
    /// Expiry, seconds since the epoch.
    pub expires: i64,
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invite")
            .field("relay", &self.relay)
            .field("slot", &hex::encode(self.slot))
            .finish()
    }
}

/// Why an invite was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InviteError {
    /// Not a masq invite or a field is malformed.
    #[error("not a valid masq invite: {0}")]
    Malformed(&'static str),
    /// Made by a masq whose pairing has no confirmation step (invite v1).
    #[error("this invite was made by an older masq (pairing v1); update masq on the inviting device and make a new invite")]
    OlderVersion,
    /// Past its expiry time.
    #[error("invite expired")]
    Expired,
}

impl Invite {
    /// A fresh invite for `relay`, valid from `now` for [`INVITE_TTL_SECS`].
    pub fn new(relay: &str, now: i64) -> Self {
        let secret = random_bytes::<32>();
        Self {
            relay: relay.to_string(),
            slot: crate::crypto::pairing::slot_id(&secret),
            secret,
            expires: now + INVITE_TTL_SECS,
        }
    }

    /// The X25519 secret that proves this invite's slot to the relay.
    pub fn slot_secret(&self) -> Zeroizing<[u8; 32]> {
        crate::crypto::pairing::slot_secret(&self.secret)
    }

    /// The `masq:` URI.
    pub fn to_uri(&self) -> String {
        format!(
            "masq:pair?v={}&relay={}&slot={}&secret={}&exp={}",
            INVITE_VERSION,
            percent_encode(&self.relay),
            hex::encode(self.slot),
            bs58::encode(self.secret.as_ref()).into_string(),
            self.expires
        )
    }

    /// Parses a URI and checks expiry against `now`.
    pub fn parse(uri: &str, now: i64) -> Result<Self, InviteError> {
        let q = uri
            .trim()
            .strip_prefix("masq:pair?")
            .ok_or(InviteError::Malformed("must start with masq:pair?"))?;
        let (mut v, mut relay, mut slot, mut secret, mut exp) = (None, None, None, None, None);
        for part in q.split('&') {
            let (k, val) = part
                .split_once('=')
                .ok_or(InviteError::Malformed("field without '='"))?;
            match k {
                "v" => v = Some(val),
                "relay" => {
                    relay = Some(percent_decode(val).ok_or(InviteError::Malformed("relay"))?)
                }
                "slot" => slot = Some(val),
                "secret" => secret = Some(val),
                "exp" => exp = Some(val),
                _ => {}
            }
        }
        match v {
            Some(INVITE_VERSION_STR) => {}
            Some("1") => return Err(InviteError::OlderVersion),
            _ => return Err(InviteError::Malformed("unsupported version")),
        }
        let relay = relay.ok_or(InviteError::Malformed("missing relay"))?;
        if !(relay.starts_with("ws://") || relay.starts_with("wss://")) {
            return Err(InviteError::Malformed(
                "relay must be a ws:// or wss:// URL",
            ));
        }
        let slot: [u8; 32] = hex::decode(slot.ok_or(InviteError::Malformed("missing slot"))?)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(InviteError::Malformed("slot"))?;
        let secret_bytes = Zeroizing::new(
            bs58::decode(secret.ok_or(InviteError::Malformed("missing secret"))?)
                .into_vec()
                .map_err(|_| InviteError::Malformed("secret"))?,
        );
        let secret: [u8; 32] = secret_bytes
            .as_slice()
            .try_into()
            .map_err(|_| InviteError::Malformed("secret length"))?;
        if crate::crypto::pairing::slot_id(&secret) != slot {
            return Err(InviteError::Malformed("slot does not match the secret"));
        }
        let expires: i64 = exp
            .ok_or(InviteError::Malformed("missing exp"))?
            .parse()
            .map_err(|_| InviteError::Malformed("exp"))?;
        if now > expires {
            return Err(InviteError::Expired);
        }
        Ok(Self {
            relay,
            slot,
            secret: Zeroizing::new(secret),
            expires,
        })
    }

    /// The URI as a QR code drawn with Unicode half blocks, for a terminal.
    pub fn qr_text(&self) -> String {
        match qrcode::QrCode::new(self.to_uri().as_bytes()) {
            Ok(code) => code
                .render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build(),
            Err(_) => String::new(),
        }
    }

    /// The URI as a QR code in SVG, for the store manager page.
    pub fn qr_svg(&self) -> String {
        match qrcode::QrCode::new(self.to_uri().as_bytes()) {
            Ok(code) => code
                .render::<qrcode::render::svg::Color>()
                .min_dimensions(240, 240)
                .build(),
            Err(_) => String::new(),
        }
    }
}

/// What stays unescaped in the invite's relay URL: RFC 3986's unreserved
/// characters (`A-Z a-z 0-9 - . _ ~`); every other byte is `%XX`, upper case.
const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, ESCAPED).to_string()
}

/// Decodes `%XX` escapes. Stricter than `percent_decode_str`, which keeps a
/// malformed escape as it is: an invite with one is refused, as is one that
/// is not UTF-8 once decoded.
fn percent_decode(s: &str) -> Option<String> {
    let malformed = s.split('%').skip(1).any(|rest| {
        !rest
            .get(..2)
            .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if malformed {
        return None;
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip_and_errors() {
        let inv = Invite::new("ws://127.0.0.1:7071/x?y=1", 1000);
        let uri = inv.to_uri();
        assert_eq!(Invite::parse(&uri, 1000).unwrap(), inv);
        assert_eq!(
            Invite::parse(&uri, 1000 + INVITE_TTL_SECS + 1),
            Err(InviteError::Expired)
        );
        assert!(matches!(
            Invite::parse("http://x", 0),
            Err(InviteError::Malformed(_))
        ));
        let mistyped = uri.replace("secret=", "secret=0"); // '0' is not base58
        assert!(matches!(
            Invite::parse(&mistyped, 1000),
            Err(InviteError::Malformed(_))
        ));
        let other_slot = uri.replacen(&hex::encode(inv.slot), &hex::encode([7u8; 32]), 1);
        assert_eq!(
            Invite::parse(&other_slot, 1000),
            Err(InviteError::Malformed("slot does not match the secret"))
        );
        let short = uri.replacen(&hex::encode(inv.slot), "abcd", 1);
        assert!(matches!(
            Invite::parse(&short, 1000),
            Err(InviteError::Malformed(_))
        ));
        assert!(!inv.qr_text().is_empty());
        assert!(uri.starts_with("masq:pair?v=2&"));
        assert_eq!(
            Invite::parse(&uri.replacen("v=2", "v=1", 1), 1000),
            Err(InviteError::OlderVersion)
        );
    }

    #[test]
    fn the_relay_url_is_escaped_as_always_and_malformed_escapes_are_refused() {
        // The bytes of the URI format are fixed: unreserved characters stay,
        // everything else is %XX in upper case.
        assert_eq!(
            percent_encode("wss://relay.example:443/a b?x=ü~"),
            "wss%3A%2F%2Frelay.example%3A443%2Fa%20b%3Fx%3D%C3%BC~"
        );
        assert_eq!(
            percent_decode("wss%3A%2F%2Frelay.example%3A443%2Fa%20b%3Fx%3D%C3%BC~").as_deref(),
            Some("wss://relay.example:443/a b?x=ü~")
        );
        for bad in ["%", "%4", "%zz", "a%g1", "%ff"] {
            assert_eq!(percent_decode(bad), None, "{bad:?}");
        }
        let inv = Invite::new("ws://127.0.0.1:7071/x", 1000);
        let broken = inv.to_uri().replacen("relay=ws", "relay=%zzws", 1);
        assert!(matches!(
            Invite::parse(&broken, 1000),
            Err(InviteError::Malformed(_))
        ));
    }
}
