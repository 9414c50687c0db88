//! Device packets and sync payloads (what a peer sends inside envelopes) on arbitrary bytes: never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use masq::sync::wire::{DevicePacket, SyncPayload};

fuzz_target!(|data: &[u8]| {
    let _ = DevicePacket::decode(data);
    let _ = SyncPayload::decode(data);
});
