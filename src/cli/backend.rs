//! Where a CLI command runs: in the running `masq store` daemon of the data
//! directory (found through its `store.json`, spoken to with its admin token),
//! or — when none answers — on the directory opened in this process. Both take
//! the same [`Request`]s and give the same JSON, so every command prints the
//! same thing either way.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use super::CliError;
use crate::api::execute::Outcome;
use crate::api::{ApiError, Request, Response};
use crate::client::conn::{drive_pairing, PairNews};
use crate::client::{Auth, Connection};
use crate::service::{admin, daemon_file, Shared};
use crate::storage::Durability;
use crate::store::{Event, Store, StoreOptions};

/// How long the CLI waits for a daemon named in `store.json` to answer.
pub const DAEMON_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A CLI command's way to the data.
pub enum Backend {
    /// A running daemon, over its admin connection.
    Daemon {
        /// Runtime for the connection.
        rt: Runtime,
        /// The connection.
        conn: Connection,
    },
    /// The data directory, opened here.
    Local {
        /// Runtime for the async admin operations.
        rt: Runtime,
        /// Admin context without a listener or sync engine.
        shared: Arc<Shared>,
    },
}

/// An app-protocol error as a CLI error: `not_found` exits 1, the rest 2.
fn api_err(e: ApiError) -> CliError {
    CliError {
        code: if e.code == "not_found" { 1 } else { 2 },
        message: e.message,
    }
}

fn runtime() -> Result<Runtime, CliError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

impl Backend {
    /// The daemon of `dir` if one answers, else `dir` opened here.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, CliError> {
        let rt = runtime()?;
        if let Some(info) = daemon_file::read(dir) {
            let connected = rt.block_on(async {
                tokio::time::timeout(
                    DAEMON_CONNECT_TIMEOUT,
                    Connection::connect(&info.ws_url, &Auth::Token(info.admin_token)),
                )
                .await
            });
            if let Ok(Ok(conn)) = connected {
                return Ok(Backend::Daemon { rt, conn });
            }
        }
        let store = Store::open_with(
            dir,
            StoreOptions {
                durability,
                ..StoreOptions::default()
            },
        )?;
        let shared = Arc::new(Shared::new(
            store,
            0,
            crate::sync::engine::RESYNC_INTERVAL,
            false,
        ));
        Ok(Backend::Local { rt, shared })
    }

    /// Closes the data directory if it was opened here (a bounded flush, see
    /// [`Store::close`]); a daemon's stays open.
    pub fn close(self) {
        if let Backend::Local { rt, shared } = self {
            let store = shared.store.clone();
            drop(shared);
            drop(rt);
            store.close();
        }
    }

    /// Runs a request for `app` (data requests) or the store (admin requests).
    pub fn call(&self, app: Option<&str>, req: Request) -> Result<Json, CliError> {
        match self {
            Backend::Daemon { rt, conn } => {
                rt.block_on(async { conn.call(app, req).await.map_err(api_err) })
            }
            Backend::Local { rt, shared } => {
                if req.is_admin() {
                    return rt.block_on(async {
                        let (tx, _rx) = mpsc::channel(1);
                        admin::handle(shared, 1, req, &tx).await.map_err(api_err)
                    });
                }
                match self.execute_local(shared, app, req)? {
                    Outcome::Value(v) => Ok(v),
                    Outcome::Subscribe(_) => Err(CliError::from("use watch for subscriptions")),
                }
            }
        }
    }

    /// Runs `pair.invite` or `pair.join` to its end: `on_invite` gets the
    /// invite, `ask` (run on a thread of its own: it may read the terminal)
    /// gets the code to compare and returns the user's answer. Returns the
    /// paired device.
    pub fn pair(
        &self,
        req: Request,
        on_invite: impl FnMut(&Json),
        ask: impl FnOnce(Json) -> bool + Send + 'static,
    ) -> Result<Json, CliError> {
        // On a thread of its own, not the runtime's blocking pool: a pairing
        // that ends while the user is still being asked (the other side
        // said no, or left) must not wait for the answer to shut down.
        let ask = |check: Json| async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = tx.send(ask(check));
            });
            rx.await.unwrap_or(false)
        };
        match self {
            Backend::Daemon { rt, conn } => {
                rt.block_on(async { conn.pair(req, on_invite, ask).await.map_err(api_err) })
            }
            Backend::Local { rt, shared } => rt.block_on(async {
                // The admin requests run in this process: their messages
                // come on `tx` as they would on a connection.
                const PAIRING: u64 = 1;
                let is_invite = matches!(req, Request::PairInvite { .. });
                let (tx, mut rx) = mpsc::channel::<tokio_tungstenite::tungstenite::Message>(4);
                let (news_tx, news) = mpsc::channel(4);
                let forward = async move {
                    while let Some(m) = rx.recv().await {
                        let news = match serde_json::from_str::<Response>(m.to_text().unwrap_or(""))
                        {
                            Ok(Response::PairCode { pair_code, .. }) => PairNews::Code(pair_code),
                            Ok(Response::Paired { paired, .. }) => PairNews::Paired(paired),
                            _ => continue,
                        };
                        if news_tx.send(news).await.is_err() {
                            return;
                        }
                    }
                };
                let drive = drive_pairing(
                    is_invite,
                    admin::handle(shared, PAIRING, req, &tx),
                    news,
                    |yes| {
                        admin::handle(
                            shared,
                            2,
                            Request::PairConfirm {
                                pairing: PAIRING,
                                yes,
                            },
                            &tx,
                        )
                    },
                    on_invite,
                    ask,
                );
                tokio::select! {
                    r = drive => r.map_err(api_err),
                    _ = forward => Err(CliError::from("the pairing ended without an answer")),
                }
            }),
        }
    }

    fn execute_local(
        &self,
        shared: &Shared,
        app: Option<&str>,
        req: Request,
    ) -> Result<Outcome, CliError> {
        let app = app.ok_or_else(|| CliError::from("--app is required"))?;
        let app = shared.store.app(app)?;
        crate::api::execute(&app, req).map_err(api_err)
    }

    /// Runs a watch/subscribe request and calls `each` for every event until
    /// the store goes away or `each` returns false.
    pub fn for_each_event(
        &self,
        app: &str,
        req: Request,
        mut each: impl FnMut(&Event) -> bool,
    ) -> Result<(), CliError> {
        match self {
            Backend::Daemon { rt, conn } => rt.block_on(async {
                let (_, mut rx) = conn.subscribe(Some(app), req).await.map_err(api_err)?;
                while let Some(ev) = rx.recv().await {
                    if !each(&ev) {
                        break;
                    }
                }
                Ok(())
            }),
            Backend::Local { shared, .. } => match self.execute_local(shared, Some(app), req)? {
                Outcome::Subscribe(mut sub) => {
                    while let Some(ev) = sub.blocking_next() {
                        if !each(&ev) {
                            break;
                        }
                    }
                    Ok(())
                }
                Outcome::Value(_) => Err(CliError::from("not a subscription")),
            },
        }
    }
}
