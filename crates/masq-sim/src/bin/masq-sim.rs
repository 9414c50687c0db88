//! Runs many seeded worlds: `masq-sim --seeds N [--from S]`. Prints each
//! failing seed (shrunk) and a summary; exits 1 if any failed.

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|k| args.get(k + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let seeds = arg("--seeds", 1000);
    let from = arg("--from", 0);
    let started = Instant::now();
    let (mut failed, mut frames, mut acknowledged, mut faults) = (0u64, 0u64, 0u64, 0u64);
    for seed in from..from + seeds {
        match masq_sim::run_seed(seed) {
            Ok(r) => {
                frames += r.frames;
                acknowledged += r.acknowledged;
                faults += r.faults;
            }
            Err(bad) => {
                failed += 1;
                println!("FAILED {}\n  shrunk to {:?}", bad.0, bad.1);
            }
        }
        if (seed - from + 1) % 1000 == 0 {
            println!(
                "{} seeds, {failed} failed, {:.0} s",
                seed - from + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "{seeds} seeds from {from}: {} passed, {failed} failed; {frames} frames, {acknowledged} acknowledged writes, {faults} faults; {:.1} s",
        seeds - failed,
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
