//! Crash safety: a real `masq` child process writes keys and prints each one once
//! its write is acknowledged; we SIGKILL it at a random moment, reopen the data
//! directory, and every acknowledged key must be there. Several seeds.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use masq::Store;

fn run_seed(seed: u64, durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    // A cheap deterministic "random" kill point: after 20..220 acknowledged keys.
    let kill_after = 20
        + (seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            >> 33)
            % 200;
    let mut child = Command::new(env!("CARGO_BIN_EXE_masq"))
        .args([
            "--data",
            dir.path().to_str().unwrap(),
            "--durability",
            durability,
        ])
        .args([
            "kv", "fill", "--app", "crash", "--count", "1000000", "--prefix", "key",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    let started = Instant::now();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        acked.push(line);
        if acked.len() as u64 >= kill_after || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    // SIGKILL: no destructor, no flush, no chance to clean up.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!acked.is_empty(), "seed {seed}: child acknowledged nothing");

    let store =
        Store::open(dir.path()).unwrap_or_else(|e| panic!("seed {seed}: reopen failed: {e}"));
    let b = store.app("crash").unwrap().bucket("default").unwrap();
    for key in &acked {
        assert!(
            b.get(key).unwrap().is_some(),
            "seed {seed}: acknowledged key {key} lost after SIGKILL"
        );
    }
    // The Automerge replica, which is what sync sends, has them too: writes
    // the kill left pending are folded after the reopen.
    store.flush_kv().unwrap();
    assert_eq!(store.db().kv_pending.iter().count(), 0, "seed {seed}");
    for key in &acked {
        assert_eq!(
            b.conflicts(key).unwrap().first(),
            b.get(key).unwrap().as_ref(),
            "seed {seed}: {key} in the index but not in its shard document"
        );
    }
    // The store is usable after recovery.
    b.put("after-crash", &serde_json::json!(true)).unwrap();
}

#[test]
fn acknowledged_writes_survive_sigkill_fsync() {
    for seed in 1..=4 {
        run_seed(seed, "fsync");
    }
}

#[test]
fn acknowledged_writes_survive_sigkill_buffered() {
    for seed in 11..=14 {
        run_seed(seed, "buffered");
    }
}
