//! A full disk and a read-only data directory, on a real file system: a small
//! tmpfs mounted for the test (root only). A full disk must give writers a clear
//! error (`disk_full`), keep serving reads, and lose nothing acknowledged; a read-only data
//! directory must be refused with a clear message; after space comes back
//! (or the mount is writable again) the store reopens with every acknowledged
//! write intact.
//!
//! Mounting needs root (CAP_SYS_ADMIN). Without it the tests say so and pass,
//! unless `CI` is set: CI runs as root, and there they must run.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use masq::Durability;
use masq::{Store, StoreOptions};
use serde_json::json;

/// A tmpfs mounted on a temp dir for as long as it lives.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "8m"), or None if this process may not mount.
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Some(Tmpfs { dir });
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the disk-fault tests: could not mount a tmpfs (run as root)"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        None
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    fn remount(&self, opts: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "remount {opts}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn open(dir: &Path) -> masq::Result<Store> {
    Store::open_with(
        dir,
        StoreOptions {
            durability: Durability::Fsync,
            ..Default::default()
        },
    )
}

/// A 16 KiB value that says which key it belongs to.
fn value(i: usize) -> serde_json::Value {
    json!({ "i": i, "pad": "x".repeat(16 * 1024) })
}

#[test]
fn full_disk_fails_writes_clearly_and_loses_nothing_acknowledged() {
    let Some(fs) = Tmpfs::mount("24m") else {
        return;
    };
    let store = open(&fs.path()).unwrap();
    let bucket = store.app("disk").unwrap().bucket("b").unwrap();
    let doc = store
        .app("disk")
        .unwrap()
        .docs()
        .create_with(
            &[masq::ChangeOp::Put {
                path: "/n".into(),
                value: json!(0),
            }],
            None,
        )
        .unwrap();

    // Write until the disk is full; remember what was acknowledged.
    let mut acked = 0usize;
    let err = loop {
        match bucket.put(&format!("k{acked:06}"), &value(acked)) {
            Ok(()) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 100_000, "a 24 MiB disk never filled up");
    };
    eprintln!(
        "disk full after {acked} acknowledged writes: {} ({})",
        err,
        err.code()
    );
    assert!(acked > 10, "the disk filled before anything was written");
    assert_eq!(err.code(), "disk_full", "a full disk says so: {err}");
    // Every later write says the same, and the store keeps running.
    let again = bucket.put("more", &json!(1)).unwrap_err();
    assert_eq!(again.code(), "disk_full", "{again}");

    // Reads keep working while the disk is full.
    assert_eq!(
        bucket.get("k000000").unwrap(),
        Some(value(0)),
        "reads work on a full disk"
    );
    assert_eq!(
        store.app("disk").unwrap().docs().get(&doc).unwrap()["n"],
        json!(0)
    );

    // Space comes back; a fresh process (here: a fresh open) finds every
    // acknowledged write and can write again.
    drop(bucket);
    drop(store);
    fs.remount("size=256m");
    let store = open(&fs.path()).unwrap();
    let bucket = store.app("disk").unwrap().bucket("b").unwrap();
    for i in 0..acked {
        assert_eq!(
            bucket.get(&format!("k{i:06}")).unwrap(),
            Some(value(i)),
            "acknowledged write k{i:06} lost after a full disk"
        );
    }
    bucket.put("after", &json!("space is back")).unwrap();
    store
        .app("disk")
        .unwrap()
        .docs()
        .change(
            &doc,
            &[masq::ChangeOp::Put {
                path: "/n".into(),
                value: json!(1),
            }],
            None,
        )
        .unwrap();
    drop(bucket);
    drop(store);
    let store = open(&fs.path()).unwrap();
    assert_eq!(
        store
            .app("disk")
            .unwrap()
            .bucket("b")
            .unwrap()
            .get("after")
            .unwrap(),
        Some(json!("space is back"))
    );
}

#[test]
fn read_only_data_dir_is_refused_clearly_and_left_intact() {
    let Some(fs) = Tmpfs::mount("64m") else {
        return;
    };
    let dir = fs.path();
    {
        let store = open(&dir).unwrap();
        let b = store.app("ro").unwrap().bucket("b").unwrap();
        for i in 0..100 {
            b.put(&format!("k{i}"), &json!(i)).unwrap();
        }
    }
    fs.remount("ro");

    // The CLI and the daemon both refuse with a message naming the problem.
    let masq = env!("CARGO_BIN_EXE_masq");
    for args in [
        vec!["kv", "get", "--app", "ro", "--bucket", "b", "k1"],
        vec!["store", "--listen", "127.0.0.1:0"],
    ] {
        let out = Command::new(masq)
            .arg("--data")
            .arg(&dir)
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success(), "masq {args:?} on a read-only dir");
        assert!(
            stderr.contains("read-only"),
            "masq {args:?} says the data directory is read-only: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "no panic: {stderr}");
    }

    // Writable again: everything is there.
    fs.remount("rw");
    let store = open(&dir).unwrap();
    let b = store.app("ro").unwrap().bucket("b").unwrap();
    for i in 0..100 {
        assert_eq!(b.get(&format!("k{i}")).unwrap(), Some(json!(i)));
    }
}
