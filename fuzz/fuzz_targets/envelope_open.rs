//! Envelope parsing and opening on arbitrary bytes with a real session: never
//! panics, never opens, and leaves the session able to open the next good message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use masq_core::crypto::envelope::Envelope;
use masq_core::crypto::handshake::{initiate, respond};
use masq_core::crypto::{DeviceKeypair, Session};

fuzz_target!(|data: &[u8]| {
    let _ = Envelope::decode(data);
    let _ = Envelope::peek_sender(data);
    let a = DeviceKeypair::from_secret_bytes([1; 32]);
    let b = DeviceKeypair::from_secret_bytes([2; 32]);
    let (pending, init) = initiate(&a, &b.public(), 1);
    let (mut sb, resp) = respond(&b, &a.public(), &init).expect("handshake");
    let mut sa: Session = pending.finish(&resp).expect("finish");
    assert!(sb.open(data).is_err(), "arbitrary bytes must not open");
    let good = sa.seal(b"after the noise").expect("seal");
    assert_eq!(sb.open(&good).expect("good message opens"), b"after the noise");
});
