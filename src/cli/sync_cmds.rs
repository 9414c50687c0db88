//! `masq pair`, `masq devices`, `masq status`, `masq store`, `masq demo`:
//! the commands that involve other devices.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;

use super::CliError;
use crate::crypto::DeviceId;
use crate::storage::Durability;
use crate::store::{Store, StoreOptions};
use crate::sync::core::SyncCore;
use crate::sync::engine::SyncEngine;
use crate::sync::pairing::{self, Inviter};
use crate::sync::peers;

/// Pairing commands.
#[derive(Debug, Subcommand)]
pub enum PairCmd {
    /// Make an invite (printed as a masq: URI and a QR code) and wait for the other device.
    Invite {
        /// Relay both devices use (default: the one this device already uses).
        #[arg(long)]
        relay: Option<String>,
    },
    /// Join the device that printed INVITE.
    Join {
        /// The masq: URI.
        invite: String,
    },
}

/// Device commands.
#[derive(Debug, Subcommand)]
pub enum DevicesCmd {
    /// This device and its paired devices.
    List,
    /// Remove a paired device (by hex id or fingerprint prefix) everywhere.
    Remove {
        /// Device id or fingerprint.
        id: String,
    },
    /// Set this device's name (shown on the others).
    Name {
        /// The name.
        name: String,
    },
}

fn open(dir: PathBuf, durability: Durability) -> Result<Store, CliError> {
    Ok(Store::open_with(
        dir,
        StoreOptions {
            durability,
            ..StoreOptions::default()
        },
    )?)
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn relay_for(store: &Store, given: Option<String>) -> Result<String, CliError> {
    match given.or(peers::relay_url(store.db())?) {
        Some(r) => Ok(r),
        None => Err(CliError::from(
            "no relay configured: pass --relay ws://HOST:PORT",
        )),
    }
}

/// `masq pair ...`
pub fn pair(dir: PathBuf, durability: Durability, cmd: PairCmd) -> Result<(), CliError> {
    let store = open(dir, durability)?;
    let rt = runtime()?;
    let paired = match cmd {
        PairCmd::Invite { relay } => {
            let relay = relay_for(&store, relay)?;
            rt.block_on(async {
                let inviter = Inviter::start(store.clone(), &relay).await?;
                let inv = inviter.invite();
                println!("{}", inv.to_uri());
                eprintln!("{}", inv.qr_text());
                eprintln!("Waiting for the other device (valid 10 minutes, single use)...");
                inviter.wait().await
            })?
        }
        PairCmd::Join { invite } => rt.block_on(pairing::join(&store, &invite))?,
    };
    eprintln!("Paired with {} ({})", paired.name, paired.fingerprint);
    eprintln!(
        "Safety code: {}  — check that the other device shows the same code.",
        paired.safety_code
    );
    if paired.also_learned > 0 {
        eprintln!(
            "Also learned {} other device(s) of yours.",
            paired.also_learned
        );
    }
    Ok(())
}

fn find_device(store: &Store, needle: &str) -> Result<DeviceId, CliError> {
    let needle = needle.to_lowercase();
    let matches: Vec<DeviceId> = peers::peers(store.db())?
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| id.to_string().starts_with(&needle) || id.fingerprint().starts_with(&needle))
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => Err(CliError {
            code: 1,
            message: format!("no paired device matches {needle:?}"),
        }),
        _ => Err(CliError::from(format!(
            "{needle:?} matches several devices; give more of the id"
        ))),
    }
}

/// `masq devices ...`
pub fn devices(dir: PathBuf, durability: Durability, cmd: DevicesCmd) -> Result<(), CliError> {
    let store = open(dir, durability)?;
    let db = store.db();
    let mut out = std::io::stdout().lock();
    match cmd {
        DevicesCmd::List => {
            let me = peers::load_or_create_identity(db)?;
            writeln!(
                out,
                "{}  {}  (this device)",
                me.device_id().fingerprint(),
                peers::device_name(db)?
            )?;
            for (id, rec) in peers::peers(db)? {
                let seen = if rec.last_seen == 0 {
                    "never seen online".to_string()
                } else {
                    format!("last seen {}", rec.last_seen)
                };
                let code = crate::crypto::safety_code(&me.public(), &rec.public()?);
                writeln!(
                    out,
                    "{}  {}  {}  safety code {}",
                    id.fingerprint(),
                    rec.name,
                    seen,
                    code
                )?;
            }
        }
        DevicesCmd::Remove { id } => {
            let id = find_device(&store, &id)?;
            pairing::remove_device(&store, &id)?;
            eprintln!(
                "Removed {}; your other devices will be told when they are next online.",
                id.fingerprint()
            );
        }
        DevicesCmd::Name { name } => peers::set_device_name(db, &name)?,
    }
    Ok(())
}

/// `masq status`: relay, devices, and documents each device has not acknowledged yet.
pub fn status(dir: PathBuf, durability: Durability) -> Result<(), CliError> {
    let store = open(dir, durability)?;
    let db = store.db();
    let me = peers::load_or_create_identity(db)?;
    let core = SyncCore::new(store.clone());
    let mut report = serde_json::json!({
        "device": me.device_id().to_string(),
        "fingerprint": me.device_id().fingerprint(),
        "relay": peers::relay_url(db)?,
        "peers": [],
    });
    let mut list = Vec::new();
    for (id, rec) in peers::peers(db)? {
        let pending: Vec<String> = core
            .unacknowledged(&id)?
            .into_iter()
            .map(|(a, d)| format!("{a}/{d}"))
            .collect();
        list.push(serde_json::json!({
            "device": id.to_string(), "name": rec.name, "last_seen": rec.last_seen,
            "session": peers::session_bytes(db, &id)?.is_some(),
            "unacknowledged_docs": pending.len(), "unacknowledged": pending,
        }));
    }
    report["peers"] = serde_json::Value::Array(list);
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// `masq store`: the daemon — syncs with paired devices until interrupted.
pub fn store_daemon(
    dir: PathBuf,
    durability: Durability,
    relay: Option<String>,
) -> Result<(), CliError> {
    let store = open(dir, durability)?;
    let relay = relay_for(&store, relay)?;
    peers::set_relay_url(store.db(), &relay)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let engine = SyncEngine::start(store.clone(), relay.clone())?;
        eprintln!("masq store: syncing through {relay} (Ctrl-C to stop)");
        let mut status = engine.watch_status();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                changed = status.changed() => {
                    if changed.is_err() { break; }
                    let s = status.borrow().clone();
                    tracing::info!(relay = s.relay_connected, online = s.online.len(), syncing = s.syncing.len(), "status");
                }
            }
        }
        engine.shutdown().await;
        store.db().persist_all()?;
        Ok::<(), CliError>(())
    })
}
