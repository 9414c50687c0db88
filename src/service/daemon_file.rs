//! `store.json` in the data directory: how local tools find a running store.
//! Written (mode 0600, atomically via rename) when `masq store` is listening,
//! removed when it stops. A file left by a killed daemon is harmless: tools
//! that cannot connect to its URL fall back to opening the directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name inside the data directory.
pub const FILE_NAME: &str = "store.json";

/// What a running store publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// App WebSocket URL, e.g. `ws://127.0.0.1:7070/ws`.
    pub ws_url: String,
    /// Base URL of its HTTP pages.
    pub http_url: String,
    /// Its process id.
    pub pid: u32,
    /// The admin token of this run (hex).
    pub admin_token: String,
}

/// Path of the file for `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes the file with mode 0600.
pub fn write(dir: &Path, info: &DaemonInfo) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(info)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path(dir))
}

/// Reads the file, if there is one that parses.
pub fn read(dir: &Path) -> Option<DaemonInfo> {
    let bytes = std::fs::read(path(dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Removes the file (if it is ours: same pid).
pub fn remove(dir: &Path) {
    if read(dir)
        .map(|i| i.pid == std::process::id())
        .unwrap_or(false)
    {
        let _ = std::fs::remove_file(path(dir));
    }
}
