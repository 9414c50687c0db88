//! `masq::Client`: what a native app uses. It talks to the device's store
//! over the app protocol when one answers (**store mode**); otherwise it
//! embeds a store of its own, with its own identity and data directory, and is
//! paired with the user's devices like a device (**peer mode**, scenarios 2
//! and 3 of the design). The KV and document calls are the same in both
//! modes: each becomes an [`api::Request`](crate::api::Request), sent over the
//! socket or executed in-process by [`api::execute`](fn@crate::api::execute).

pub(crate) mod conn;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::mpsc;

pub use conn::{Auth, Connection, CLIENT_EVENT_BUFFER};

use crate::api::execute::Outcome;
use crate::api::{ApiError, ConnState, Request};
use crate::doc::{ChangeOp, Subscription};
use crate::store::{Event, Store};
use crate::sync::pairing::{self, Confirm, Inviter, Paired};
use crate::sync::EngineSlot;

/// How long [`Client::connect`] waits for a local store before peer mode.
pub const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The store answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// No connection could be made.
    #[error("cannot reach the store: {0}")]
    Connect(String),
    /// The store refused the connection (bad token, bad Host, ...).
    #[error("the store refused the connection ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The store's explanation.
        message: String,
    },
    /// The embedded store failed (peer mode).
    #[error(transparent)]
    Store(#[from] crate::error::Error),
    /// The call is not available in this mode.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Which way a client reaches its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Through the device's `masq store`.
    Store,
    /// Through a store embedded in this process.
    Peer,
}

/// Where a client looks for its store and what it uses otherwise.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The app (its namespace).
    pub app: String,
    /// The local store's app WebSocket URL. Default: from `store.json` in the
    /// store's data dir (`$MASQ_DATA` or the platform data dir), else
    /// `ws://127.0.0.1:7070/ws`.
    pub store_url: Option<String>,
    /// The app's token (`masq apps add NAME`). Default: `$MASQ_TOKEN`.
    pub token: Option<String>,
    /// Peer mode's own data directory. Default: the platform data dir +
    /// `masq-peer/<app>`.
    pub peer_dir: Option<PathBuf>,
    /// Never use peer mode (fail if no store answers).
    pub require_store: bool,
    /// Peer mode's sync engine resync interval.
    pub resync_interval: Duration,
}

impl ClientOptions {
    /// Defaults for `app`.
    pub fn new(app: &str) -> Self {
        Self {
            app: app.to_string(),
            store_url: None,
            token: std::env::var("MASQ_TOKEN").ok(),
            peer_dir: None,
            require_store: false,
            resync_interval: crate::sync::engine::RESYNC_INTERVAL,
        }
    }

    fn resolved_store_url(&self) -> String {
        if let Some(u) = &self.store_url {
            return u.clone();
        }
        let dir = masq_store::storage::data_dir::location(
            std::env::var_os("MASQ_DATA").map(PathBuf::from),
        );
        crate::service::daemon_file::read(&dir)
            .map(|i| i.ws_url)
            .unwrap_or_else(|| format!("ws://{}/ws", crate::service::DEFAULT_LISTEN))
    }
}

/// Peer mode: an embedded store and, once a relay is known, its sync engine.
struct Peer {
    store: Store,
    engine: EngineSlot,
}

impl Peer {
    async fn ensure_engine(&self) -> Result<(), ClientError> {
        Ok(self.engine.ensure().await?)
    }
}

enum Backend {
    Store(Connection),
    Peer(Peer),
}

/// A native app's handle on its data. See the module docs.
pub struct Client {
    app: String,
    backend: Backend,
}

/// A stream of events from a watch or subscription.
pub struct Events {
    inner: EventsInner,
}

enum EventsInner {
    Remote(mpsc::Receiver<Event>),
    Local(Subscription),
}

impl Events {
    /// The next event; `None` when the connection or store is gone.
    pub async fn next(&mut self) -> Option<Event> {
        match &mut self.inner {
            EventsInner::Remote(rx) => rx.recv().await,
            EventsInner::Local(s) => s.next().await,
        }
    }
}

/// An invite made by a peer-mode client, waiting for the other device.
pub struct PendingPairing {
    inviter: Inviter,
}

impl Client {
    /// Connects as `app` with default options.
    pub async fn connect(app: &str) -> Result<Self, ClientError> {
        Self::connect_with(ClientOptions::new(app)).await
    }

    /// Connects as configured: the local store if one answers, else peer mode.
    /// A store that answers but refuses the token is an error, not a reason
    /// for peer mode (that would split the app's data in two).
    pub async fn connect_with(opts: ClientOptions) -> Result<Self, ClientError> {
        crate::store::validate_name("app", &opts.app)?;
        let url = opts.resolved_store_url();
        let attempt = match &opts.token {
            Some(t) => tokio::time::timeout(
                LOCAL_CONNECT_TIMEOUT,
                Connection::connect(&url, &Auth::Token(t.clone())),
            )
            .await
            .unwrap_or_else(|_| Err(ClientError::Connect("timed out".into()))),
            None => {
                // Without a token we cannot use a store, but if one runs here
                // peer mode would split the app's data: say so instead.
                let addr = url
                    .trim_start_matches("ws://")
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let probe = tokio::time::timeout(
                    LOCAL_CONNECT_TIMEOUT,
                    tokio::net::TcpStream::connect(addr),
                )
                .await;
                match probe {
                    Ok(Ok(_)) => Err(ClientError::Refused {
                        status: 401,
                        message: format!(
                            "a store runs at {url}: register the app with `masq apps add {}` and set MASQ_TOKEN",
                            opts.app
                        ),
                    }),
                    _ => Err(ClientError::Connect("no store answers".into())),
                }
            }
        };
        match attempt {
            Ok(conn) => {
                let (state, bound) = conn.state();
                if state != ConnState::Ready {
                    return Err(ClientError::Refused {
                        status: 403,
                        message: format!("store says {state:?}"),
                    });
                }
                Ok(Self {
                    app: bound.unwrap_or(opts.app),
                    backend: Backend::Store(conn),
                })
            }
            Err(e @ ClientError::Refused { .. }) => Err(e),
            Err(e) if opts.require_store => Err(e),
            Err(_) => Self::peer(opts).await,
        }
    }

    /// Peer mode directly (no local store is tried).
    pub async fn peer(opts: ClientOptions) -> Result<Self, ClientError> {
        let dir = opts.peer_dir.clone().unwrap_or_else(|| {
            masq_store::storage::data_dir::in_user_data("masq-peer").join(&opts.app)
        });
        let store = tokio::task::spawn_blocking(move || Store::open(dir))
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))??;
        let peer = Peer {
            engine: EngineSlot::new(store.clone(), opts.resync_interval),
            store,
        };
        peer.ensure_engine().await?;
        Ok(Self {
            app: opts.app,
            backend: Backend::Peer(peer),
        })
    }

    /// Which way this client reaches its data.
    pub fn mode(&self) -> Mode {
        match self.backend {
            Backend::Store(_) => Mode::Store,
            Backend::Peer(_) => Mode::Peer,
        }
    }

    /// The app's namespace.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The embedded store (peer mode only).
    pub fn embedded_store(&self) -> Option<&Store> {
        match &self.backend {
            Backend::Peer(p) => Some(&p.store),
            Backend::Store(_) => None,
        }
    }

    /// Sends any data request and returns its `ok` value.
    pub async fn request(&self, req: Request) -> Result<Json, ClientError> {
        match &self.backend {
            Backend::Store(c) => Ok(c.call(None, req).await?),
            Backend::Peer(p) => match self.execute_local(p, req).await? {
                Outcome::Value(v) => Ok(v),
                Outcome::Subscribe(_) => Err(ClientError::Unsupported(
                    "use watch/subscribe for subscriptions",
                )),
            },
        }
    }

    async fn execute_local(&self, p: &Peer, req: Request) -> Result<Outcome, ClientError> {
        let app = p.store.app(&self.app)?;
        Ok(
            tokio::task::spawn_blocking(move || crate::api::execute(&app, req))
                .await
                .map_err(|e| ClientError::Connect(e.to_string()))??,
        )
    }

    async fn subscribe(&self, req: Request) -> Result<Events, ClientError> {
        match &self.backend {
            Backend::Store(c) => {
                let (_, rx) = c.subscribe(None, req).await?;
                Ok(Events {
                    inner: EventsInner::Remote(rx),
                })
            }
            Backend::Peer(p) => match self.execute_local(p, req).await? {
                Outcome::Subscribe(s) => Ok(Events {
                    inner: EventsInner::Local(s),
                }),
                Outcome::Value(_) => Err(ClientError::Unsupported("not a subscription")),
            },
        }
    }

    /// Whether this app syncs, and with which devices (read only: the user
    /// decides in the store manager or with `masq sync`): `{"app",
    /// "paused", "devices": [{"device", "name", "on", "online", "takes"}]}`.
    pub async fn sync_status(&self) -> Result<Json, ClientError> {
        match &self.backend {
            Backend::Store(c) => Ok(c.call(None, Request::SyncStatus {}).await?),
            Backend::Peer(p) => {
                let engine = p.engine.status().await;
                let (store, app) = (p.store.clone(), self.app.clone());
                Ok(tokio::task::spawn_blocking(move || {
                    crate::service::admin::sync_status_json(&store, &app, engine.as_ref())
                })
                .await
                .map_err(|e| ClientError::Connect(e.to_string()))??)
            }
        }
    }

    /// The value of `key` in `bucket`, if any.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Option<Json>, ClientError> {
        let req = Request::KvGet {
            bucket: bucket.into(),
            key: key.into(),
        };
        match self.request(req).await {
            Ok(v) => Ok(Some(v)),
            Err(ClientError::Api(e)) if e.code == "not_found" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets `key` in `bucket`; returns once the write is durable.
    pub async fn put(&self, bucket: &str, key: &str, value: &Json) -> Result<(), ClientError> {
        self.request(Request::KvPut {
            bucket: bucket.into(),
            key: key.into(),
            value: value.clone(),
        })
        .await
        .map(|_| ())
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<bool, ClientError> {
        let v = self
            .request(Request::KvDelete {
                bucket: bucket.into(),
                key: key.into(),
            })
            .await?;
        Ok(v.get("deleted").and_then(Json::as_bool).unwrap_or(false))
    }

    /// Entries of `bucket` whose keys start with `prefix`, in key order (at most 1000).
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<(String, Json)>, ClientError> {
        let v = self
            .request(Request::KvList {
                bucket: bucket.into(),
                prefix: prefix.into(),
                start_after: None,
                limit: None,
            })
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| {
                        Some((e.get("key")?.as_str()?.to_string(), e.get("value")?.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Changes of keys with `prefix` in `bucket`, local and from other devices.
    pub async fn watch(&self, bucket: &str, prefix: &str) -> Result<Events, ClientError> {
        self.subscribe(Request::KvWatch {
            bucket: bucket.into(),
            prefix: prefix.into(),
        })
        .await
    }

    /// Creates a document from `ops`; its id.
    pub async fn create_doc(&self, ops: &[ChangeOp]) -> Result<String, ClientError> {
        let v = self
            .request(Request::DocCreate {
                ops: ops.to_vec(),
                message: None,
            })
            .await?;
        Ok(v.get("doc")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// A document as JSON.
    pub async fn read_doc(&self, doc: &str) -> Result<Json, ClientError> {
        self.request(Request::DocGet {
            doc: doc.into(),
            at: None,
        })
        .await
    }

    /// Applies `ops` atomically; the new heads.
    pub async fn change_doc(
        &self,
        doc: &str,
        ops: &[ChangeOp],
        message: Option<&str>,
    ) -> Result<Vec<String>, ClientError> {
        let v = self
            .request(Request::DocChange {
                doc: doc.into(),
                ops: ops.to_vec(),
                message: message.map(str::to_string),
            })
            .await?;
        Ok(serde_json::from_value(v["heads"].clone()).unwrap_or_default())
    }

    /// The app's documents.
    pub async fn list_docs(&self) -> Result<Vec<String>, ClientError> {
        let v = self.request(Request::DocList {}).await?;
        Ok(serde_json::from_value(v).unwrap_or_default())
    }

    /// A document's change history (JSON entries: hash, actor, seq, time, message, deps).
    pub async fn history(&self, doc: &str) -> Result<Json, ClientError> {
        self.request(Request::DocHistory { doc: doc.into() }).await
    }

    /// Changes of one document (or all, with `None`), local and remote.
    pub async fn subscribe_docs(&self, doc: Option<&str>) -> Result<Events, ClientError> {
        self.subscribe(Request::DocSubscribe {
            doc: doc.map(str::to_string),
        })
        .await
    }

    /// Peer mode: makes an invite through `relay` for another device (or
    /// peer-mode app) to join. In store mode, pairing belongs to the store
    /// (`masq pair invite`).
    pub async fn pair_invite(&self, relay: &str) -> Result<PendingPairing, ClientError> {
        let Backend::Peer(p) = &self.backend else {
            return Err(ClientError::Unsupported(
                "pairing is the store's job in store mode: masq pair invite",
            ));
        };
        let inviter = Inviter::start(p.store.clone(), relay).await?;
        Ok(PendingPairing { inviter })
    }

    /// Peer mode: finishes a pairing made with [`pair_invite`](Self::pair_invite).
    /// `confirm` shows the user the code and resolves to their answer (yes
    /// only when the other device shows the same code); nothing is stored
    /// unless both users say yes.
    pub async fn pair_wait(
        &self,
        pending: PendingPairing,
        confirm: Confirm,
    ) -> Result<Paired, ClientError> {
        let Backend::Peer(p) = &self.backend else {
            return Err(ClientError::Unsupported("not in peer mode"));
        };
        let paired = pending.inviter.wait(confirm).await?;
        p.ensure_engine().await?;
        Ok(paired)
    }

    /// Peer mode: joins the device that made `invite`, then syncs with it.
    /// `confirm` is asked as for [`pair_wait`](Self::pair_wait).
    pub async fn pair_join(&self, invite: &str, confirm: Confirm) -> Result<Paired, ClientError> {
        let Backend::Peer(p) = &self.backend else {
            return Err(ClientError::Unsupported(
                "pairing is the store's job in store mode: masq pair join",
            ));
        };
        let paired = pairing::join(&p.store, invite, confirm).await?;
        p.ensure_engine().await?;
        Ok(paired)
    }

    /// Stops syncing and closes the embedded store (peer mode), or closes the
    /// connection (store mode).
    pub async fn close(self) {
        if let Backend::Peer(p) = self.backend {
            p.engine.shutdown().await;
            drop(p.engine);
            p.store.close_async().await;
        }
    }
}

impl PendingPairing {
    /// The `masq:` URI to give the other device.
    pub fn invite(&self) -> String {
        self.inviter.invite().to_uri()
    }
}
