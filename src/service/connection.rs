//! One connection to the store service: the HTTP head (Host check, plain
//! GETs), authentication at the WebSocket upgrade, then the app protocol.
//!
//! Per WebSocket connection three tasks run: the reader (this function: parses
//! frames, enforces permissions, feeds the worker), the worker (executes
//! requests strictly in the order they arrived, running runs of data requests
//! in one blocking call, and owns the subscriptions), and the writer (drains a
//! bounded queue into the socket). A full queue makes the worker wait, and a
//! full worker queue makes the reader stop reading: memory stays bounded.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

use super::app_limits::{
    AppSlot, PendingRefusal, PendingSlot, MAX_CONNECTIONS_PER_APP, MAX_PENDING_CONNECTIONS,
    MAX_PENDING_PER_ORIGIN,
};
use super::{
    admin, registry, web, Shared, HEAD_TIMEOUT, MAX_ADMIN_CONNECTIONS, MAX_CONNECTIONS,
    MAX_HTTP_HEAD_BYTES, OUTBOUND_QUEUE, PENDING_READ_BUFFER,
};
use crate::api::execute::Outcome;
use crate::api::{
    parse_request, ApiError, ConnState, Request, Response, MAX_MESSAGE_BYTES, MAX_PIPELINED,
    MAX_SUBSCRIPTIONS,
};
use crate::http_head::{read_head, respond, Head, Prefixed};

/// WebSocket close code: the app's access was revoked or refused.
pub const CLOSE_REVOKED: u16 = 4003;

/// Who is on the other end.
#[derive(Debug, Clone, PartialEq)]
enum Role {
    /// The store's owner (admin token): every op, any namespace.
    Admin,
    /// An app bound to its namespace.
    App { name: String, via: Via },
    /// A browser origin waiting for the user's approval.
    Pending { origin: String, app: String },
    /// A refused browser origin.
    Denied { app: String },
}

/// How an app proved who it is (re-checked when the registry changes).
#[derive(Debug, Clone, PartialEq)]
enum Via {
    /// A native app's token.
    Token(String),
    /// An approved browser origin.
    Origin(String),
}

/// Whether the request names this store: exactly one `Host` header whose whole
/// value is a loopback name (`127.0.0.1`, `localhost`, `[::1]`) and `port`
/// (the port may be left out only when it is 80, as browsers do). Anything
/// else may be a DNS-rebinding page (`Host: evil.example`) or a request crafted
/// to slip past a looser parser (two `Host` headers, `127.0.0.1:PORT@evil`,
/// `localhost:PORT,evil`).
pub fn host_is_loopback<'a>(mut hosts: impl Iterator<Item = &'a str>, port: u16) -> bool {
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return false;
    };
    ["127.0.0.1", "localhost", "[::1]"].iter().any(|name| {
        host.eq_ignore_ascii_case(&format!("{name}:{port}"))
            || (port == 80 && host.eq_ignore_ascii_case(name))
    })
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A connection's place in its pool, given back when dropped: approved apps,
/// the admin and pending origins each have their own, so one kind can never
/// take the places of another.
enum Admission {
    /// Counted in [`Shared::admin_connections`].
    Admin {
        /// The admin count.
        _counted: Counted,
    },
    /// Counted in [`Shared::connections`] and in its app's limits.
    App {
        /// The global count.
        _counted: Counted,
        /// The app's count and request budget.
        slot: AppSlot,
    },
    /// Waiting for approval, or being told it was refused.
    Pending {
        /// The origin's and the pool's count.
        _slot: PendingSlot,
    },
}

/// Counts a live connection (approved app or admin) while alive.
struct Counted {
    shared: Arc<Shared>,
    admin: bool,
}

impl Counted {
    fn counter(shared: &Shared, admin: bool) -> &std::sync::atomic::AtomicUsize {
        if admin {
            &shared.admin_connections
        } else {
            &shared.connections
        }
    }

    /// A place, or None when the pool is full.
    fn take(shared: &Arc<Shared>, admin: bool) -> Option<Counted> {
        let max = if admin {
            MAX_ADMIN_CONNECTIONS
        } else {
            MAX_CONNECTIONS
        };
        let counter = Self::counter(shared, admin);
        if counter.fetch_add(1, Ordering::Relaxed) >= max {
            counter.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Counted {
            shared: shared.clone(),
            admin,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        Self::counter(&self.shared, self.admin).fetch_sub(1, Ordering::Relaxed);
    }
}

type Refusal = (&'static str, String);

fn too_many(msg: String) -> Refusal {
    ("503 Service Unavailable", msg)
}

fn admit_admin(shared: &Arc<Shared>) -> Result<Admission, Refusal> {
    Counted::take(shared, true)
        .map(|c| Admission::Admin { _counted: c })
        .ok_or_else(|| {
            too_many(format!(
                "too many admin connections (at most {MAX_ADMIN_CONNECTIONS})"
            ))
        })
}

fn admit_app(shared: &Arc<Shared>, name: &str) -> Result<Admission, Refusal> {
    let counted = Counted::take(shared, false)
        .ok_or_else(|| too_many(format!("too many connections (at most {MAX_CONNECTIONS})")))?;
    let key = format!("app {name}");
    let slot = shared.app_limits.admit(&key).ok_or_else(|| {
        too_many(format!(
            "too many connections for {key} (at most {MAX_CONNECTIONS_PER_APP})"
        ))
    })?;
    Ok(Admission::App {
        _counted: counted,
        slot,
    })
}

fn admit_pending(shared: &Arc<Shared>, origin: &str) -> Result<Admission, Refusal> {
    match shared.app_limits.admit_pending(origin) {
        Ok(slot) => Ok(Admission::Pending { _slot: slot }),
        Err(PendingRefusal::Origin) => Err(too_many(format!(
            "too many connections from {origin} waiting for approval (at most \
             {MAX_PENDING_PER_ORIGIN}): approve or deny it in the store manager"
        ))),
        Err(PendingRefusal::Total) => Err(too_many(format!(
            "too many connections waiting for approval (at most {MAX_PENDING_CONNECTIONS})"
        ))),
    }
}

/// Whether `origin` is absent or one of the store's own pages.
fn own_or_no_origin(origin: Option<&str>, shared: &Shared) -> bool {
    origin.is_none_or(|o| shared.own_origins.iter().any(|own| own == o))
}

/// Decides who a WebSocket upgrade request is and gives it its place, or the
/// HTTP refusal.
fn authenticate(head: &Head, shared: &Arc<Shared>) -> Result<(Role, Admission), Refusal> {
    let db = shared.store.db();
    let internal = |e: crate::error::Error| ("500 Internal Server Error", e.to_string());
    let origin = head.header("origin");
    let token = head
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .or_else(|| head.query("token"));
    if let Some(token) = token {
        let creds = &shared.admin_credentials;
        let admin_like = constant_time_eq(&token, &shared.admin_token)
            || creds.is_session(&token)
            || admin::is_login_code(&token);
        if admin_like {
            if !own_or_no_origin(origin, shared) {
                return Err((
                    "403 Forbidden",
                    format!(
                        "the admin token is not accepted from origin {}",
                        origin.unwrap_or_default()
                    ),
                ));
            }
            if admin::is_login_code(&token) && !creds.redeem_code(&token) {
                return Err((
                    "401 Unauthorized",
                    "this manager link was already used or has expired: open the link \
                     `masq manager` prints now"
                        .into(),
                ));
            }
            return Ok((Role::Admin, admit_admin(shared)?));
        }
        return match registry::native_for_token(db, &token).map_err(internal)? {
            Some(_) if !own_or_no_origin(origin, shared) => Err((
                "403 Forbidden",
                format!(
                    "a native app token is not accepted from a web page (origin {}): \
                     web pages connect with /ws?app=NAME and wait for the user's approval",
                    origin.unwrap_or_default()
                ),
            )),
            Some(name) => {
                let admission = admit_app(shared, &name)?;
                Ok((
                    Role::App {
                        name,
                        via: Via::Token(token),
                    },
                    admission,
                ))
            }
            None => Err(("401 Unauthorized", "unknown token".into())),
        };
    }
    let Some(origin) = origin else {
        return Err((
            "401 Unauthorized",
            "send a token (native apps: `masq apps add NAME`) or connect from a web page".into(),
        ));
    };
    let Some(app) = head.query("app") else {
        return Err(("400 Bad Request", "name your app: /ws?app=NAME".into()));
    };
    registry::validate_origin(origin).map_err(|e| ("400 Bad Request", e.to_string()))?;
    crate::store::validate_name("app", &app).map_err(|e| ("400 Bad Request", e.to_string()))?;
    let known = registry::origin(db, origin).map_err(internal)?;
    match known {
        Some(rec) if rec.state == registry::OriginState::Approved => {
            let admission = admit_app(shared, &rec.app)?;
            Ok((
                Role::App {
                    name: rec.app,
                    via: Via::Origin(origin.to_string()),
                },
                admission,
            ))
        }
        Some(rec) if rec.state == registry::OriginState::Denied => Ok((
            Role::Denied { app: rec.app },
            admit_pending(shared, origin)?,
        )),
        Some(rec) => Ok((
            Role::Pending {
                origin: origin.to_string(),
                app: rec.app,
            },
            admit_pending(shared, origin)?,
        )),
        None => {
            // A place first, then the record: a refused connection writes nothing.
            let admission = admit_pending(shared, origin)?;
            let rec = registry::request(db, origin, &app)
                .map_err(|e| ("400 Bad Request", e.to_string()))?;
            // Lets a manager connection see the new request (only when it is
            // new: re-announcing on every connection would make every open
            // connection re-check the registry each time).
            shared.registry_changed();
            Ok((
                Role::Pending {
                    origin: origin.to_string(),
                    app: rec.app,
                },
                admission,
            ))
        }
    }
}

/// The role after a registry change (None: unchanged).
fn recheck(role: &Role, shared: &Shared) -> Option<Role> {
    let db = shared.store.db();
    match role {
        Role::Admin | Role::Denied { .. } => None,
        Role::App { name, via } => {
            let still = match via {
                Via::Token(t) => {
                    registry::native_for_token(db, t).ok().flatten().as_ref() == Some(name)
                }
                Via::Origin(o) => registry::origin(db, o)
                    .ok()
                    .flatten()
                    .map(|r| r.state == registry::OriginState::Approved && &r.app == name)
                    .unwrap_or(false),
            };
            (!still).then(|| Role::Denied { app: name.clone() })
        }
        Role::Pending { origin, app } => match registry::origin(db, origin).ok().flatten() {
            Some(r) if r.state == registry::OriginState::Approved => Some(Role::App {
                name: r.app,
                via: Via::Origin(origin.clone()),
            }),
            Some(r) if r.state == registry::OriginState::Denied => {
                Some(Role::Denied { app: app.clone() })
            }
            // Still pending, or its record was pushed out of the bounded
            // pending list by newer origins: neither is a refusal by the
            // user, so the connection keeps waiting (and asks again when it
            // reconnects).
            _ => None,
        },
    }
}

/// Largest message a connection waiting for approval may send: the client
/// queues requests until it is approved, so a waiting connection has nothing
/// to say; past this it is closed (1009) before anything is parsed, so a
/// stranger's page cannot make the store parse megabytes per connection.
pub const MAX_PENDING_REQUEST_BYTES: usize = 4 * 1024;
/// Pause before answering each message of a connection waiting for approval
/// (the answer is always `not_approved`), so 64 such connections cannot keep
/// the store's two runtime threads busy.
pub const PENDING_REQUEST_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Serves one TCP connection.
pub(crate) async fn handle(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    closing: broadcast::Receiver<()>,
) {
    let Some(head) = read_head(&mut stream, MAX_HTTP_HEAD_BYTES, HEAD_TIMEOUT).await else {
        return;
    };
    if !host_is_loopback(head.header_values("host"), shared.port) {
        respond(
            &mut stream,
            "403 Forbidden",
            "text/plain",
            "",
            b"bad Host header: the store answers only to one Host header naming \
              localhost, 127.0.0.1 or [::1] and its port\n",
        )
        .await;
        return;
    }
    if !head.is_websocket() || head.path() != "/ws" {
        // Plain GETs of the served files; an upgrade anywhere but /ws is 404 too.
        let asset = match (head.method.as_str(), head.path(), head.is_websocket()) {
            (_, _, true) => None,
            ("GET", "/healthz", _) => Some(web::Asset {
                content_type: "text/plain",
                headers: "",
                body: b"ok\n",
            }),
            ("GET", path, _) => web::asset(path),
            _ => None,
        };
        match asset {
            Some(a) => respond(&mut stream, "200 OK", a.content_type, a.headers, a.body).await,
            None => {
                respond(
                    &mut stream,
                    "404 Not Found",
                    "text/plain",
                    "",
                    b"not found\n",
                )
                .await
            }
        }
        return;
    }
    let auth = {
        let (head, shared) = (head.clone(), shared.clone());
        tokio::task::spawn_blocking(move || authenticate(&head, &shared)).await
    };
    let (role, admission) = match auth {
        Ok(Ok(admitted)) => admitted,
        Ok(Err((status, msg))) => {
            respond(
                &mut stream,
                status,
                "text/plain",
                "",
                format!("{msg}\n").as_bytes(),
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    let mut config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
        .max_write_buffer_size(2 * MAX_MESSAGE_BYTES);
    if matches!(admission, Admission::Pending { .. }) {
        config = config.read_buffer_size(PENDING_READ_BUFFER);
    }
    let ws = match tokio_tungstenite::accept_async_with_config(
        Prefixed::new(head.raw, stream),
        Some(config),
    )
    .await
    {
        Ok(ws) => ws,
        Err(_) => return,
    };
    serve(ws, role, shared, closing, admission).await;
}

fn text(r: &Response) -> Message {
    Message::text(serde_json::to_string(r).unwrap_or_default())
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    }))
}

fn state_msg(role: &Role) -> Message {
    let (state, app) = match role {
        Role::Admin => (ConnState::Ready, None),
        Role::App { name, .. } => (ConnState::Ready, Some(name.clone())),
        Role::Pending { app, .. } => (ConnState::Pending, Some(app.clone())),
        Role::Denied { app } => (ConnState::Denied, Some(app.clone())),
    };
    text(&Response::State { state, app })
}

/// A request on its way to the worker, with the namespace it acts in.
pub(crate) struct Job {
    /// The client's id.
    pub id: u64,
    /// The namespace (data requests).
    pub app: Option<String>,
    /// The request.
    pub request: Request,
}

type Ws = tokio_tungstenite::WebSocketStream<Prefixed<TcpStream>>;

async fn serve(
    ws: Ws,
    mut role: Role,
    shared: Arc<Shared>,
    mut closing: broadcast::Receiver<()>,
    mut admission: Admission,
) {
    let (mut sink, mut stream) = ws.split();
    let (out, mut out_rx) = mpsc::channel::<Message>(OUTBOUND_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let last = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let (jobs, jobs_rx) = mpsc::channel::<Job>(MAX_PIPELINED);
    let worker = AbortOnDrop(tokio::spawn(worker(shared.clone(), jobs_rx, out.clone())));
    // Subscribe before the first state goes out, then check once more: a
    // change made between authentication and here (a revoke) would
    // otherwise count as already seen and be missed.
    let mut registry = shared.registry_version.subscribe();
    registry.mark_changed();
    let _ = out.send(state_msg(&role)).await;
    if matches!(role, Role::Denied { .. }) {
        let _ = out
            .send(close(CLOSE_REVOKED, "this origin was refused by the user"))
            .await;
        drop(jobs);
        drop(worker);
        drop(out);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
        return;
    }
    loop {
        tokio::select! {
            _ = closing.recv() => {
                let _ = out.send(close(1001, "the store is shutting down")).await;
                break;
            }
            changed = registry.changed() => {
                if changed.is_err() { break; }
                let next = {
                    let (r, s) = (role.clone(), shared.clone());
                    tokio::task::spawn_blocking(move || recheck(&r, &s)).await.ok().flatten()
                };
                if let Some(next) = next {
                    if let (Role::Pending { .. }, Role::App { name, .. }) = (&role, &next) {
                        // Approved: from the pending pool to the apps' pool.
                        match admit_app(&shared, name) {
                            Ok(a) => admission = a,
                            Err((_, msg)) => {
                                let _ = out.send(close(1013, &msg)).await;
                                break;
                            }
                        }
                    }
                    role = next;
                    let _ = out.send(state_msg(&role)).await;
                    if let Role::Denied { .. } = role {
                        let _ = out.send(close(CLOSE_REVOKED, "access revoked by the user")).await;
                        break;
                    }
                }
            }
            msg = stream.next() => {
                let msg = match msg {
                    None => break,
                    Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(e))) => {
                        let _ = out.send(close(1009, &format!("message too large: {e}"))).await;
                        break;
                    }
                    Some(Err(_)) => break,
                    Some(Ok(m)) => m,
                };
                match msg {
                    Message::Text(t)
                        if matches!(role, Role::Pending { .. } | Role::Denied { .. })
                            && t.len() > MAX_PENDING_REQUEST_BYTES =>
                    {
                        let _ = out
                            .send(close(1009, "requests wait for approval: nothing this large"))
                            .await;
                        break;
                    }
                    Message::Text(t) => {
                        match &admission {
                            Admission::App { slot, .. } => slot.pace().await,
                            // Everything a waiting connection sends is
                            // answered `not_approved`: at most one a tick.
                            Admission::Pending { .. } => {
                                tokio::time::sleep(PENDING_REQUEST_INTERVAL).await
                            }
                            _ => {}
                        }
                        if let Err((id, error)) = route(t.as_str(), &role, &jobs).await {
                            let _ = out.send(text(&Response::Err { id, error })).await;
                        }
                    }
                    Message::Binary(_) => {
                        let error = ApiError::new("bad_frame", "send JSON text frames");
                        let _ = out.send(text(&Response::Err { id: 0, error })).await;
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        }
    }
    drop(jobs);
    drop(worker);
    shared.pair_answers.connection_closed(&out);
    drop(out);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
}

/// Checks a request against the connection's role and queues it.
async fn route(text: &str, role: &Role, jobs: &mpsc::Sender<Job>) -> Result<(), (u64, ApiError)> {
    let env = parse_request(text)?;
    let id = env.id;
    let app = match role {
        Role::Pending { .. } => {
            return Err((
                id,
                ApiError::new(
                    "not_approved",
                    "waiting for the user to approve this app in the store manager",
                ),
            ))
        }
        Role::Denied { .. } => {
            return Err((id, ApiError::new("denied", "the user refused this app")))
        }
        Role::App { name, .. } => {
            if env.request.is_admin() {
                return Err((
                    id,
                    ApiError::new("forbidden", "admin operations need the admin token"),
                ));
            }
            Some(name.clone())
        }
        Role::Admin => env.app.clone(),
    };
    jobs.send(Job {
        id,
        app,
        request: env.request,
    })
    .await
    .map_err(|_| (id, ApiError::new("closing", "connection is closing")))
}

/// Aborts a task when dropped (subscription forwarders, the worker).
struct AbortOnDrop(JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn is_data(req: &Request) -> bool {
    !req.is_admin() && !matches!(req, Request::Unsubscribe { .. } | Request::SyncStatus {})
}

async fn worker(shared: Arc<Shared>, mut jobs: mpsc::Receiver<Job>, out: mpsc::Sender<Message>) {
    let mut subs: HashMap<u64, AbortOnDrop> = HashMap::new();
    let mut next_sub: u64 = 1;
    let mut batch: Vec<Job> = Vec::new();
    while jobs.recv_many(&mut batch, 256).await > 0 {
        let mut pending = std::mem::take(&mut batch).into_iter().peekable();
        while let Some(job) = pending.next() {
            if !is_data(&job.request) {
                let reply = match job.request {
                    Request::Unsubscribe { sub } => match subs.remove(&sub) {
                        Some(_) => Ok(serde_json::Value::Null),
                        None => Err(ApiError::new("not_found", format!("no subscription {sub}"))),
                    },
                    Request::SyncStatus {} => match job.app.as_deref() {
                        Some(app) => admin::sync_status(&shared, app).await,
                        None => Err(ApiError::new("bad_request", "sync.status names an \"app\"")),
                    },
                    req @ Request::PairJoin { .. } => {
                        // A join waits for both users' answers; this
                        // connection must go on serving (its pair.confirm).
                        let (task_shared, out, id) = (shared.clone(), out.clone(), job.id);
                        shared.spawn(async move {
                            let reply = admin::handle(&task_shared, id, req, &out).await;
                            let _ = out.send(answer(id, reply)).await;
                        });
                        continue;
                    }
                    req => admin::handle(&shared, job.id, req, &out).await,
                };
                let _ = out.send(answer(job.id, reply)).await;
                continue;
            }
            // A run of data requests goes to one blocking call, in order.
            let mut run = vec![job];
            while let Some(j) = pending.next_if(|j| is_data(&j.request)) {
                run.push(j);
            }
            let store = shared.store.clone();
            let ids: Vec<u64> = run.iter().map(|j| j.id).collect();
            let results = tokio::task::spawn_blocking(move || {
                run.into_iter()
                    .map(|j| {
                        let r = match j.app.as_deref() {
                            None => Err(ApiError::new(
                                "bad_request",
                                "admin requests name an \"app\"",
                            )),
                            Some(a) => store
                                .app(a)
                                .map_err(ApiError::from)
                                .and_then(|app| crate::api::execute(&app, j.request)),
                        };
                        (j.id, r)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_else(|e| {
                // A bug panicked inside the store while running these
                // requests: each is still answered, and the connection and
                // the store go on serving.
                tracing::error!("data requests failed inside the store: {e}");
                ids.into_iter()
                    .map(|id| {
                        let e = ApiError::new(
                            "internal",
                            "the store failed while running this request",
                        );
                        (id, Err(e))
                    })
                    .collect()
            });
            for (id, r) in results {
                let reply = match r {
                    Ok(Outcome::Value(v)) => Ok(v),
                    Ok(Outcome::Subscribe(mut sub)) => {
                        if subs.len() >= MAX_SUBSCRIPTIONS {
                            Err(ApiError::new(
                                "too_many_subscriptions",
                                format!("at most {MAX_SUBSCRIPTIONS} per connection"),
                            ))
                        } else {
                            let n = next_sub;
                            next_sub += 1;
                            // The answer goes out before the first event, so a
                            // client knows the sub id before it sees events;
                            // events meanwhile wait in the subscription.
                            let _ = out
                                .send(answer(id, Ok(serde_json::json!({ "sub": n }))))
                                .await;
                            let out = out.clone();
                            subs.insert(
                                n,
                                AbortOnDrop(tokio::spawn(async move {
                                    while let Some(event) = sub.next().await {
                                        if out
                                            .send(text(&Response::Event { sub: n, event }))
                                            .await
                                            .is_err()
                                        {
                                            break;
                                        }
                                    }
                                })),
                            );
                            continue;
                        }
                    }
                    Err(e) => Err(e),
                };
                let _ = out.send(answer(id, reply)).await;
            }
        }
    }
}

fn answer(id: u64, r: Result<serde_json::Value, ApiError>) -> Message {
    text(&match r {
        Ok(ok) => Response::Ok { id, ok },
        Err(error) => Response::Err { id, error },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        let one = |h: &str| host_is_loopback(std::iter::once(h), 7070);
        for ok in [
            "localhost:7070",
            "127.0.0.1:7070",
            "[::1]:7070",
            "LOCALHOST:7070",
        ] {
            assert!(one(ok), "{ok}");
        }
        for bad in [
            "localhost",
            "127.0.0.1:1",
            "evil.com",
            "evil.com:7070",
            "127.0.0.1.evil.com:7070",
            "127.0.0.1:7070@evil.example",
            "localhost:7070,evil.example",
            "localhost:7070 evil.example",
            "[::2]:7070",
            "[::1]:70701",
            "",
            "localhost.evil:7070",
        ] {
            assert!(!one(bad), "{bad}");
        }
        assert!(!host_is_loopback(std::iter::empty(), 7070));
        assert!(!host_is_loopback(
            ["127.0.0.1:7070", "evil.example"].into_iter(),
            7070
        ));
        assert!(!host_is_loopback(
            ["127.0.0.1:7070", "127.0.0.1:7070"].into_iter(),
            7070
        ));
        // Port 80 may be left out, as browsers do.
        assert!(host_is_loopback(std::iter::once("localhost"), 80));
    }
}
