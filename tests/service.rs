//! The store service end to end: real `masq store` daemon processes on temp
//! dirs listening on 127.0.0.1:0, a real relay, real WebSocket clients, and the
//! `masq` CLI talking to the daemons.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use masq::api::{ConnState, Request};
use masq::client::{Auth, ClientError, ClientOptions, Connection, Mode};
use masq::internals::daemon_file::{self, DaemonInfo};
use masq::{ChangeOp, Client};
use masq::{Event, Origin};
use serde_json::json;
use support::eventually;

const T: Duration = Duration::from_secs(30);

use support::Daemon;

fn masq(dir: &Path) -> Command {
    support::masq_cli(dir)
}

/// Runs a CLI command against `dir` (which a daemon may be serving); stdout.
fn cli(dir: &Path, args: &[&str]) -> String {
    let out = masq(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "masq {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn start_daemon(relay: Option<&str>) -> Daemon {
    Daemon::start(relay)
}

fn start_daemon_in(dir: tempfile::TempDir, relay: Option<&str>) -> Daemon {
    Daemon::start_in(dir, relay)
}

fn origin_auth(origin: &str, app: &str) -> Auth {
    Auth::Origin {
        origin: origin.into(),
        app: app.into(),
    }
}

/// A raw HTTP request; returns the status line and the body.
fn raw_http(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_origin_waits_for_approval_then_works_and_denied_is_closed() {
    let d = start_daemon(None);
    let mut page = Connection::connect(
        &d.info.ws_url,
        &origin_auth("http://localhost:8080", "notes"),
    )
    .await
    .unwrap();
    assert_eq!(page.state(), (ConnState::Pending, Some("notes".into())));
    let err = page
        .call(
            None,
            Request::KvGet {
                bucket: "default".into(),
                key: "a".into(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "not_approved");
    // The user sees it pending and approves it (CLI talks to the daemon).
    let listed = cli(&d.path(), &["apps", "list"]);
    assert!(
        listed.contains("http://localhost:8080") && listed.contains("pending"),
        "{listed}"
    );
    cli(&d.path(), &["apps", "approve", "http://localhost:8080"]);
    assert_eq!(page.wait_approved().await, ConnState::Ready);
    page.call(
        None,
        Request::KvPut {
            bucket: "default".into(),
            key: "a".into(),
            value: json!(1),
        },
    )
    .await
    .unwrap();
    // Stored in the approved namespace, as seen from the CLI.
    assert_eq!(cli(&d.path(), &["kv", "get", "--app", "notes", "a"]), "1");

    // Another origin is refused: its connection is told and closed.
    let mut evil =
        Connection::connect(&d.info.ws_url, &origin_auth("http://evil.example", "notes"))
            .await
            .unwrap();
    assert_eq!(evil.state().0, ConnState::Pending);
    cli(&d.path(), &["apps", "deny", "http://evil.example"]);
    assert_eq!(evil.wait_approved().await, ConnState::Denied);
    let again = Connection::connect(&d.info.ws_url, &origin_auth("http://evil.example", "notes"))
        .await
        .unwrap();
    assert_eq!(again.state().0, ConnState::Denied);
    assert!(again.call(None, Request::DocList {}).await.is_err());

    // Revoking the approved origin closes its live connection.
    cli(&d.path(), &["apps", "revoke", "http://localhost:8080"]);
    eventually("revoked page is cut off", T, || {
        page.state().0 != ConnState::Ready
    })
    .await;
    assert!(page.call(None, Request::DocList {}).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_and_credentials_are_checked_before_the_upgrade() {
    let d = start_daemon(None);
    let addr = d
        .info
        .ws_url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_string();
    let upgrade = |host: &str, extra: &str| {
        format!(
            "GET /ws?app=x HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    };
    // DNS rebinding: a page on evil.example resolving to 127.0.0.1.
    let r = raw_http(
        &addr,
        &upgrade("evil.example:7070", "Origin: http://evil.example:7070\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("bad Host header"), "{r}");
    let r = raw_http(&addr, "GET / HTTP/1.1\r\nHost: rebind.example\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // No token, no origin.
    let r = raw_http(&addr, &upgrade(&addr, ""));
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    // A wrong token.
    let r = raw_http(&addr, &upgrade(&addr, "Authorization: Bearer 00ff\r\n"));
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    // The admin token from a foreign web page.
    let r = raw_http(
        &addr,
        &upgrade(
            &addr,
            &format!(
                "Authorization: Bearer {}\r\nOrigin: http://evil.example\r\n",
                d.info.admin_token
            ),
        ),
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // Garbage instead of HTTP: the connection is dropped, the store keeps serving.
    let _ = raw_http(&addr, "\x00\x01garbage\r\n\r\n");
    let r = raw_http(
        &addr,
        &format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");

    // An app without a token is told to register rather than silently
    // starting a separate peer-mode store beside a running one.
    let mut o = ClientOptions::new("todo");
    o.store_url = Some(d.info.ws_url.clone());
    o.token = None;
    match Client::connect_with(o).await {
        Err(ClientError::Refused {
            status: 401,
            message,
        }) => {
            assert!(message.contains("masq apps add todo"), "{message}")
        }
        Err(e) => panic!("expected refusal, got {e}"),
        Ok(_) => panic!("expected refusal, got a client"),
    }
    // Client errors are clear.
    let mut o = ClientOptions::new("todo");
    o.store_url = Some(d.info.ws_url.clone());
    o.token = Some("not-a-token".into());
    match Client::connect_with(o).await {
        Err(ClientError::Refused {
            status: 401,
            message,
        }) => assert!(message.contains("unknown token")),
        Err(e) => panic!("expected refusal, got {e}"),
        Ok(_) => panic!("expected refusal, got a client"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_tokens_isolate_apps_and_bad_requests_get_coded_errors() {
    let d = start_daemon(None);
    let (ta, tb) = (d.app_token("todo").await, d.app_token("notes").await);
    let a = d.client("todo", &ta).await;
    let b = d.client("notes", &tb).await;
    assert_eq!(a.mode(), Mode::Store);
    a.put("items", "milk", &json!({"qty": 2})).await.unwrap();
    assert_eq!(
        a.get("items", "milk").await.unwrap(),
        Some(json!({"qty": 2}))
    );
    // notes cannot see todo's data.
    assert_eq!(b.get("items", "milk").await.unwrap(), None);
    assert!(b.list("items", "").await.unwrap().is_empty());
    // An app cannot use admin operations.
    match a.request(Request::AppsList {}).await {
        Err(ClientError::Api(e)) => assert_eq!(e.code, "forbidden"),
        other => panic!("{other:?}"),
    }
    // Bad input over a raw connection: each gets a code, the connection stays usable.
    let raw = Connection::connect(&d.info.ws_url, &Auth::Token(ta.clone()))
        .await
        .unwrap();
    let err = raw
        .call(
            None,
            Request::DocGet {
                doc: "not-an-id".into(),
                at: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "bad_doc_id");
    let err = raw
        .call(
            None,
            Request::KvPut {
                bucket: "bad bucket!".into(),
                key: "k".into(),
                value: json!(1),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_name");
    let big = "x".repeat(masq_store::kv::MAX_VALUE_BYTES + 10);
    let err = raw
        .call(
            None,
            Request::KvPut {
                bucket: "b".into(),
                key: "k".into(),
                value: json!(big),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "too_large");
    let doc = a
        .create_doc(&[ChangeOp::Put {
            path: "/n".into(),
            value: json!(1),
        }])
        .await
        .unwrap();
    let err = raw
        .call(
            None,
            Request::DocChange {
                doc: doc.clone(),
                ops: vec![ChangeOp::Increment {
                    path: "/n".into(),
                    by: 1,
                }],
                message: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "wrong_type");

    // Malformed frames and unknown ops, over a plain WebSocket.
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = d.info.ws_url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {ta}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let first = loop {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = ws.next().await.unwrap().unwrap()
        {
            break serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap();
        }
    };
    assert_eq!(first["state"], "ready");
    for (frame, id, code) in [
        ("{not json", 0, "bad_json"),
        (r#"{"op":"kv.get","key":"a"}"#, 0, "bad_request"),
        (r#"{"id":5,"op":"kv.explode"}"#, 5, "unknown_op"),
        (r#"{"id":6,"op":"kv.get","key":42}"#, 6, "bad_request"),
        (
            r#"{"id":7,"op":"kv.get","key":"milk","bucket":"items"}"#,
            7,
            "",
        ),
    ] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(frame))
            .await
            .unwrap();
        let v = loop {
            if let tokio_tungstenite::tungstenite::Message::Text(t) =
                ws.next().await.unwrap().unwrap()
            {
                break serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap();
            }
        };
        assert_eq!(v["id"], id, "{frame} -> {v}");
        if code.is_empty() {
            assert_eq!(v["ok"], json!({"qty": 2}), "{v}");
        } else {
            assert_eq!(v["error"]["code"], code, "{frame} -> {v}");
        }
    }
    // Pipelining: many requests in flight on one connection, answered in order.
    for i in 0..500u64 {
        let f = json!({"id": 1000 + i, "op": "kv.put", "bucket": "p", "key": "k", "value": i});
        ws.send(tokio_tungstenite::tungstenite::Message::text(f.to_string()))
            .await
            .unwrap();
    }
    let mut last = 0;
    while last < 1499 {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = ws.next().await.unwrap().unwrap()
        {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            let id = v["id"].as_u64().unwrap();
            assert!(id > last, "answers in order");
            last = id;
        }
    }
    assert_eq!(
        a.get("p", "k").await.unwrap(),
        Some(json!(499)),
        "last write wins in send order"
    );
    // An oversize frame closes that connection only.
    let huge = "y".repeat(masq::api::MAX_MESSAGE_BYTES + 1);
    let _ = ws
        .send(tokio_tungstenite::tungstenite::Message::text(huge))
        .await;
    let closed = tokio::time::timeout(T, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => break None,
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                    break f.map(|f| u16::from(f.code))
                }
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(closed, None | Some(1009)), "{closed:?}");
    assert_eq!(
        a.get("items", "milk").await.unwrap(),
        Some(json!({"qty": 2}))
    );
    // Revoking the native app cuts its connections; its token stops working.
    cli(&d.path(), &["apps", "revoke", "todo"]);
    eventually("revoked app is refused", T, || {
        futures::executor::block_on(a.get("items", "milk")).is_err()
    })
    .await;
    let mut o = ClientOptions::new("todo");
    o.store_url = Some(d.info.ws_url.clone());
    o.token = Some(ta);
    assert!(matches!(
        Client::connect_with(o).await,
        Err(ClientError::Refused { status: 401, .. })
    ));
    assert_eq!(
        b.get("items", "milk").await.unwrap(),
        None,
        "other apps unaffected"
    );
}

async fn next_kv(events: &mut masq::client::Events) -> Event {
    loop {
        let ev = tokio::time::timeout(T, events.next())
            .await
            .unwrap()
            .unwrap();
        if matches!(ev, Event::Kv { .. }) {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_local_and_remote_writes_between_two_daemons() {
    let relay = masq::relay::start(masq::relay::RelayConfig::loopback_any_port())
        .await
        .unwrap();
    let url = relay.url();
    let a = start_daemon(Some(&url));
    let b = start_daemon(Some(&url));
    // Pair the two running daemons through their CLIs.
    let mut invite = masq(&a.path())
        .args(["pair", "invite", "--yes"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(invite.stdout.take().unwrap());
        r.read_line(&mut line).unwrap();
    }
    cli(&b.path(), &["pair", "join", "--yes", line.trim()]);
    assert!(invite.wait().unwrap().success());

    let token = a.app_token("todo").await;
    let app = a.client("todo", &token).await;
    let mut watch = app.watch("items", "").await.unwrap();
    app.put("items", "local", &json!(1)).await.unwrap();
    match next_kv(&mut watch).await {
        Event::Kv {
            key, origin, value, ..
        } => {
            assert_eq!(
                (key.as_str(), origin, value),
                ("local", Origin::Local, Some(json!(1)))
            )
        }
        _ => unreachable!(),
    }
    cli(
        &b.path(),
        &[
            "kv", "put", "--app", "todo", "--bucket", "items", "remote", "2",
        ],
    );
    match next_kv(&mut watch).await {
        Event::Kv {
            key, origin, value, ..
        } => {
            assert_eq!(key, "remote");
            assert_eq!(value, Some(json!(2)));
            assert!(matches!(origin, Origin::Remote(_)), "{origin:?}");
        }
        _ => unreachable!(),
    }
    // And the other way: b sees a's write.
    eventually("b has a's key", T, || {
        let out = masq(&b.path())
            .args(["kv", "get", "--app", "todo", "--bucket", "items", "local"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    })
    .await;
    let status: serde_json::Value = serde_json::from_str(&cli(&a.path(), &["status"])).unwrap();
    assert_eq!(status["daemon"], true);
    assert_eq!(status["peers"].as_array().unwrap().len(), 1);
}

fn peer_options(app: &str, dir: &Path) -> ClientOptions {
    let mut o = ClientOptions::new(app);
    // Nothing listens here: the client must fall back to peer mode.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    o.store_url = Some(format!("ws://{}/ws", closed.local_addr().unwrap()));
    drop(closed);
    o.token = Some("unused".into());
    o.peer_dir = Some(dir.to_path_buf());
    o.resync_interval = Duration::from_millis(500);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_falls_back_to_peer_mode_and_two_peer_apps_sync_directly() {
    let relay = masq::relay::start(masq::relay::RelayConfig::loopback_any_port())
        .await
        .unwrap();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Client::connect_with(peer_options("notes", da.path()))
        .await
        .unwrap();
    let b = Client::connect_with(peer_options("notes", db.path()))
        .await
        .unwrap();
    assert_eq!((a.mode(), b.mode()), (Mode::Peer, Mode::Peer));
    // Works offline, before any pairing.
    let doc = a
        .create_doc(&[ChangeOp::PutText {
            path: "/title".into(),
            value: "hello".into(),
        }])
        .await
        .unwrap();
    a.put("items", "k", &json!("v")).await.unwrap();
    // Pair app-to-app (scenario 3).
    let pending = a.pair_invite(&relay.url()).await.unwrap();
    let uri = pending.invite();
    let (yes_a, yes_b) = masq::internals::two_users_comparing_codes();
    let (pa, pb) = tokio::join!(a.pair_wait(pending, yes_a), b.pair_join(&uri, yes_b));
    assert_eq!(pa.unwrap().safety_code, pb.unwrap().safety_code);
    let mut sub = b.subscribe_docs(None).await.unwrap();
    eventually("b has a's document and key", T, || {
        futures::executor::block_on(async {
            b.read_doc(&doc)
                .await
                .map(|v| v["title"] == "hello")
                .unwrap_or(false)
                && b.get("items", "k").await.unwrap() == Some(json!("v"))
        })
    })
    .await;
    b.change_doc(
        &doc,
        &[ChangeOp::Put {
            path: "/by".into(),
            value: json!("b"),
        }],
        Some("b edits"),
    )
    .await
    .unwrap();
    eventually("a sees b's edit", T, || {
        futures::executor::block_on(a.read_doc(&doc))
            .map(|v| v["by"] == "b")
            .unwrap_or(false)
    })
    .await;
    // b's subscription saw the remote document arrive.
    let ev = tokio::time::timeout(T, sub.next()).await.unwrap().unwrap();
    assert!(matches!(ev, Event::Doc { .. }), "{ev:?}");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_and_a_peer_mode_app_sync() {
    let relay = masq::relay::start(masq::relay::RelayConfig::loopback_any_port())
        .await
        .unwrap();
    let store = start_daemon(Some(&relay.url()));
    let dir = tempfile::tempdir().unwrap();
    let app = Client::connect_with(peer_options("todo", dir.path()))
        .await
        .unwrap();
    assert_eq!(app.mode(), Mode::Peer);
    // The daemon invites (admin API through the CLI); the peer-mode app joins.
    let admin = store.admin().await;
    let (invite_tx, invite_rx) = tokio::sync::oneshot::channel::<String>();
    let mut invite_tx = Some(invite_tx);
    let (daemon_shows, daemon_seen) = tokio::sync::oneshot::channel::<String>();
    let (app_shows, app_seen) = tokio::sync::oneshot::channel::<String>();
    let inviter = admin.pair(
        Request::PairInvite {
            relay: None,
            yes: false,
        },
        |answer| {
            if let Some(tx) = invite_tx.take() {
                let _ = tx.send(answer["invite"].as_str().unwrap().to_string());
            }
        },
        move |check: serde_json::Value| async move {
            let code = check["code"].as_str().unwrap().to_string();
            let _ = daemon_shows.send(code.clone());
            app_seen.await.is_ok_and(|c| c == code)
        },
    );
    let joiner = async {
        let uri = invite_rx.await.unwrap();
        app.pair_join(
            &uri,
            Box::new(move |check: masq::internals::pairing::CodeCheck| {
                Box::pin(async move {
                    let _ = app_shows.send(check.code.clone());
                    daemon_seen.await.is_ok_and(|c| c == check.code)
                })
            }),
        )
        .await
    };
    let (inviter_side, joined) = tokio::time::timeout(T, async { tokio::join!(inviter, joiner) })
        .await
        .unwrap();
    let (inviter_side, joined) = (inviter_side.unwrap(), joined.unwrap());
    assert_eq!(inviter_side["safety_code"], joined.safety_code.as_str());

    app.put("items", "from-app", &json!(1)).await.unwrap();
    cli(
        &store.path(),
        &[
            "kv",
            "put",
            "--app",
            "todo",
            "--bucket",
            "items",
            "from-store",
            "2",
        ],
    );
    eventually("both sides have both keys", T, || {
        let out = masq(&store.path())
            .args([
                "kv", "get", "--app", "todo", "--bucket", "items", "from-app",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "1"
            && futures::executor::block_on(app.get("items", "from-store")).unwrap()
                == Some(json!(2))
    })
    .await;
    app.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_uses_the_directory_when_no_daemon_answers() {
    let dir = tempfile::tempdir().unwrap();
    // A stale store.json from a killed daemon must not get in the way.
    daemon_file::write(
        dir.path(),
        &DaemonInfo {
            ws_url: "ws://127.0.0.1:9/ws".into(),
            http_url: "http://127.0.0.1:9".into(),
            pid: 1,
            admin_token: "00".into(),
        },
    )
    .unwrap();
    cli(dir.path(), &["kv", "put", "--app", "x", "k", "v"]);
    assert_eq!(cli(dir.path(), &["kv", "get", "--app", "x", "k"]), "\"v\"");
    let token = cli(dir.path(), &["apps", "add", "x"]);
    assert_eq!(token.len(), 64);
    // The daemon started later on the same directory accepts that token.
    let d = start_daemon_in(dir, None);
    let c = d.client("x", &token).await;
    assert_eq!(c.get("default", "k").await.unwrap(), Some(json!("v")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_page_client_module_and_app_data_are_served() {
    let d = start_daemon(None);
    let addr = d.info.http_url.trim_start_matches("http://").to_string();
    let get = |path: &str| {
        raw_http(
            &addr,
            &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        )
    };

    // The manager page: HTML that no other site may frame or script.
    let page = get("/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("content-type: text/html"), "{page}");
    assert!(page.contains("frame-ancestors 'none'") && page.contains("x-frame-options: DENY"));
    assert!(
        page.contains("id=\"pair-invite\""),
        "the page is the manager"
    );
    assert!(
        !page.contains(&d.info.admin_token),
        "the page itself carries no token"
    );
    assert!(get("/manager.js").contains("masq-client.js"));
    // The client module: loadable by any origin (access is decided at connect).
    let js = get("/masq-client.js");
    assert!(js.contains("access-control-allow-origin: *"), "{js}");
    assert!(js.contains("text/javascript") && js.contains("export async function connect"));
    assert!(get("/masq-client.d.ts").contains("export function connect"));
    assert!(
        get("/store.json").starts_with("HTTP/1.1 404"),
        "no file from the data dir"
    );

    // `masq manager` prints a link with a single-use login code, never the
    // admin token itself (issue 16: the token stayed in browser history).
    let link = cli(&d.path(), &["manager"]);
    assert!(
        link.starts_with(&format!("{}/#code=login-", d.info.http_url)),
        "{link}"
    );
    assert!(!link.contains(&d.info.admin_token), "{link}");

    // apps.data: documents, buckets with key counts, per-device sync state.
    let admin = d.admin().await;
    for k in ["a", "b", "c"] {
        admin
            .call(
                Some("notes"),
                Request::KvPut {
                    bucket: "prefs".into(),
                    key: k.into(),
                    value: serde_json::json!(1),
                },
            )
            .await
            .unwrap();
    }
    let doc = admin
        .call(
            Some("notes"),
            Request::DocCreate {
                ops: vec![],
                message: None,
            },
        )
        .await
        .unwrap()["doc"]
        .as_str()
        .unwrap()
        .to_string();
    let data = admin
        .call(
            None,
            Request::AppsData {
                name: "notes".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(data["docs"][0]["doc"], doc, "{data}");
    assert_eq!(
        data["buckets"],
        serde_json::json!([{"bucket": "prefs", "keys": 3, "more": false}])
    );
    assert_eq!(data["devices"], serde_json::json!([]));
    let apps = admin.call(None, Request::AppsList {}).await.unwrap();
    assert_eq!(apps["namespaces"], serde_json::json!(["notes"]), "{apps}");
    let cli_data: serde_json::Value =
        serde_json::from_str(&cli(&d.path(), &["apps", "data", "notes"])).unwrap();
    assert_eq!(cli_data, data, "the CLI prints the same answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_app_is_capped_and_slowed_while_other_apps_are_served() {
    const RATE: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let (child, info) = support::spawn_store_daemon_with(
        dir.path(),
        Some("buffered"),
        None,
        &["--app-rate", &RATE.to_string()],
    );
    let d = Daemon { child, dir, info };
    let flood_token = d.app_token("flood").await;
    let polite_token = d.app_token("polite").await;
    let addr = d.info.http_url.trim_start_matches("http://").to_string();

    // At most MAX_CONNECTIONS_PER_APP connections per app; others still get in.
    let max = masq::internals::app_limits::MAX_CONNECTIONS_PER_APP;
    let mut floods = Vec::new();
    for _ in 0..max {
        floods.push(
            Connection::connect(&d.info.ws_url, &Auth::Token(flood_token.clone()))
                .await
                .unwrap(),
        );
    }
    let r = raw_http(
        &addr,
        &format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {flood_token}\r\n\r\n"
        ),
    );
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains("too many connections for app flood"), "{r}");
    let polite = d.client("polite", &polite_token).await;
    floods.truncate(2);

    // The flood: 5 x RATE pipelined requests over two connections (one budget).
    let flood = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let calls = (0..5 * RATE).map(|i| {
            floods[(i % 2) as usize].call(
                None,
                Request::KvGet {
                    bucket: "b".into(),
                    key: format!("k{i}"),
                },
            )
        });
        let answers = futures::future::join_all(calls).await;
        assert!(answers
            .iter()
            .all(|a| matches!(a, Err(e) if e.code == "not_found")));
        started.elapsed()
    });
    // Meanwhile the polite app is served in full, from its own budget.
    for i in 0..50 {
        polite
            .put("b", &format!("k{i}"), &serde_json::json!(i))
            .await
            .unwrap();
    }
    assert_eq!(
        polite.get("b", "k49").await.unwrap(),
        Some(serde_json::json!(49))
    );
    assert!(
        !flood.is_finished(),
        "the polite app finished while the flood was still being paced"
    );
    // Lower bound only (a slow machine makes it longer, never shorter): the
    // burst covers RATE requests, the other 4 x RATE come at RATE per second.
    let took = flood.await.unwrap();
    assert!(
        took >= Duration::from_millis(3_500),
        "5 x {RATE} requests at {RATE}/s took only {took:?}: not throttled"
    );
}
