//! Device packets and sync payloads (what a peer sends inside envelopes),
//! and pairing messages (what whoever holds an invite sends in the pairing
//! channel), on arbitrary bytes: never panic; a pairing message that
//! decodes re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use masq_core::wire::device::{DevicePacket, SyncPayload};
use masq_core::wire::pairing::PairMessage;

fuzz_target!(|data: &[u8]| {
    let _ = DevicePacket::decode(data);
    let _ = SyncPayload::decode(data);
    if let Ok(m) = PairMessage::decode(data) {
        assert_eq!(m.encode(), data, "a pairing message re-encodes to its bytes");
    }
});
