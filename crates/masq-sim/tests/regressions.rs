//! Worlds that failed once, shrunk, kept so the bugs stay fixed.
#![allow(clippy::unwrap_used, clippy::panic)]

use masq_sim::{run, Config, Faults};

/// Seed 6, shrunk to 72 steps: two devices, 10 % loss, a relay restart.
/// A change whose message the network lost was never sent again (Automerge
/// keeps it in `sent_hashes` even when the peer's `need` names it), so the
/// two devices answered each other forever and a KV shard never converged.
/// Fixed by `device::doc_sync::resend_what_they_need`.
#[test]
fn seed_6_a_lost_change_is_sent_again() {
    let cfg = Config {
        devices: 2,
        steps: 72,
        faults: Faults {
            loss: 0.1,
            max_delay_ms: 50,
            relay_restart: 0.005,
            ..Faults::none()
        },
        sabotage: None,
    };
    run(6, &cfg).unwrap_or_else(|f| panic!("{f}"));
}

/// Seed 45, shrunk to 108 steps: four devices, 10 % loss and duplication,
/// skewed clocks, one removal. The note carrying the removal to one member
/// was lost; notes leave their queue once sealed, and the removal log went
/// only at a session's start, so that member kept trusting the removed
/// device for as long as its session lived. Fixed: the removal log goes
/// with every resync (`Device::on_resync_tick`).
#[test]
fn seed_45_a_lost_removal_reaches_every_member() {
    let cfg = Config {
        devices: 4,
        steps: 108,
        faults: Faults {
            loss: 0.1,
            duplicate: 0.1,
            max_delay_ms: 50,
            max_skew_ms: 600_000,
            removal: true,
            ..Faults::none()
        },
        sabotage: None,
    };
    run(45, &cfg).unwrap_or_else(|f| panic!("{f}"));
}
