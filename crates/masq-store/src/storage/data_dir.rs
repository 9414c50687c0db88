//! The data directory's permissions: private to the user who runs the store.
//!
//! Invariant: no other local user can read or change anything in a data
//! directory a store has opened. It holds the device's identity secret, the
//! ratchet sessions and every app's data in plain bytes (the journal is not
//! encrypted at rest), so file modes are the only wall between them and the
//! other accounts on the machine.
//!
//! Mechanisms, in order:
//! 1. The directory is created `0700` whatever the umask.
//! 2. A directory that another user owns, or that group or others can write,
//!    is refused with [`Error::InsecureDataDir`] saying how to fix it: files
//!    someone else could plant or swap are not ours to trust. One that is
//!    merely readable by others (made by an older masq, or by `mkdir` under
//!    umask 022) is ours: it is tightened to `0700`.
//! 3. Everything already inside is set to `0700` (directories) or `0600`
//!    (files) on every open, without following symlinks.
//! 4. Files fjall creates later (journals, tables) inherit the process umask:
//!    the `masq` binary sets its umask to `077` at start (see `masq::cli_main`), so
//!    they are `0600`; an app that embeds the library keeps its own umask, and
//!    the `0700` directory above keeps those files out of other users' reach,
//!    and the next open tightens them too.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where a store keeps its data: `explicit` (the CLI's `--data`,
/// `MASQ_DATA`) if given, else `masq` under the user's data directory (or
/// the working directory if the system names none).
pub fn location(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| in_user_data("masq"))
}

/// `name` under the user's data directory (or the working directory).
pub fn in_user_data(name: &str) -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join(name)
}

/// Mode of every directory in the data directory, the data directory included.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in the data directory.
pub const FILE_MODE: u32 = 0o600;
/// How deep [`tighten`] descends (fjall nests a few levels); anything deeper
/// is not ours and is left alone rather than walked without bound.
const MAX_WALK_DEPTH: usize = 8;

/// Creates `dir` (mode `0700`) if needed, refuses it if others can write it,
/// and makes it and everything in it private.
pub fn prepare(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    let insecure = |reason: String| Error::InsecureDataDir {
        path: dir.to_path_buf(),
        reason,
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(insecure(format!(
            "it belongs to user id {}, not to this user ({me}); use a directory of your own",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(insecure(format!(
            "group or other users can write it (mode {mode:o}); check nothing in it was \
             changed by someone else, then run: chmod -R go-rwx {}",
            dir.display()
        )));
    }
    Ok(tighten(dir, 0)?)
}

/// Sets `path` (a directory) to [`DIR_MODE`] and what it holds to
/// [`DIR_MODE`] / [`FILE_MODE`]; symlinks are neither followed nor changed.
///
/// An entry that vanishes during the walk is fine: the storage engine of a
/// store just closed in this process may still be removing old tables (its
/// late flush, see `Store::close_within`), and what is gone needs no mode.
fn tighten(path: &Path, depth: usize) -> std::io::Result<()> {
    set_mode(path, DIR_MODE)?;
    if depth >= MAX_WALK_DEPTH {
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let done = entry.file_type().and_then(|kind| {
            if kind.is_dir() {
                tighten(&entry.path(), depth + 1)
            } else if kind.is_file() {
                set_mode(&entry.path(), FILE_MODE)
            } else {
                Ok(())
            }
        });
        match done {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.mode() & 0o777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}
