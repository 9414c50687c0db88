//! Known answers: fixed keys in, committed bytes out
//! (`crates/masq-core/vectors/crypto.json`). Any change to a KDF, domain
//! string, handshake or envelope byte changes an answer, so a wire-format
//! change is always deliberate (bump a version and update `docs/crypto.md`).
//!
//! The same check runs natively (`tests/crypto_kat.rs`) and inside the
//! browser build (`masq-web`'s `knownAnswers`), so both platforms are shown
//! to speak the same bytes.

use std::collections::BTreeMap;

use x25519_dalek::StaticSecret;

use super::handshake::{initiate_with, respond_with};
use super::kdf::{kdf_ck, kdf_rk, message_key_material};
use super::pairing::{slot_id, PairingChannel};
use super::relay_auth::{auth_proof, slot_proof};
use super::{safety_code, DeviceKeypair};
use crate::layout::meta::RemovalMark;
use crate::sync::pairing::{commitment, confirm_mac, confirmation_key, pairing_code};
use crate::wire::device::{PeerInfo, Removal, SyncPayload};
use crate::wire::pairing::PairMessage;

/// The committed answers (hex), with an `_about` entry saying what the
/// inputs are.
pub const VECTORS: &str = include_str!("../../vectors/crypto.json");

/// The message sealed in the envelope answers.
const PLAINTEXT: &[u8] = b"known answer";

/// Computes every answer from the fixed inputs, as hex by name (the names of
/// [`VECTORS`]). Also checks that B opens A's envelope, in both versions
/// (an `Err` names what failed).
pub fn compute() -> Result<BTreeMap<&'static str, String>, String> {
    let mut out = BTreeMap::new();
    let mut put = |name: &'static str, bytes: &[u8]| {
        out.insert(name, hex::encode(bytes));
    };
    let (rk, ck) = kdf_rk(&[1; 32], &[2; 32]);
    put("kdf_rk.rk", rk.as_ref());
    put("kdf_rk.ck", ck.as_ref());
    let (next, mk) = kdf_ck(&ck);
    put("kdf_ck.next", next.as_ref());
    put("kdf_ck.mk", mk.as_ref());
    let (key, nonce) = message_key_material(&mk);
    put("mk.key", key.as_ref());
    put("mk.nonce", &nonce);

    let a = DeviceKeypair::from_secret_bytes([0x11; 32]);
    let b = DeviceKeypair::from_secret_bytes([0x22; 32]);
    put("device_id.a", &a.device_id().0);
    put(
        "safety_code",
        safety_code(&a.public(), &b.public()).as_bytes(),
    );
    let (pending, init) = initiate_with(
        &a,
        &b.public(),
        0x0102_0304_0506_0708,
        StaticSecret::from([0x33; 32]),
    );
    put("handshake.init", &init);
    let (mut sb, resp) = respond_with(&b, &a.public(), &init, StaticSecret::from([0x44; 32]))
        .map_err(|e| format!("respond: {e}"))?;
    put("handshake.response", &resp);
    let refusal = super::handshake::refuse(&b, &a.public(), &init, 0x1112_1314_1516_1718)
        .map_err(|e| format!("refuse: {e}"))?;
    put("handshake.refusal", &refusal);
    let mut sa = pending
        .finish_with(&resp, StaticSecret::from([0x55; 32]))
        .map_err(|e| format!("finish: {e}"))?;
    // Version 2: the nonce is random in use, fixed here.
    let env = sa
        .seal_with_nonce(PLAINTEXT, [0x66; 24])
        .map_err(|e| format!("seal: {e}"))?;
    put("envelope.first", &env);
    let opened = sb.clone().open(&env).map_err(|e| format!("open v2: {e}"))?;
    if opened != PLAINTEXT {
        return Err("the version 2 envelope opened to other bytes".into());
    }
    // Version 1 (nonce derived from the message key), as sealed before M12
    // by the same session: still opened, never sent.
    let v1 = committed()?
        .get("envelope.first_v1")
        .and_then(|h| hex::decode(h).ok())
        .ok_or("the vectors lack envelope.first_v1")?;
    let opened = sb.open(&v1).map_err(|e| format!("open v1: {e}"))?;
    if opened != PLAINTEXT {
        return Err("the version 1 envelope opened to other bytes".into());
    }
    out.insert("envelope.first_v1", hex::encode(&v1));

    // The relay's challenge answers (device and rendezvous slot), for a
    // fixed shared secret, nonce and relay key.
    let (dh, nonce, relay) = ([0x07; 32], [0x08; 32], [0x09; 32]);
    out.insert(
        "relay_auth.device",
        hex::encode(auth_proof(&dh, &nonce, &relay, a.public().as_bytes())),
    );
    out.insert(
        "relay_auth.slot",
        hex::encode(slot_proof(&dh, &nonce, &relay, &[0x0a; 32])),
    );
    // The pairing channel of an invite with secret [0x77; 32]: its slot,
    // and the joiner's first message (direction 1) under nonce [0x88; 24].
    let secret = [0x77; 32];
    let slot = slot_id(&secret);
    out.insert("pairing.slot", hex::encode(slot));
    let channel = PairingChannel::new(&secret, slot);
    let sealed = channel.seal_with_nonce(1, PLAINTEXT, [0x88; 24]);
    if channel.open(1, &sealed).ok().as_deref() != Some(PLAINTEXT) {
        return Err("the pairing message did not open".into());
    }
    out.insert("pairing.sealed", hex::encode(sealed));
    // Pairing v2: the joiner's reveal (A's key, name "phone", nonce
    // [0x99; 32]) and its commitment, and the code with A as joiner and B as
    // inviter (nonces [0x99; 32] and [0x9a; 32]).
    let reveal = PairMessage::Reveal {
        peer: PeerInfo {
            public_key: *a.public().as_bytes(),
            name: "phone".into(),
        },
        nonce: [0x99; 32],
    }
    .encode();
    out.insert("pairing.commitment", hex::encode(commitment(&reveal)));
    // ...and the joiner's Confirm MAC after B's offer (name "laptop", nonce
    // [0x9a; 32]): the confirmation key from DH(A, B) and the transcript.
    let offer = PairMessage::Offer {
        peer: PeerInfo {
            public_key: *b.public().as_bytes(),
            name: "laptop".into(),
        },
        nonce: [0x9a; 32],
    }
    .encode();
    let key = confirmation_key(
        &a.diffie_hellman(&b.public()),
        &commitment(&reveal),
        &reveal,
        &offer,
    );
    out.insert("pairing.confirm_mac", hex::encode(confirm_mac(&key)));
    out.insert(
        "pairing.code",
        pairing_code(
            a.public().as_bytes(),
            b.public().as_bytes(),
            &[0x99; 32],
            &[0x9a; 32],
        ),
    );

    ratchet_steps(&a, &b, &mut out)?;

    // Padding: the padded plaintext length for each plaintext length.
    let sizes: Vec<String> = [
        0usize, 1, 62, 63, 64, 65, 100, 255, 1000, 4096, 65_535, 100_000,
    ]
    .iter()
    .map(|&len| format!("{len}:{}", super::envelope::padme(len + 1)))
    .collect();
    out.insert("padding.sizes", sizes.join(" "));

    // Membership entries: a removal, an introduction and a removal mark.
    let removal = SyncPayload::Removal(Removal {
        device: b.device_id().0,
        by: a.device_id().0,
        vouched: vec![a.device_id().0, [0x33; 32]],
    });
    out.insert("membership.removal", hex::encode(removal.encode()));
    let intro = SyncPayload::Introduce(vec![PeerInfo {
        public_key: *b.public().as_bytes(),
        name: "phone".into(),
    }]);
    out.insert("membership.introduce", hex::encode(intro.encode()));
    let mark = RemovalMark {
        at: 1_800_000_000,
        by: Some(a.device_id()),
    };
    out.insert("membership.removal_mark", hex::encode(mark.encode()));
    Ok(out)
}

/// Double Ratchet steps with skipped keys, from the handshake of A and B
/// (as above): A seals a0, a1, a2 (nonces [0xa0; 24] ...); B opens a2 first
/// (a0 and a1 become skipped keys; B's DH step takes ratchet secret
/// [0xb1; 32]) and replies b0 (nonce [0xb0; 24]); B opens a0 from its
/// skipped keys; A opens b0 (DH step, secret [0xa9; 32]) and seals a3 on its
/// new chain (nonce [0xa3; 24], header pn = 3); B opens a3 (DH step, secret
/// [0xb2; 32]) and then a1, a skipped key of the older chain. Also B's
/// serialized session at the end (`docs/crypto.md`, "Session state
/// serialization"), which holds no skipped key then.
fn ratchet_steps(
    a: &DeviceKeypair,
    b: &DeviceKeypair,
    out: &mut BTreeMap<&'static str, String>,
) -> Result<(), String> {
    let (pending, init) = initiate_with(
        a,
        &b.public(),
        0x0102_0304_0506_0708,
        StaticSecret::from([0x33; 32]),
    );
    let (mut sb, resp) = respond_with(b, &a.public(), &init, StaticSecret::from([0x44; 32]))
        .map_err(|e| format!("respond: {e}"))?;
    let mut sa = pending
        .finish_with(&resp, StaticSecret::from([0x55; 32]))
        .map_err(|e| format!("finish: {e}"))?;
    let seal = |s: &mut super::Session, msg: &[u8], n: u8| {
        s.seal_with_nonce(msg, [n; 24])
            .map_err(|e| format!("seal {n:#x}: {e}"))
    };
    let expect = |got: Result<Vec<u8>, super::CryptoError>, want: &[u8], what: &str| match got {
        Ok(pt) if pt == want => Ok(()),
        Ok(_) => Err(format!("{what} opened to other bytes")),
        Err(e) => Err(format!("{what}: {e}")),
    };
    let a0 = seal(&mut sa, b"a0", 0xa0)?;
    let a1 = seal(&mut sa, b"a1", 0xa1)?;
    let a2 = seal(&mut sa, b"a2", 0xa2)?;
    expect(sb.open_with_ratchet_secret(&a2, [0xb1; 32]), b"a2", "a2")?;
    let b0 = seal(&mut sb, b"b0", 0xb0)?;
    expect(sb.open(&a0), b"a0", "a0 (skipped)")?;
    expect(sa.open_with_ratchet_secret(&b0, [0xa9; 32]), b"b0", "b0")?;
    let a3 = seal(&mut sa, b"a3", 0xa3)?;
    expect(sb.open_with_ratchet_secret(&a3, [0xb2; 32]), b"a3", "a3")?;
    expect(sb.open(&a1), b"a1", "a1 (skipped, older chain)")?;
    for (name, env) in [
        ("ratchet.a0", &a0),
        ("ratchet.a1", &a1),
        ("ratchet.a2", &a2),
        ("ratchet.b0", &b0),
        ("ratchet.a3", &a3),
    ] {
        out.insert(name, hex::encode(env));
    }
    out.insert("ratchet.session_b", hex::encode(&*sb.to_bytes()));
    Ok(())
}

/// The committed answers by name (without `_about`).
pub fn committed() -> Result<BTreeMap<String, String>, String> {
    let mut all: BTreeMap<String, String> =
        serde_json::from_str(VECTORS).map_err(|e| format!("vectors: {e}"))?;
    all.remove("_about");
    Ok(all)
}

/// Computes every answer and compares it with the committed one; returns
/// how many matched, or the first difference.
pub fn check() -> Result<usize, String> {
    let want = committed()?;
    let got = compute()?;
    for (name, value) in &want {
        match got.get(name.as_str()) {
            Some(v) if v == value => {}
            Some(v) => return Err(format!("known answer {name} changed: {v}")),
            None => return Err(format!("known answer {name} was not computed")),
        }
    }
    if let Some(extra) = got.keys().find(|k| !want.contains_key(**k)) {
        return Err(format!("answer {extra} has no committed vector"));
    }
    Ok(want.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_known_answer_matches() {
        assert_eq!(super::check(), Ok(30));
    }
}
