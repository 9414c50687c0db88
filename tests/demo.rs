//! The README's first command, `masq demo`, as a real process: it must run
//! on embedded defaults (no data dir, no config, ports chosen by the OS),
//! exit 0, and show two stores that converged over the relay.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// The text after `marker` on the first line that has it.
fn line<'a>(out: &'a str, marker: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.split_once(marker).map(|(_, rest)| rest.trim()))
        .unwrap_or_else(|| panic!("no line with {marker:?} in:\n{out}"))
}

#[test]
fn the_readme_demo_runs_and_both_stores_converge() {
    let out = Command::new(env!("CARGO_BIN_EXE_masq"))
        .arg("demo")
        .env_remove("MASQ_DATA")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(line(&stdout, "A doc:"), line(&stdout, "B doc:"));
    assert!(
        line(&stdout, "A doc:").contains("hello masq, synced"),
        "{stdout}"
    );
    assert_eq!(line(&stdout, "A settings:"), line(&stdout, "B settings:"));
    // Both concurrent values are kept (in an order set by the random actors).
    let mut conflict: Vec<i64> =
        serde_json::from_str(line(&stdout, "volume conflict kept on both:")).unwrap();
    conflict.sort_unstable();
    assert_eq!(conflict, [3, 7]);
    // The pairing codes both sides showed (and confirmed) are equal.
    let codes = line(&stdout, "codes: A showed ");
    let a = codes.split(',').next().unwrap();
    let b = codes
        .split("B showed ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap();
    assert_eq!(a.len(), 6, "{codes}");
    assert_eq!(a, b, "{codes}");
}
