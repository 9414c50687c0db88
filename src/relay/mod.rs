//! The blind relay (`masq relay`): forwards sealed envelopes between authenticated devices.
