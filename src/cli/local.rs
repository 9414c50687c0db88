//! `masq kv ...` and `masq doc ...` on a data directory opened in this process.

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::Value as Json;

use super::CliError;
use crate::doc::{parse_heads, ChangeOp, DocId};
use crate::kv::ListOptions;
use crate::storage::Durability;
use crate::store::{Store, StoreOptions};

/// Key-value commands.
#[derive(Debug, Subcommand)]
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
#[derive(Debug, Subcommand)]
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

fn open(dir: PathBuf, durability: Durability) -> Result<Store, CliError> {
    Ok(Store::open_with(
        dir,
        StoreOptions {
            durability,
            ..StoreOptions::default()
        },
    )?)
}

fn not_found(msg: String) -> CliError {
    CliError {
        code: 1,
        message: msg,
    }
}

fn parse_value(s: &str) -> Json {
    serde_json::from_str(s).unwrap_or_else(|_| Json::String(s.to_string()))
}

/// Runs a `kv` command.
pub fn kv(dir: PathBuf, durability: Durability, cmd: KvCmd) -> Result<(), CliError> {
    let store = open(dir, durability)?;
    let mut out = std::io::stdout().lock();
    match cmd {
        KvCmd::Put {
            app,
            bucket,
            key,
            value,
        } => {
            store
                .app(&app)?
                .bucket(&bucket)?
                .put(&key, &parse_value(&value))?;
        }
        KvCmd::Get { app, bucket, key } => match store.app(&app)?.bucket(&bucket)?.get(&key)? {
            Some(v) => writeln!(out, "{v}")?,
            None => return Err(not_found(format!("no key {key:?} in bucket {bucket:?}"))),
        },
        KvCmd::Del { app, bucket, key } => {
            if !store.app(&app)?.bucket(&bucket)?.delete(&key)? {
                return Err(not_found(format!("no key {key:?} in bucket {bucket:?}")));
            }
        }
        KvCmd::List {
            app,
            bucket,
            prefix,
            start_after,
            limit,
        } => {
            let b = store.app(&app)?.bucket(&bucket)?;
            for (k, v) in b.list(&ListOptions {
                prefix,
                start_after,
                limit,
            })? {
                writeln!(out, "{}", serde_json::json!({"key": k, "value": v}))?;
            }
        }
        KvCmd::Watch {
            app,
            bucket,
            prefix,
        } => {
            let mut sub = store.app(&app)?.bucket(&bucket)?.watch(&prefix);
            while let Some(ev) = sub.blocking_next() {
                writeln!(out, "{}", serde_json::to_string(&ev)?)?;
                out.flush()?;
            }
        }
        KvCmd::Conflicts { app, bucket, key } => {
            let vals = store.app(&app)?.bucket(&bucket)?.conflicts(&key)?;
            writeln!(out, "{}", Json::Array(vals))?;
        }
        KvCmd::Fill {
            app,
            bucket,
            prefix,
            count,
        } => {
            let b = store.app(&app)?.bucket(&bucket)?;
            for i in 0..count {
                let key = format!("{prefix}{i}");
                b.put(&key, &serde_json::json!({ "i": i }))?;
                writeln!(out, "{key}")?;
                out.flush()?;
            }
        }
    }
    Ok(())
}

/// Runs a `doc` command.
pub fn doc(dir: PathBuf, durability: Durability, cmd: DocCmd) -> Result<(), CliError> {
    let store = open(dir, durability)?;
    let mut out = std::io::stdout().lock();
    match cmd {
        DocCmd::Create { app, json } => {
            let docs = store.app(&app)?.docs();
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
            writeln!(out, "{}", docs.create_with(&ops, None)?)?;
        }
        DocCmd::Show { app, id, at } => {
            let docs = store.app(&app)?.docs();
            let id = DocId::parse(&id)?;
            let v = match at {
                Some(h) => docs.get_at(&id, &parse_heads(&h)?)?,
                None => docs.get(&id)?,
            };
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        DocCmd::Edit {
            app,
            id,
            ops,
            message,
        } => {
            let docs = store.app(&app)?.docs();
            let id = DocId::parse(&id)?;
            let parsed: Json = serde_json::from_str(&ops)?;
            let ops: Vec<ChangeOp> = match parsed {
                Json::Array(_) => serde_json::from_value(parsed)?,
                other => vec![serde_json::from_value(other)?],
            };
            let heads = docs.change(&id, &ops, message.as_deref())?;
            writeln!(out, "{}", crate::doc::heads_hex(&heads).join(","))?;
        }
        DocCmd::History { app, id } => {
            let docs = store.app(&app)?.docs();
            for h in docs.history(&DocId::parse(&id)?)? {
                writeln!(out, "{}", serde_json::to_string(&h)?)?;
            }
        }
        DocCmd::Export { app, id } => {
            let bytes = store.app(&app)?.docs().export(&DocId::parse(&id)?)?;
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
            writeln!(out, "{}", store.app(&app)?.docs().import(&bytes)?)?;
        }
        DocCmd::List { app } => {
            for id in store.app(&app)?.docs().list()? {
                writeln!(out, "{id}")?;
            }
        }
        DocCmd::Delete { app, id } => {
            store.app(&app)?.docs().delete(&DocId::parse(&id)?)?;
        }
    }
    Ok(())
}
