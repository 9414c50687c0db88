//! A deterministic simulator of masq devices, in the style of
//! FoundationDB's simulation and TigerBeetle's VOPR: one seed replays a
//! whole world byte for byte.
//!
//! A world ([`world`]) is 2 to 8 devices running the core's device
//! (`masq_core::device::Device`, through the page's shell and in-memory
//! store, whose disk keeps only what was committed) over a simulated relay
//! that speaks the real frames, and a network that loses, duplicates,
//! delays and reorders, partitions pairs of devices, restarts the relay,
//! drops connections, cuts a device's power (what was not committed is
//! gone), rolls a device's disk back to an older snapshot and skews
//! clocks, while the apps write keys and documents and a
//! member may remove another.
//!
//! After the faults end and every device is back, the world must converge
//! within [`world::HEAL_LIMIT`], and the checks hold: every acknowledged
//! write of every member is on every member, all members hold the same,
//! nothing the removed device wrote after every member knew is accepted,
//! no nonce and no message key ever sealed two envelopes, no step failed
//! and nothing panicked.
//!
//! Run many seeds with `MASQ_SIM_SEEDS=N cargo test --release -p masq-sim`
//! or `cargo run --release -p masq-sim -- --seeds N [--from S]`.
//!
//! Architecture invariant: nothing here reads the OS's clock or
//! randomness, and nothing iterates a hash map to decide what happens next.

pub mod rng;
pub mod world;

pub use world::{run, Config, Failure, Faults, Report, Sabotage};

/// Runs `seed` in the world it makes ([`Config::for_seed`]); on a failure,
/// the smallest number of steps (a prefix of the same run) that still
/// fails is searched for and reported.
pub fn run_seed(seed: u64) -> Result<Report, Box<(Failure, Config)>> {
    let cfg = Config::for_seed(seed);
    match run(seed, &cfg) {
        Ok(r) => Ok(r),
        Err(f) => Err(Box::new(shrink(seed, cfg, f))),
    }
}

/// The smallest prefix of a failing run's steps that still fails.
pub fn shrink(seed: u64, cfg: Config, failure: Failure) -> (Failure, Config) {
    let mut best = (failure, cfg.clone());
    let (mut lo, mut hi) = (0usize, cfg.steps);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let smaller = Config {
            steps: mid,
            ..cfg.clone()
        };
        match run(seed, &smaller) {
            Err(f) => {
                best = (f, smaller);
                hi = mid;
            }
            Ok(_) => lo = mid + 1,
        }
    }
    best
}
