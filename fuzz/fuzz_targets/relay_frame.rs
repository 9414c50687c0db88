//! Relay frame decoding on arbitrary bytes: never panics; what decodes re-encodes to a frame that decodes equal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use masq_core::wire::relay_frame::Frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = Frame::decode(data) {
        let again = Frame::decode(&f.encode()).expect("re-encoded frame decodes");
        assert_eq!(format!("{f:?}"), format!("{again:?}"));
    }
});
