//! A WebSocket connection to a store service speaking the app protocol:
//! numbered requests matched to their answers, subscriptions routed to their
//! streams, permission state kept current. Used by [`Client`](super::Client)
//! in store mode and by the CLI when a store daemon runs.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use serde_json::Value as Json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::ClientError;
use crate::api::{ApiError, ConnState, Envelope, Request, Response};
use crate::store::Event;

/// Events buffered per subscription on the client before the connection
/// stops reading (the store then buffers, and finally reports `lagged`).
pub const CLIENT_EVENT_BUFFER: usize = 1024;

/// How a connection proves who it is.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A native app's token, or the admin token.
    Token(String),
    /// What a browser page sends: its Origin and the app name it asks for.
    Origin {
        /// `scheme://host[:port]`.
        origin: String,
        /// The namespace asked for.
        app: String,
    },
}

type Answer = Result<Json, ApiError>;

#[derive(Default)]
struct Routes {
    /// Answers awaited, by request id.
    answers: HashMap<u64, oneshot::Sender<Answer>>,
    /// Subscribe requests in flight: their event channel, by request id.
    opening: HashMap<u64, mpsc::Sender<Event>>,
    /// Live subscriptions, by sub id.
    subs: HashMap<u64, mpsc::Sender<Event>>,
    /// Pairings under way (`pair.invite`, `pair.join`): where their
    /// `pair_code` and `paired` messages go, by request id.
    pairings: HashMap<u64, mpsc::Sender<PairNews>>,
    /// The connection ended: new requests fail at once instead of waiting
    /// for an answer that cannot come.
    closed: bool,
}

/// A live connection. Dropping it closes the socket.
pub struct Connection {
    /// To the writer task.
    out: mpsc::Sender<Message>,
    /// Where incoming messages go.
    routes: Arc<Mutex<Routes>>,
    /// Latest permission state sent by the store.
    state: watch::Receiver<Option<(ConnState, Option<String>)>>,
    /// Request ids.
    next_id: AtomicU64,
    /// Reader and writer; aborted on drop.
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Connection {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock(r: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connection {
    /// Connects to `url` (`ws://127.0.0.1:PORT/ws`) and waits for the store's
    /// first state message.
    pub async fn connect(url: &str, auth: &Auth) -> Result<Self, ClientError> {
        let mut url = url.to_string();
        let mut request_headers: Vec<(&str, String)> = Vec::new();
        match auth {
            Auth::Token(t) => request_headers.push(("authorization", format!("Bearer {t}"))),
            Auth::Origin { origin, app } => {
                request_headers.push(("origin", origin.clone()));
                url.push_str(if url.contains('?') { "&app=" } else { "?app=" });
                url.push_str(app);
            }
        }
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        for (k, v) in request_headers {
            req.headers_mut().insert(
                k,
                HeaderValue::from_str(&v).map_err(|e| ClientError::Connect(e.to_string()))?,
            );
        }
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(crate::api::MAX_MESSAGE_BYTES))
            .max_frame_size(Some(crate::api::MAX_MESSAGE_BYTES));
        let (ws, _) =
            match tokio_tungstenite::connect_async_with_config(req, Some(config), true).await {
                Ok(ok) => ok,
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                    let body = resp
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).trim().to_string())
                        .unwrap_or_default();
                    return Err(ClientError::Refused {
                        status: resp.status().as_u16(),
                        message: body,
                    });
                }
                Err(e) => return Err(ClientError::Connect(e.to_string())),
            };
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::channel::<Message>(256);
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (state_tx, mut state) = watch::channel(None);
        let reader_routes = routes.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                let Ok(resp) = serde_json::from_str::<Response>(t.as_str()) else {
                    continue;
                };
                dispatch(&reader_routes, &state_tx, resp).await;
            }
            // Closed: fail everything still waiting.
            let mut r = lock(&reader_routes);
            r.closed = true;
            for (_, tx) in r.answers.drain() {
                let _ = tx.send(Err(ApiError::new(
                    "disconnected",
                    "the store closed the connection",
                )));
            }
            r.subs.clear();
            r.opening.clear();
            r.pairings.clear();
            drop(r);
            state_tx.send_modify(|s| {
                if s.is_none() {
                    *s = Some((ConnState::Denied, None));
                }
            });
        });
        // The store always speaks first (its permission state).
        let first = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            state.wait_for(|s| s.is_some()).await.is_ok()
        })
        .await;
        if !matches!(first, Ok(true)) {
            return Err(ClientError::Connect("the store did not answer".into()));
        }
        Ok(Self {
            out,
            routes,
            state,
            next_id: AtomicU64::new(1),
            tasks: [reader, writer],
        })
    }

    /// The latest permission state and the namespace the store bound us to.
    pub fn state(&self) -> (ConnState, Option<String>) {
        self.state
            .borrow()
            .clone()
            .unwrap_or((ConnState::Denied, None))
    }

    /// Waits until the state is no longer `pending`; returns it.
    pub async fn wait_approved(&mut self) -> ConnState {
        let _ = self
            .state
            .wait_for(|s| !matches!(s, Some((ConnState::Pending, _))))
            .await;
        self.state().0
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    async fn send_as(
        &self,
        id: u64,
        app: Option<&str>,
        request: Request,
    ) -> Result<oneshot::Receiver<Answer>, ApiError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut r = lock(&self.routes);
            if r.closed {
                return Err(ApiError::new(
                    "disconnected",
                    "the store closed the connection",
                ));
            }
            r.answers.insert(id, tx);
        }
        let env = Envelope {
            id,
            app: app.map(str::to_string),
            request,
        };
        let text =
            serde_json::to_string(&env).map_err(|e| ApiError::new("bad_request", e.to_string()))?;
        self.out
            .send(Message::text(text))
            .await
            .map_err(|_| ApiError::new("disconnected", "connection closed"))?;
        Ok(rx)
    }

    async fn wait(rx: oneshot::Receiver<Answer>) -> Answer {
        rx.await
            .unwrap_or_else(|_| Err(ApiError::new("disconnected", "connection closed")))
    }

    /// Sends a request and waits for its answer. `app` is only read for
    /// admin connections (an app connection is bound to its namespace).
    pub async fn call(&self, app: Option<&str>, request: Request) -> Answer {
        let rx = self.send_as(self.new_id(), app, request).await?;
        Self::wait(rx).await
    }

    /// Sends a watch/subscribe request; events arrive on the returned channel.
    pub async fn subscribe(
        &self,
        app: Option<&str>,
        request: Request,
    ) -> Result<(u64, mpsc::Receiver<Event>), ApiError> {
        let id = self.new_id();
        let (ev_tx, ev_rx) = mpsc::channel(CLIENT_EVENT_BUFFER);
        // The reader moves this to the sub id when the answer arrives, before
        // it reads any event of the subscription.
        lock(&self.routes).opening.insert(id, ev_tx);
        let ok = Self::wait(self.send_as(id, app, request).await?).await?;
        let sub = ok.get("sub").and_then(Json::as_u64).unwrap_or(0);
        Ok((sub, ev_rx))
    }

    /// Runs `pair.invite` or `pair.join` to its end: `on_invite` gets the
    /// invite (`pair.invite`'s answer), `ask` gets the code to compare
    /// (`{"code", "device_id", "fingerprint", "name"}`) and resolves to the
    /// user's answer, which goes back as `pair.confirm`. Resolves to the
    /// paired device, or the error that ended the pairing.
    pub async fn pair<F, Fut>(
        &self,
        request: Request,
        on_invite: impl FnMut(&Json),
        ask: F,
    ) -> Answer
    where
        F: FnOnce(Json) -> Fut,
        Fut: Future<Output = bool>,
    {
        let is_invite = matches!(request, Request::PairInvite { .. });
        let id = self.new_id();
        let (tx, news) = mpsc::channel(PAIR_NEWS_BUFFER);
        lock(&self.routes).pairings.insert(id, tx);
        let r = match self.send_as(id, None, request).await {
            Ok(answer) => {
                drive_pairing(
                    is_invite,
                    Self::wait(answer),
                    news,
                    |yes| self.call(None, Request::PairConfirm { pairing: id, yes }),
                    on_invite,
                    ask,
                )
                .await
            }
            Err(e) => Err(e),
        };
        lock(&self.routes).pairings.remove(&id);
        r
    }
}

/// Room for a pairing's messages (a code, then the end): they come one at
/// a time, each waiting on the user.
const PAIR_NEWS_BUFFER: usize = 4;

/// What a pairing request says besides its answer.
#[derive(Debug)]
pub(crate) enum PairNews {
    /// The code to compare (`pair_code`).
    Code(Json),
    /// `pair.invite`'s end (`paired`): the device, or `{"error"}`.
    Paired(Json),
}

/// The loop of a pairing request, whoever carries it (a connection, or the
/// CLI running admin requests in its own process): the answer (the invite,
/// or a join's end), the code (asked of the user while messages keep
/// coming, so the other side's "no" ends it), the user's answer (sent
/// with `confirm`), and the invite's end.
pub(crate) async fn drive_pairing<F, Fut, C, CFut>(
    is_invite: bool,
    answer: impl Future<Output = Answer>,
    mut news: mpsc::Receiver<PairNews>,
    mut confirm: C,
    mut on_invite: impl FnMut(&Json),
    ask: F,
) -> Answer
where
    F: FnOnce(Json) -> Fut,
    Fut: Future<Output = bool>,
    C: FnMut(bool) -> CFut,
    CFut: Future<Output = Answer>,
{
    let mut answer = Some(Box::pin(answer));
    let mut ask = Some(ask);
    let mut asking: Option<Pin<Box<Fut>>> = None;
    // The request said `yes`: the code is shown, and no answer is sent.
    let mut answered = false;
    loop {
        tokio::select! {
            a = async { answer.as_mut().expect("guarded").await }, if answer.is_some() => {
                answer = None;
                match a {
                    Ok(invite) if is_invite => on_invite(&invite),
                    done => return done,
                }
            }
            yes = async { asking.as_mut().expect("guarded").await }, if asking.is_some() => {
                asking = None;
                if !answered {
                    // A pairing that ended meanwhile (the other side said
                    // no, or left) has no answer to wait for: its own end
                    // follows and says why.
                    if let Err(e) = confirm(yes).await {
                        if e.code != "not_found" {
                            return Err(e);
                        }
                    }
                }
            }
            n = news.recv() => match n {
                Some(PairNews::Code(check)) => {
                    answered = check["answered"] == Json::Bool(true);
                    if let Some(f) = ask.take() {
                        asking = Some(Box::pin(f(check)));
                    }
                }
                Some(PairNews::Paired(p)) => {
                    return match p.get("error") {
                        Some(e) => Err(serde_json::from_value(e.clone())
                            .unwrap_or_else(|_| ApiError::new("pairing_failed", e.to_string()))),
                        None => Ok(p),
                    };
                }
                None => {
                    // The carrier is gone; a pending answer may still say why.
                    return match answer.take() {
                        Some(a) => a.await.and(Err(ApiError::new("disconnected", "connection closed"))),
                        None => Err(ApiError::new("disconnected", "connection closed")),
                    };
                }
            },
        }
    }
}

async fn dispatch(
    routes: &Mutex<Routes>,
    state: &watch::Sender<Option<(ConnState, Option<String>)>>,
    resp: Response,
) {
    match resp {
        Response::Ok { id, ok } => {
            let mut r = lock(routes);
            if let Some(ev) = r.opening.remove(&id) {
                if let Some(sub) = ok.get("sub").and_then(Json::as_u64) {
                    r.subs.insert(sub, ev);
                }
            }
            if let Some(tx) = r.answers.remove(&id) {
                let _ = tx.send(Ok(ok));
            }
        }
        Response::Err { id, error } => {
            let mut r = lock(routes);
            r.opening.remove(&id);
            if let Some(tx) = r.answers.remove(&id) {
                let _ = tx.send(Err(error));
            }
        }
        Response::Event { sub, event } => {
            let tx = lock(routes).subs.get(&sub).cloned();
            if let Some(tx) = tx {
                if tx.send(event).await.is_err() {
                    lock(routes).subs.remove(&sub);
                }
            }
        }
        Response::State { state: s, app } => {
            let _ = state.send(Some((s, app)));
        }
        Response::Paired { id, paired } => {
            let tx = lock(routes).pairings.get(&id).cloned();
            if let Some(tx) = tx {
                let _ = tx.send(PairNews::Paired(paired)).await;
            }
        }
        Response::PairCode { id, pair_code } => {
            let tx = lock(routes).pairings.get(&id).cloned();
            if let Some(tx) = tx {
                let _ = tx.send(PairNews::Code(pair_code)).await;
            }
        }
    }
}
