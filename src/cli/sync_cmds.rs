//! `masq pair`, `masq devices`, `masq status`, `masq apps` (admin requests run
//! by the [`Backend`]) and `masq store` (the daemon).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::backend::Backend;
use super::CliError;
use crate::api::Request;
use crate::service::daemon_file;
use crate::storage::Durability;
use crate::store::{Store, StoreOptions};
use crate::sync::peers;

/// Pairing commands.
#[derive(Debug, Clone, Subcommand)]
pub enum PairCmd {
    /// Make an invite (printed as a masq: URI and a QR code) and wait for
    /// the other device; then compare the six-digit code both show and
    /// confirm it here (and there).
    Invite {
        /// Relay both devices use (default: the one this device already uses).
        #[arg(long)]
        relay: Option<String>,
        /// Confirm the code without asking. Only for scripts that compare
        /// the two devices' codes themselves: the code is what stops
        /// whoever saw the invite from pairing in your place.
        #[arg(long)]
        yes: bool,
    },
    /// Join the device that printed the invite. Safest: give the invite on
    /// stdin (`masq pair join < invite.txt`, or paste it when asked) or with
    /// --file; as an argument it shows in process lists and shell history.
    Join {
        /// The masq: URI (optional: without it, read from --file or stdin).
        invite: Option<String>,
        /// Read the invite from this file (`-`: stdin).
        #[arg(long, conflicts_with = "invite")]
        file: Option<PathBuf>,
        /// Confirm the code without asking (as for `pair invite --yes`).
        #[arg(long)]
        yes: bool,
    },
}

/// Device commands.
#[derive(Debug, Clone, Subcommand)]
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

/// App permission commands.
#[derive(Debug, Clone, Subcommand)]
pub enum AppsCmd {
    /// Browser origins (pending, approved, denied) and native apps, as JSON.
    List,
    /// One app's documents, KV buckets and sync state per device, as JSON.
    Data {
        /// App name (its namespace).
        name: String,
    },
    /// Register a native app; prints its token (shown only this once).
    Add {
        /// App name (its namespace).
        name: String,
    },
    /// Let a browser origin use the store (as the app it asked for, or --app).
    Approve {
        /// `http://host:port` of the web app.
        origin: String,
        /// Namespace to grant instead of the one it asked for.
        #[arg(long)]
        app: Option<String>,
    },
    /// Refuse a browser origin.
    Deny {
        /// The origin.
        origin: String,
    },
    /// Revoke an origin or a native app (its open connections are closed).
    Revoke {
        /// Origin, or native app name.
        who: String,
    },
}

/// Sync preference commands (the same admin ops as the manager page's).
#[derive(Debug, Clone, Subcommand)]
pub enum SyncCmd {
    /// Pause state, and per app × paired device whether it syncs, with
    /// what each device said it takes (JSON).
    Show,
    /// Turn one app on or off towards one paired device.
    Set {
        /// App name (its namespace).
        #[arg(long)]
        app: String,
        /// Paired device: hex id or fingerprint prefix.
        #[arg(long)]
        device: String,
        /// `on` (the default for every app and device) or `off`.
        state: OnOff,
    },
    /// Pause all sync of this store (kept across restarts; presence and
    /// pairing still work).
    Pause,
    /// Resume sync; what was missed catches up.
    Resume,
}

/// A switch's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Syncs.
    On,
    /// Does not sync.
    Off,
}

/// `masq sync ...`: prints the preferences after the command, as JSON.
pub fn sync(backend: &Backend, cmd: SyncCmd) -> Result<(), CliError> {
    let req = match cmd {
        SyncCmd::Show => Request::SyncShow {},
        SyncCmd::Set { app, device, state } => Request::SyncSet {
            app,
            device,
            on: state == OnOff::On,
        },
        SyncCmd::Pause => Request::SyncPause {},
        SyncCmd::Resume => Request::SyncResume {},
    };
    let v = backend.call(None, req)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// `masq pair ...`
pub fn pair(backend: &Backend, cmd: PairCmd) -> Result<(), CliError> {
    let (req, yes, stdin_free) = match cmd {
        PairCmd::Invite { relay, yes } => (Request::PairInvite { relay, yes }, yes, true),
        PairCmd::Join { invite, file, yes } => {
            // An invite read from stdin leaves no terminal to answer on.
            let stdin_free =
                invite.is_some() || file.as_deref().is_some_and(|f| f != Path::new("-"));
            let req = Request::PairJoin {
                invite: read_invite(invite, file)?,
                yes,
            };
            (req, yes, stdin_free)
        }
    };
    let paired = backend.pair(
        req,
        |answer| {
            println!("{}", answer["invite"].as_str().unwrap_or_default());
            eprintln!("{}", answer["qr"].as_str().unwrap_or_default());
            eprintln!("Waiting for the other device (valid 10 minutes, single use)...");
        },
        move |check| ask_code(&check, yes, stdin_free),
    )?;
    let s = |k: &str| paired[k].as_str().unwrap_or_default().to_string();
    eprintln!("Paired with {} ({})", s("name"), s("fingerprint"));
    let learned = paired["also_learned"].as_u64().unwrap_or(0);
    if learned > 0 {
        eprintln!("Also learned {learned} other device(s) of yours.");
    }
    Ok(())
}

/// Shows a pairing's code and asks whether the other device shows the same
/// (reading the terminal; with `yes`, says yes without asking).
fn ask_code(check: &serde_json::Value, yes: bool, stdin_free: bool) -> bool {
    let s = |k: &str| check[k].as_str().unwrap_or_default().to_string();
    eprintln!(
        "Pairing code: {}   (the other device: {}, {})",
        s("code"),
        s("name"),
        s("fingerprint")
    );
    if yes {
        eprintln!("Confirmed without asking (--yes).");
        return true;
    }
    eprint!("Does the other device show the same code? [y/N] ");
    let _ = std::io::stderr().flush();
    // Stdin, unless it carried the invite: then the terminal, if any.
    let mut line = String::new();
    let read = if stdin_free {
        std::io::stdin().read_line(&mut line).is_ok()
    } else {
        match std::fs::File::open("/dev/tty") {
            Ok(tty) => std::io::BufReader::new(tty).read_line(&mut line).is_ok(),
            Err(_) => {
                eprintln!("no terminal to ask on (the invite came on stdin): give it as an argument or with --file, or compare the codes yourself and pass --yes");
                false
            }
        }
    };
    if !read {
        return false;
    }
    let yes = matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes");
    if !yes {
        eprintln!("Declined: nothing is stored on either device.");
    } else {
        eprintln!("Confirmed here; waiting for the other device's confirmation...");
    }
    yes
}

/// `masq devices ...`
pub fn devices(backend: &Backend, cmd: DevicesCmd) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match cmd {
        DevicesCmd::List => {
            let v = backend.call(None, Request::DevicesList {})?;
            let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
            writeln!(
                out,
                "{}  {}  (this device)",
                s(&v["me"], "fingerprint"),
                s(&v["me"], "name")
            )?;
            for d in v["devices"].as_array().into_iter().flatten() {
                let seen = match (d["online"].as_bool(), d["last_seen"].as_i64()) {
                    (Some(true), _) => "online".to_string(),
                    (_, Some(0) | None) => "never seen online".to_string(),
                    (_, Some(t)) => format!("last seen {t}"),
                };
                let by = match d["added_by"].as_str() {
                    Some(fp) if fp == s(&v["me"], "fingerprint") => "paired here".to_string(),
                    Some(fp) => format!("added by {fp}"),
                    None => "added by: not recorded".to_string(),
                };
                writeln!(
                    out,
                    "{}  {}  {}  safety code {}  {}",
                    s(d, "fingerprint"),
                    s(d, "name"),
                    seen,
                    s(d, "safety_code"),
                    by
                )?;
            }
            for r in v["removed"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "{}  removed{} (at {})",
                    s(r, "fingerprint"),
                    r["by"]
                        .as_str()
                        .map(|b| format!(" by {b}"))
                        .unwrap_or_default(),
                    r["at"].as_i64().unwrap_or_default()
                )?;
            }
        }
        DevicesCmd::Remove { id } => {
            let r = backend.call(None, Request::DevicesRemove { device: id })?;
            eprintln!(
                "Removed {}; your other devices will be told when they are next online.",
                r["removed"].as_str().unwrap_or_default()
            );
        }
        DevicesCmd::Name { name } => {
            backend.call(None, Request::DevicesName { name })?;
        }
    }
    Ok(())
}

/// `masq status`: relay, devices, and documents each device has not acknowledged yet.
pub fn status(backend: &Backend) -> Result<(), CliError> {
    let v = backend.call(None, Request::Status {})?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// `masq apps ...`
pub fn apps(backend: &Backend, cmd: AppsCmd) -> Result<(), CliError> {
    let req = match cmd {
        AppsCmd::List => Request::AppsList {},
        AppsCmd::Data { name } => Request::AppsData { name },
        AppsCmd::Add { name } => Request::AppsAdd { name },
        AppsCmd::Approve { origin, app } => Request::AppsApprove { origin, app },
        AppsCmd::Deny { origin } => Request::AppsDeny { origin },
        AppsCmd::Revoke { who } => Request::AppsRevoke { who },
    };
    let is_add = matches!(req, Request::AppsAdd { .. });
    let v = backend.call(None, req)?;
    if is_add {
        println!("{}", v["token"].as_str().unwrap_or_default());
    } else if !v.is_null() {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

/// Longest invite read from stdin or a file (an invite URI is ~150 bytes).
pub const MAX_INVITE_BYTES: u64 = 4096;

/// The invite to join: the argument if given, else the first non-empty line of
/// `file` (`-` or none: stdin), so the secret need not appear in argv.
fn read_invite(arg: Option<String>, file: Option<PathBuf>) -> Result<String, CliError> {
    use std::io::{IsTerminal, Read};
    if let Some(invite) = arg {
        return Ok(invite);
    }
    let mut text = String::new();
    match file.filter(|f| f.as_os_str() != "-") {
        Some(path) => {
            std::fs::File::open(&path)
                .map_err(|e| CliError::from(format!("cannot read {}: {e}", path.display())))?
                .take(MAX_INVITE_BYTES)
                .read_to_string(&mut text)?;
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("Paste the invite (masq:...) and press Enter:");
                std::io::BufRead::read_line(&mut stdin.lock(), &mut text)?;
            } else {
                stdin
                    .lock()
                    .take(MAX_INVITE_BYTES)
                    .read_to_string(&mut text)?;
            }
        }
    }
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            CliError::from("no invite given: pass it on stdin, with --file, or as an argument")
        })
}

/// Environment variable naming the program that opens the manager link
/// (`masq manager --open`); default `xdg-open` (`open` on macOS). `BROWSER`
/// is honoured too, as other tools do.
pub const BROWSER_ENV: &str = "MASQ_BROWSER";

/// `masq manager`: a link to the manager page of the store running on `dir`.
/// The link carries a single-use login code from the daemon, never the admin
/// token: the code is useless once the page has redeemed it (or after
/// `service::admin::LOGIN_CODE_TTL`), so seeing it later in a process list
/// (the opener's argv) or in browser history gives nothing.
pub fn manager(dir: &std::path::Path, open: bool) -> Result<(), CliError> {
    let not_running = || CliError {
        code: 1,
        message: format!(
            "no store is running on {} (start it with `masq store`)",
            dir.display()
        ),
    };
    let info = crate::service::daemon_file::read(dir).ok_or_else(not_running)?;
    let addr = info
        .http_url
        .strip_prefix("http://")
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .ok_or_else(|| CliError::from(format!("store.json has a bad URL {:?}", info.http_url)))?;
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        .map_err(|_| not_running())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = rt.block_on(async {
        let auth = crate::client::Auth::Token(info.admin_token.clone());
        let conn = crate::client::Connection::connect(&info.ws_url, &auth)
            .await
            .map_err(|_| not_running())?;
        let answer = conn
            .call(None, Request::AdminLoginCode {})
            .await
            .map_err(|e| CliError::from(e.message))?;
        answer["code"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| CliError::from("the store gave no login code"))
    })?;
    let link = format!("{}/#code={code}", info.http_url);
    println!("{link}");
    if open {
        let opener = std::env::var(BROWSER_ENV)
            .or_else(|_| std::env::var("BROWSER"))
            .ok()
            .filter(|b| !b.trim().is_empty())
            .unwrap_or_else(|| {
                if cfg!(target_os = "macos") {
                    "open".into()
                } else {
                    "xdg-open".into()
                }
            });
        // The opener (and a browser it starts) shows its arguments to every
        // local user in `ps`: it gets the path of a private page that
        // forwards to the link, never the code itself.
        let page = write_manager_redirect(dir, &link)?;
        std::process::Command::new(&opener)
            .arg(&page)
            .status()
            .map_err(|e| CliError::from(format!("could not run {opener}: {e}")))?;
    }
    Ok(())
}

/// Name of the page in the data directory that forwards the browser to the
/// manager link (`masq manager --open`).
pub const MANAGER_REDIRECT_FILE: &str = "manager-open.html";

/// Writes `<dir>/manager-open.html` (mode 0600, in the 0700 data directory,
/// replaced atomically): a page that forwards to `link` at once. Only this
/// user can read it, and the code in it works once and expires after
/// `service::admin::LOGIN_CODE_TTL`, so a leftover file gives nothing.
fn write_manager_redirect(dir: &std::path::Path, link: &str) -> Result<PathBuf, CliError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let page = dir.join(MANAGER_REDIRECT_FILE);
    let tmp = dir.join(format!("{MANAGER_REDIRECT_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let escaped = link
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(
        f,
        "<!doctype html><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
         <meta http-equiv=\"refresh\" content=\"0;url={escaped}\"><title>masq store manager</title>\
         <a href=\"{escaped}\">Open the masq store manager</a>"
    )?;
    f.sync_all()?;
    std::fs::rename(&tmp, &page)?;
    Ok(page)
}

/// `masq store`: the daemon — serves local apps on loopback and syncs with
/// paired devices until SIGINT or SIGTERM.
pub fn store_daemon(
    dir: PathBuf,
    durability: Durability,
    listen: std::net::SocketAddr,
    relay: Option<String>,
    app_rate: u32,
) -> Result<(), CliError> {
    let store = Store::open_with(
        &dir,
        StoreOptions {
            durability,
            ..StoreOptions::default()
        },
    )?;
    if let Some(relay) = &relay {
        peers::set_relay_url(store.db(), relay)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let service = crate::service::start(
            store.clone(),
            crate::service::ServiceConfig {
                listen,
                app_rate,
                ..Default::default()
            },
        )
        .await?;
        let addr = service.local_addr();
        daemon_file::write(
            &dir,
            &daemon_file::DaemonInfo {
                ws_url: service.ws_url(),
                http_url: format!("http://{addr}"),
                pid: std::process::id(),
                admin_token: service.admin_token().to_string(),
            },
        )?;
        let relay = peers::relay_url(store.db())?;
        eprintln!(
            "masq store: serving apps on http://{addr} ({})",
            match &relay {
                Some(r) => format!("syncing through {r}"),
                None => "not syncing: no relay yet (pair, or pass --relay)".into(),
            }
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        daemon_file::remove(&dir);
        service.shutdown().await;
        store.db().persist_all()?;
        if !store.close_async().await {
            tracing::warn!("memtables not flushed in time; the next start replays the journal");
        }
        Ok::<(), CliError>(())
    })
}
