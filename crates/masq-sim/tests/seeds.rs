//! Seeded worlds under `cargo test`: a few hundred by default,
//! `MASQ_SIM_SEEDS=N` for more (`MASQ_SIM_FROM=S` to start elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use masq_sim::{run, run_seed, Config, Faults, Report, Sabotage};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn many_seeded_worlds_converge_and_keep_every_acknowledged_write() {
    let seeds = env("MASQ_SIM_SEEDS", 200);
    let from = env("MASQ_SIM_FROM", 0);
    let mut failures = Vec::new();
    let mut acknowledged = 0;
    for seed in from..from + seeds {
        match run_seed(seed) {
            Ok(r) => acknowledged += r.acknowledged,
            Err(failed) => failures.push(format!("{}\n    shrunk: {:?}", failed.0, failed.1)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The worlds did work: writes were acknowledged (and checked).
    assert!(
        acknowledged > seeds,
        "only {acknowledged} writes in {seeds} worlds"
    );
}

#[test]
fn a_seed_replays_byte_for_byte() {
    for seed in [1, 7, 42] {
        let cfg = Config::for_seed(seed);
        let a = run(seed, &cfg).unwrap();
        let b = run(seed, &cfg).unwrap();
        assert_eq!(a, b, "seed {seed}");
        assert!(a.frames > 0);
    }
    // Another seed is another world.
    let a = run(1, &Config::for_seed(1)).unwrap();
    let b = run(2, &Config::for_seed(2)).unwrap();
    assert_ne!(a.digest, b.digest);
}

#[test]
fn a_quiet_world_of_eight_converges() {
    let cfg = Config {
        devices: 8,
        steps: 200,
        faults: Faults::none(),
        sabotage: None,
    };
    let r = run(3, &cfg).unwrap();
    assert!(r.acknowledged > 50);
}

#[test]
fn a_harsh_world_converges() {
    let cfg = Config {
        devices: 4,
        steps: 400,
        faults: Faults {
            loss: 0.2,
            duplicate: 0.2,
            max_delay_ms: 2000,
            partition: 0.03,
            relay_restart: 0.01,
            disconnect: 0.03,
            crash: 0.03,
            crash_before_commit: 0.05,
            max_skew_ms: 600_000,
            removal: true,
            rollback: 0.01,
            prefs: 0.02,
        },
        sabotage: None,
    };
    let mut after_removal = 0;
    for seed in 0..5 {
        let r = run(seed, &cfg).unwrap_or_else(|f| panic!("{f}"));
        after_removal += r.after_removal_writes;
    }
    // The removal check had writes to check.
    assert!(after_removal > 0);
}

/// Runs seeds `0..seeds` of `cfg`; any failure fails the test.
fn run_all(cfg: &Config, seeds: u64) -> Vec<Report> {
    (0..seeds)
        .map(|seed| run(seed, cfg).unwrap_or_else(|f| panic!("{f}")))
        .collect()
}

/// Disks go back to older snapshots of themselves (restored backups):
/// the devices' ratchets and handshake stamps go back with them, and the
/// world still converges.
#[test]
fn worlds_whose_disks_roll_back_converge() {
    let cfg = Config {
        devices: 3,
        steps: 300,
        faults: Faults {
            loss: 0.02,
            max_delay_ms: 50,
            rollback: 0.03,
            ..Faults::none()
        },
        sabotage: None,
    };
    let rollbacks: u64 = run_all(&cfg, 10).iter().map(|r| r.rollbacks).sum();
    // There were rollbacks to survive.
    assert!(rollbacks >= 5, "{rollbacks} rollbacks");
}

/// Devices turn the app off and on towards their peers, and pause and
/// resume all their sync, while they write; once all is on again the world
/// converges.
#[test]
fn worlds_whose_sync_preferences_change_converge() {
    let cfg = Config {
        devices: 3,
        steps: 300,
        faults: Faults {
            loss: 0.02,
            max_delay_ms: 50,
            prefs: 0.05,
            ..Faults::none()
        },
        sabotage: None,
    };
    let changes: u64 = run_all(&cfg, 10).iter().map(|r| r.faults).sum();
    assert!(changes >= 50, "{changes} preference changes");
}

/// The checks catch a device that answers before it commits (and then
/// loses its power): the simulator's own test.
#[test]
fn the_checks_catch_an_acknowledged_write_that_was_lost() {
    let cfg = Config {
        devices: 2,
        steps: 100,
        faults: Faults::none(),
        sabotage: Some(Sabotage::AcknowledgeWithoutCommit),
    };
    let failure = run(1, &cfg).unwrap_err();
    assert!(failure.what.contains("acknowledged"), "{failure}");
}
