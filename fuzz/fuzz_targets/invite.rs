//! `masq:` invite URIs (pasted by people) on arbitrary text: never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = masq_core::wire::invite::Invite::parse(text, 1_800_000_000);
    }
});
