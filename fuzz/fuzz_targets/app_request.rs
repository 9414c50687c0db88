//! App protocol request frames (what any local web page can send) on arbitrary text: never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = masq_core::api::parse_request(text);
    }
});
