//! Memory budget (M7): a store with 10 000 documents and a bucket of
//! 1 000 000 keys, opened by a fresh `masq` process that then lists every key
//! and reads samples of both, stays under [`BUDGET_MIB`] of RSS. Uses the same
//! code as `masq bench store` (its figures are in docs/performance.md).
#![allow(clippy::unwrap_used)]

/// Resident memory allowed for the opened store, in MiB (the M1 budget for a
/// store of 100k documents is 300 MB).
const BUDGET_MIB: f64 = 300.0;

#[test]
fn ten_thousand_documents_and_a_million_keys_stay_in_budget() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_masq"))
        .args([
            "bench", "store", "--docs", "10000", "--keys", "1000000", "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "masq bench store failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{report}");
    assert_eq!(report["docs"], 10_000);
    assert_eq!(report["keys"], 1_000_000, "every key was listed back");
    let rss = report["rss_mib"].as_f64().unwrap();
    assert!(
        rss > 1.0 && rss < BUDGET_MIB,
        "RSS {rss:.1} MiB after opening, listing 1M keys and reading samples (budget {BUDGET_MIB} MiB)"
    );
}
