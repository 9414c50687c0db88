//! Every byte format that leaves a device: relay frames ([`relay_frame`]),
//! the payloads devices send each other inside sealed envelopes
//! ([`device`]), pairing invites ([`invite`]) and the
//! messages of a pairing ([`pairing`]).
//!
//! Architecture invariant: encoders and decoders only. A decoder refuses
//! malformed input with an error, never a panic, whatever the bytes.

pub mod device;
pub mod invite;
pub mod pairing;
pub mod relay_frame;
