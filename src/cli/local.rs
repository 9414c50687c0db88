//! `masq kv ...` and `masq doc ...`: each becomes an app-protocol request run
//! by the [`Backend`] (the running daemon, or the data directory opened here).

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::Value as Json;

use base64::Engine as _;

use super::backend::Backend;
use super::CliError;
use crate::api::Request;
use crate::doc::ChangeOp;

/// Key-value commands.
#[derive(Debug, Clone, Subcommand)]
pub enum KvCmd {
    /// Set KEY to VALUE (JSON; a bare word that is not JSON is taken as a string).
    Put {
        /// App namespace.
        #[arg(long)]
        app: String,
        /// Bucket.
        #[arg(long, default_value = "default")]
        bucket: String,
        /// Key.
        key: String,
        /// Value (JSON).
        value: String,
    },
    /// Print the value of KEY as JSON (exit 1 if absent).
    Get {
        /// App namespace.
        #[arg(long)]
        app: String,
        /// Bucket.
        #[arg(long, default_value = "default")]
        bucket: String,
        /// Key.
        key: String,
    },
    /// Delete KEY (exit 1 if absent).
    Del {
        /// App namespace.
        #[arg(long)]
        app: String,
        /// Bucket.
        #[arg(long, default_value = "default")]
        bucket: String,
        /// Key.
        key: String,
    },
    /// List entries as JSON lines `{"key":..,"value":..}` in key order.
    List {
        /// App namespace.
        #[arg(long)]
        app: String,
        /// Bucket.
        #[arg(long, default_value = "default")]
        bucket: String,
        /// Only keys with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only keys after this one.
        #[arg(long)]
        start_after: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print changes of keys with a prefix as JSON lines until interrupted.
    Watch {
        /// App namespace.
        #[arg(long)]
        app: String,
        /// Bucket.
        #[arg(long, default_value = "default")]
        bucket: String,
        /// Only keys with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Show every value kept for KEY after concurrent writes (winner first).
    Conflicts {
        /// App namespace.
        #[arg(long)]
        app: String,
        /// Bucket.
        #[arg(long, default_value = "default")]
        bucket: String,
        /// Key.
        key: String,
    },
    /// Write COUNT keys PREFIX0..PREFIX{COUNT-1} one by one, printing each key
    /// once its write is acknowledged (durable). Used by crash tests.
    Fill {
        /// App namespace.
        #[arg(long)]
        app: String,
        /// Bucket.
        #[arg(long, default_value = "default")]
        bucket: String,
        /// Key prefix.
        #[arg(long, default_value = "k")]
        prefix: String,
        /// How many keys.
        #[arg(long, default_value_t = 1000)]
        count: u64,
    },
}

/// Document commands.
#[derive(Debug, Clone, Subcommand)]
pub enum DocCmd {
    /// Create a document; prints its id.
    Create {
        /// App namespace.
        #[arg(long)]
        app: String,
        /// Initial content: a JSON object put at the root.
        #[arg(long)]
        json: Option<String>,
    },
    /// Print a document as JSON.
    Show {
        /// App namespace.
        #[arg(long)]
        app: String,
        /// Document id.
        id: String,
        /// Read at these heads (comma-separated hashes) instead of now.
        #[arg(long, value_delimiter = ',')]
        at: Option<Vec<String>>,
    },
    /// Apply change operations (a JSON op or array of ops); prints the new heads.
    Edit {
        /// App namespace.
        #[arg(long)]
        app: String,
        /// Document id.
        id: String,
        /// Operations, e.g. '[{"op":"put","path":"/title","value":"hi"}]'.
        ops: String,
        /// Commit message.
        #[arg(short, long)]
        message: Option<String>,
    },
    /// Print the change history as JSON lines.
    History {
        /// App namespace.
        #[arg(long)]
        app: String,
        /// Document id.
        id: String,
    },
    /// Write the Automerge file of a document to stdout.
    Export {
        /// App namespace.
        #[arg(long)]
        app: String,
        /// Document id.
        id: String,
    },
    /// Import an Automerge file (path, or - for stdin); prints the new id.
    Import {
        /// App namespace.
        #[arg(long)]
        app: String,
        /// File.
        file: PathBuf,
    },
    /// List the app's documents.
    List {
        /// App namespace.
        #[arg(long)]
        app: String,
    },
    /// Delete a document (the deletion syncs).
    Delete {
        /// App namespace.
        #[arg(long)]
        app: String,
        /// Document id.
        id: String,
    },
}

fn parse_value(s: &str) -> Json {
    serde_json::from_str(s).unwrap_or_else(|_| Json::String(s.to_string()))
}

fn print_event(out: &mut impl Write, ev: &crate::store::Event) -> bool {
    writeln!(out, "{}", serde_json::to_string(ev).unwrap_or_default()).is_ok()
        && out.flush().is_ok()
}

/// Runs a `kv` command.
pub fn kv(backend: &Backend, cmd: KvCmd) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match cmd {
        KvCmd::Put {
            app,
            bucket,
            key,
            value,
        } => {
            let value = parse_value(&value);
            backend.call(Some(&app), Request::KvPut { bucket, key, value })?;
        }
        KvCmd::Get { app, bucket, key } => {
            let v = backend.call(Some(&app), Request::KvGet { bucket, key })?;
            writeln!(out, "{v}")?;
        }
        KvCmd::Del { app, bucket, key } => {
            let r = backend.call(
                Some(&app),
                Request::KvDelete {
                    bucket: bucket.clone(),
                    key: key.clone(),
                },
            )?;
            if r.get("deleted") != Some(&Json::Bool(true)) {
                return Err(CliError {
                    code: 1,
                    message: format!("no key {key:?} in bucket {bucket:?}"),
                });
            }
        }
        KvCmd::List {
            app,
            bucket,
            prefix,
            start_after,
            limit,
        } => {
            let list = backend.call(
                Some(&app),
                Request::KvList {
                    bucket,
                    prefix,
                    start_after,
                    limit,
                },
            )?;
            for e in list.as_array().into_iter().flatten() {
                writeln!(out, "{e}")?;
            }
        }
        KvCmd::Watch {
            app,
            bucket,
            prefix,
        } => {
            backend.for_each_event(&app, Request::KvWatch { bucket, prefix }, |ev| {
                print_event(&mut out, ev)
            })?;
        }
        KvCmd::Conflicts { app, bucket, key } => {
            writeln!(
                out,
                "{}",
                backend.call(Some(&app), Request::KvConflicts { bucket, key })?
            )?;
        }
        KvCmd::Fill {
            app,
            bucket,
            prefix,
            count,
        } => {
            for i in 0..count {
                let key = format!("{prefix}{i}");
                backend.call(
                    Some(&app),
                    Request::KvPut {
                        bucket: bucket.clone(),
                        key: key.clone(),
                        value: serde_json::json!({ "i": i }),
                    },
                )?;
                writeln!(out, "{key}")?;
                out.flush()?;
            }
        }
    }
    Ok(())
}

fn field(v: &Json, name: &str) -> String {
    v.get(name)
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Runs a `doc` command.
pub fn doc(backend: &Backend, cmd: DocCmd) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match cmd {
        DocCmd::Create { app, json } => {
            let ops = match json {
                None => Vec::new(),
                Some(j) => match serde_json::from_str::<Json>(&j)? {
                    Json::Object(m) => m
                        .into_iter()
                        .map(|(k, v)| ChangeOp::Put {
                            path: format!("/{}", k.replace('~', "~0").replace('/', "~1")),
                            value: v,
                        })
                        .collect(),
                    _ => return Err(CliError::from("--json must be a JSON object")),
                },
            };
            let r = backend.call(Some(&app), Request::DocCreate { ops, message: None })?;
            writeln!(out, "{}", field(&r, "doc"))?;
        }
        DocCmd::Show { app, id, at } => {
            let v = backend.call(Some(&app), Request::DocGet { doc: id, at })?;
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        DocCmd::Edit {
            app,
            id,
            ops,
            message,
        } => {
            let parsed: Json = serde_json::from_str(&ops)?;
            let ops: Vec<ChangeOp> = match parsed {
                Json::Array(_) => serde_json::from_value(parsed)?,
                other => vec![serde_json::from_value(other)?],
            };
            let r = backend.call(
                Some(&app),
                Request::DocChange {
                    doc: id,
                    ops,
                    message,
                },
            )?;
            let heads: Vec<String> = serde_json::from_value(r["heads"].clone())?;
            writeln!(out, "{}", heads.join(","))?;
        }
        DocCmd::History { app, id } => {
            let h = backend.call(Some(&app), Request::DocHistory { doc: id })?;
            for e in h.as_array().into_iter().flatten() {
                writeln!(out, "{e}")?;
            }
        }
        DocCmd::Export { app, id } => {
            let r = backend.call(Some(&app), Request::DocExport { doc: id })?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(field(&r, "base64"))
                .map_err(CliError::from)?;
            out.write_all(&bytes)?;
        }
        DocCmd::Import { app, file } => {
            let bytes = if file.as_os_str() == "-" {
                let mut b = Vec::new();
                std::io::stdin().read_to_end(&mut b)?;
                b
            } else {
                std::fs::read(&file)?
            };
            let base64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            let r = backend.call(Some(&app), Request::DocImport { base64 })?;
            writeln!(out, "{}", field(&r, "doc"))?;
        }
        DocCmd::List { app } => {
            let l = backend.call(Some(&app), Request::DocList {})?;
            for id in l.as_array().into_iter().flatten() {
                writeln!(out, "{}", id.as_str().unwrap_or_default())?;
            }
        }
        DocCmd::Delete { app, id } => {
            backend.call(Some(&app), Request::DocDelete { doc: id })?;
        }
    }
    Ok(())
}
