//! Crypto benchmarks: envelope seal+open beside raw XChaCha20-Poly1305 in the
//! same group, the DH ratchet step and the handshake.
//!
//! Run: `cargo bench --bench crypto`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use masq_core::crypto::handshake::{initiate, respond};
use masq_core::crypto::{DeviceKeypair, Session};

fn pair() -> (Session, Session) {
    let a = DeviceKeypair::generate();
    let b = DeviceKeypair::generate();
    let (p, init) = initiate(&a, &b.public(), 1);
    let (sb, resp) = respond(&b, &a.public(), &init).unwrap();
    (p.finish(&resp).unwrap(), sb)
}

fn seal_open(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal_open");
    for size in [64usize, 1024, 64 * 1024, 1024 * 1024] {
        let msg = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        let cipher = XChaCha20Poly1305::new(&[7u8; 32].into());
        let nonce = XNonce::from([9u8; 24]);
        g.bench_with_input(
            BenchmarkId::new("raw_xchacha20poly1305", size),
            &msg,
            |b, m| {
                b.iter(|| {
                    let ct = cipher.encrypt(&nonce, m.as_slice()).unwrap();
                    cipher.decrypt(&nonce, ct.as_slice()).unwrap()
                })
            },
        );
        let (mut a, mut bb) = pair();
        g.bench_with_input(BenchmarkId::new("masq_envelope", size), &msg, |b, m| {
            b.iter(|| {
                let env = a.seal(m).unwrap();
                bb.open(&env).unwrap()
            })
        });
    }
    g.finish();
}

fn ratchet_and_handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratchet");
    // The floor: the X25519 operations a DH ratchet step is made of.
    let s1 = x25519_dalek::StaticSecret::from([0x11u8; 32]);
    let p2 = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([0x22u8; 32]));
    g.bench_function("raw_x25519_diffie_hellman", |bch| {
        bch.iter(|| s1.diffie_hellman(&p2))
    });
    g.bench_function("raw_x25519_keygen", |bch| {
        bch.iter(|| {
            let mut k = [0u8; 32];
            getrandom::fill(&mut k).unwrap();
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(k))
        })
    });
    let (mut a, mut b) = pair();
    // One DH ratchet step on each side: a message each way.
    g.bench_function("dh_ratchet_round_trip_2_steps", |bch| {
        bch.iter(|| {
            let m = a.seal(b"x").unwrap();
            b.open(&m).unwrap();
            let r = b.seal(b"y").unwrap();
            a.open(&r).unwrap();
        })
    });
    let (mut a2, mut b2) = pair();
    g.bench_function("symmetric_step_seal_open_64B", |bch| {
        bch.iter(|| {
            let m = a2.seal(&[0u8; 64]).unwrap();
            b2.open(&m).unwrap();
        })
    });
    let ka = DeviceKeypair::generate();
    let kb = DeviceKeypair::generate();
    g.bench_function("handshake_full", |bch| {
        bch.iter(|| {
            let (p, init) = initiate(&ka, &kb.public(), 1);
            let (_, resp) = respond(&kb, &ka.public(), &init).unwrap();
            p.finish(&resp).unwrap()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = seal_open, ratchet_and_handshake
}
criterion_main!(benches);
