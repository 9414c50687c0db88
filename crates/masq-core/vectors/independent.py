#!/usr/bin/env python3
"""A second implementation of masq's relay auth, pairing channel, pairing v2,
and the handshake init and refusal, from
docs/crypto.md alone, checked against the committed known answers
(crypto.json). Not run by CI (it needs PyPI packages); run it after changing
either construction:

    pip install blake3 cryptography && python3 crates/masq-core/vectors/independent.py

XChaCha20-Poly1305 is composed from HChaCha20 (RFC draft
irtf-cfrg-xchacha, section 2.2; written out below, test-only) and the
`cryptography` package's ChaCha20-Poly1305.
"""

import json
import struct
import sys
from pathlib import Path

import blake3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

AUTH_CONTEXT = "masq 2026-11 relay auth v1"
SLOT_CONTEXT = "masq 2026-11 rendezvous slot v1"
PAIRING_KEY_CONTEXT = "masq 2026-11 pairing key v1"
SLOT_KEY_CONTEXT = "masq 2026-11 pairing slot key v1"
COMMIT_CONTEXT = "masq 2026-12 pairing commitment v2"
CODE_CONTEXT = "masq 2026-12 pairing code v2"
CONFIRM_CONTEXT = "masq 2026-12 pairing confirmation key v2"
INIT_CONTEXT = "masq 2026-11 handshake init v1"
REFUSAL_CONTEXT = "masq 2026-12 handshake refusal v1"


def x25519(secret: bytes, public_key: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(secret).exchange(
        X25519PublicKey.from_public_bytes(public_key)
    )


def public(secret: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(secret)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def derive_key(context: str, material: bytes) -> bytes:
    return blake3.blake3(material, derive_key_context=context).digest()


def proof(context: str, dh: bytes, nonce: bytes, relay: bytes, key: bytes) -> bytes:
    """BLAKE3-keyed(derive_key(context, dh), nonce || relay_public || public)."""
    return blake3.blake3(nonce + relay + key, key=derive_key(context, dh)).digest()


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    def rotl(v, c):
        return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))

    def quarter(s, a, b, c, d):
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF
        s[d] = rotl(s[d] ^ s[a], 16)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF
        s[b] = rotl(s[b] ^ s[c], 12)
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF
        s[d] = rotl(s[d] ^ s[a], 8)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF
        s[b] = rotl(s[b] ^ s[c], 7)

    s = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    s += list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))
    for _ in range(10):
        quarter(s, 0, 4, 8, 12)
        quarter(s, 1, 5, 9, 13)
        quarter(s, 2, 6, 10, 14)
        quarter(s, 3, 7, 11, 15)
        quarter(s, 0, 5, 10, 15)
        quarter(s, 1, 6, 11, 12)
        quarter(s, 2, 7, 8, 13)
        quarter(s, 3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def xchacha_seal(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).encrypt(b"\0\0\0\0" + nonce24[16:], plaintext, ad)


def main() -> int:
    want = json.loads((Path(__file__).parent / "crypto.json").read_text())
    dh, nonce, relay = bytes([0x07] * 32), bytes([0x08] * 32), bytes([0x09] * 32)
    device_a = public(bytes([0x11] * 32))
    got = {
        "relay_auth.device": proof(AUTH_CONTEXT, dh, nonce, relay, device_a),
        "relay_auth.slot": proof(SLOT_CONTEXT, dh, nonce, relay, bytes([0x0A] * 32)),
    }
    secret = bytes([0x77] * 32)
    slot = blake3.blake3(public(derive_key(SLOT_KEY_CONTEXT, secret))).digest()
    got["pairing.slot"] = slot
    seal_nonce = bytes([0x88] * 24)
    ad = b"masq-pair-v1" + slot + bytes([1])
    got["pairing.sealed"] = seal_nonce + xchacha_seal(
        derive_key(PAIRING_KEY_CONTEXT, secret), seal_nonce, b"known answer", ad
    )
    # Pairing v2 (docs/crypto.md, docs/protocol.md "Pairing messages"): A's
    # reveal as joiner (version 2, tag 3, key, name, nonce), its commitment,
    # and the code with B as inviter.
    device_b = public(bytes([0x22] * 32))
    n_j, n_i = bytes([0x99] * 32), bytes([0x9A] * 32)
    reveal = bytes([2, 3]) + device_a + bytes([5]) + b"phone" + n_j
    got["pairing.commitment"] = derive_key(COMMIT_CONTEXT, reveal)
    k = derive_key(CODE_CONTEXT, device_a + device_b + n_j + n_i)
    got["pairing.code"] = f"{int.from_bytes(k[:8], 'big') % 1_000_000:06}"
    # The joiner's Confirm MAC after B's offer (name "laptop", nonce n_i).
    offer = bytes([2, 2]) + device_b + bytes([6]) + b"laptop" + n_i
    dh = X25519PrivateKey.from_private_bytes(bytes([0x11] * 32)).exchange(
        X25519PublicKey.from_public_bytes(device_b)
    )
    th = blake3.blake3(got["pairing.commitment"] + reveal + offer).digest()
    confirm_key = derive_key(CONFIRM_CONTEXT, dh + th)
    got["pairing.confirm_mac"] = blake3.blake3(b"confirm", key=confirm_key).digest()
    # The handshake init, version 2 (A to B, ephemeral [0x33;32], stamp
    # 0x0102030405060708), and B's refusal of it with mark 0x1112131415161718.
    s_a, s_b, e_a = bytes([0x11] * 32), bytes([0x22] * 32), bytes([0x33] * 32)
    stamp = struct.pack(">Q", 0x0102030405060708)
    th1 = blake3.blake3(device_a + device_b + public(e_a) + stamp).digest()
    k = derive_key(INIT_CONTEXT, x25519(e_a, device_b) + x25519(s_a, device_b) + th1)
    init = bytes([2]) + device_a + public(e_a) + stamp + blake3.blake3(b"init", key=k).digest()
    got["handshake.init"] = init
    mark = struct.pack(">Q", 0x1112131415161718)
    init_hash = blake3.blake3(init).digest()
    refusal_key = derive_key(REFUSAL_CONTEXT, x25519(s_b, device_a))
    mac = blake3.blake3(device_b + device_a + init_hash + mark, key=refusal_key).digest()
    got["handshake.refusal"] = bytes([1]) + init_hash + mark + mac
    text = lambda v: v if isinstance(v, str) else v.hex()
    bad = [name for name, value in got.items() if want.get(name) != text(value)]
    for name in got:
        print(f"{name}: {'ok' if name not in bad else 'DIFFERS'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
