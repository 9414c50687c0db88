//! Attacks on the local store service (issue 16, items 2, 8 and 9), each
//! against a real `masq store` process on 127.0.0.1 with real WebSockets:
//!
//! - unapproved origins opening connections until the store is full: approved
//!   apps and the admin must still get in, and the daemon's memory must come
//!   back once those connections close;
//! - a request naming the store in two `Host` headers, or in a `Host` value
//!   that only starts like a loopback name;
//! - a web page presenting a native app's token;
//! - secrets in argv: the browser opener of `masq manager --open` and the
//!   invite of `masq pair join`.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};

use std::process::{Command, Stdio};
use std::time::Duration;

use masq::api::{ConnState, Request};
use masq::client::{Auth, Connection};
use masq::internals::app_limits::{MAX_PENDING_CONNECTIONS, MAX_PENDING_PER_ORIGIN};

use crate::support::Daemon;

fn origin_auth(origin: &str, app: &str) -> Auth {
    Auth::Origin {
        origin: origin.into(),
        app: app.into(),
    }
}

/// Sends `request` and returns what the store answers up to the end of the
/// response head (and the body, if the store closes after it).
fn raw(addr: &str, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        // A 101 keeps the connection open: the head is all we need.
        if out.starts_with(b"HTTP/1.1 101") && out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn upgrade(host: &str, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Issue 16 item 2: 20 origins x 64 connections filled the store's one
/// connection pool (1 024); approved apps and the admin got 503 and the
/// daemon's RSS grew by ~140 MB and stayed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_origins_cannot_lock_out_apps_or_the_admin_and_their_memory_is_released() {
    let d = Daemon::start(None);
    let token = d.app_token("notes").await;
    // An origin that asked and was approved.
    let asked = Connection::connect(
        &d.info.ws_url,
        &origin_auth("http://approved.example", "web"),
    )
    .await
    .unwrap();
    drop(asked);
    d.admin()
        .await
        .call(
            None,
            Request::AppsApprove {
                origin: "http://approved.example".into(),
                app: None,
            },
        )
        .await
        .unwrap();
    // Warm up every path once before the baseline.
    let app = Connection::connect(&d.info.ws_url, &Auth::Token(token.clone()))
        .await
        .unwrap();
    app.call(
        Some("notes"),
        Request::KvPut {
            bucket: "default".into(),
            key: "k".into(),
            value: serde_json::json!(1),
        },
    )
    .await
    .unwrap();
    drop(app);
    let warm = Connection::connect(&d.info.ws_url, &origin_auth("http://warm.example", "x"))
        .await
        .unwrap();
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = d.rss_kib();

    // The attack: 20 origins, 64 connections each, all held open.
    let mut held = Vec::new();
    let mut refused = 0;
    for o in 0..20 {
        for _ in 0..64 {
            let auth = origin_auth(&format!("http://attacker{o}.example"), "x");
            match Connection::connect(&d.info.ws_url, &auth).await {
                Ok(c) => held.push(c),
                Err(_) => refused += 1,
            }
        }
    }

    // Everyone else still gets in: a native app, an approved origin, the admin.
    let app = Connection::connect(&d.info.ws_url, &Auth::Token(token.clone()))
        .await
        .expect("an approved native app gets in");
    let v = app
        .call(
            Some("notes"),
            Request::KvGet {
                bucket: "default".into(),
                key: "k".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(v, serde_json::json!(1), "{v}");
    let page = Connection::connect(
        &d.info.ws_url,
        &origin_auth("http://approved.example", "web"),
    )
    .await
    .expect("an approved origin gets in");
    assert_eq!(page.state().0, ConnState::Ready);
    let admin2 = Connection::connect(&d.info.ws_url, &Auth::Token(d.info.admin_token.clone()))
        .await
        .expect("the admin gets in");
    admin2.call(None, Request::Status {}).await.unwrap();

    // Memory: bounded while they are held, given back once they close.
    let during = d.rss_kib();
    assert!(
        during < before + 64 * 1024,
        "RSS grew from {before} KiB to {during} KiB with the pending pool full"
    );
    assert!(
        held.len() <= MAX_PENDING_CONNECTIONS,
        "{} pending connections admitted (at most {MAX_PENDING_CONNECTIONS})",
        held.len()
    );
    assert!(held.len() >= MAX_PENDING_PER_ORIGIN, "some were admitted");
    assert_eq!(held.len() + refused, 20 * 64);
    // A refusal says why, distinctly.
    let r = raw(
        &d.addr(),
        &upgrade(&d.addr(), "Origin: http://one-more.example\r\n").replace("/ws ", "/ws?app=x "),
    );
    assert!(r.starts_with("HTTP/1.1 503"), "{r}");
    assert!(r.contains("waiting for approval"), "{r}");

    drop(held);
    // Once the store has seen them close, a fresh origin gets in again.
    let mut again = None;
    for _ in 0..600 {
        if let Ok(c) =
            Connection::connect(&d.info.ws_url, &origin_auth("http://after.example", "x")).await
        {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "the pending pool was never given back");
    drop(again);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = d.rss_kib();
    eprintln!("daemon RSS: {before} KiB before, {during} KiB with the pending pool full, {after} KiB after");
    assert!(
        after < before + 32 * 1024,
        "RSS was {before} KiB before the attack and {after} KiB after it ended"
    );
}

/// Issue 16 item 9: the Host check looked at the first `Host` header only and
/// at what came before the last `:`.
#[test]
fn host_header_must_be_exactly_one_loopback_name_with_the_port() {
    let d = Daemon::start(None);
    let (addr, port) = (d.addr(), d.port());
    let get = |hosts: &str| raw(&addr, &format!("GET /healthz HTTP/1.1\r\n{hosts}\r\n"));
    for ok in [
        format!("Host: 127.0.0.1:{port}\r\n"),
        format!("Host: localhost:{port}\r\n"),
        format!("Host: [::1]:{port}\r\n"),
    ] {
        let r = get(&ok);
        assert!(r.starts_with("HTTP/1.1 200"), "{ok:?}: {r}");
    }
    for bad in [
        format!("Host: 127.0.0.1:{port}\r\nHost: evil.example\r\n"),
        format!("Host: 127.0.0.1:{port}@evil.example\r\n"),
        format!("Host: localhost:{port},evil.example\r\n"),
        format!("Host: localhost:{}\r\n", port.wrapping_add(1)),
        "Host: evil.example\r\n".to_string(),
        String::new(),
    ] {
        let r = get(&bad);
        assert!(r.starts_with("HTTP/1.1 403"), "{bad:?}: {r}");
        assert!(r.contains("bad Host header"), "{bad:?}: {r}");
    }
    // The WebSocket upgrade is checked the same way.
    let r = raw(
        &addr,
        &upgrade(
            &format!("127.0.0.1:{port}\r\nHost: evil.example"),
            &format!("Authorization: Bearer {}\r\n", d.info.admin_token),
        ),
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
}

/// Issue 16 item 9: a native app's token was accepted from any web page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_token_is_refused_from_a_foreign_web_origin() {
    let d = Daemon::start(None);
    let token = d.app_token("notes").await;
    let addr = d.addr();
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let r = raw(
        &addr,
        &upgrade(&addr, &format!("{bearer}Origin: http://evil.example\r\n")),
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(r.contains("native app token"), "{r}");
    // The same token without an Origin (a native app) works.
    let r = raw(&addr, &upgrade(&addr, &bearer));
    assert!(r.starts_with("HTTP/1.1 101"), "{r}");
    // And through the client.
    let c = Connection::connect(&d.info.ws_url, &Auth::Token(token))
        .await
        .unwrap();
    assert_eq!(c.state(), (ConnState::Ready, Some("notes".into())));
}

/// Issue 16 item 8: `masq manager --open` gave the admin token to the opener
/// (visible in `ps`) in a link the page never removed from history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_opener_gets_a_single_use_code_not_the_admin_token() {
    let d = Daemon::start(None);
    let bin = tempfile::tempdir().unwrap();
    let recorded = bin.path().join("argv");
    let opener = bin.path().join("opener");
    std::fs::write(
        &opener,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$0\" \"$@\" > '{}'\n",
            recorded.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&opener, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let out = d
        .cli()
        .args(["manager", "--open"])
        .env("MASQ_BROWSER", &opener)
        .env_remove("BROWSER")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let argv = std::fs::read_to_string(&recorded).expect("the opener ran");
    assert!(
        !argv.contains(&d.info.admin_token),
        "the opener's argv carries the admin token: {argv}"
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(!printed.contains(&d.info.admin_token), "{printed}");
    // Not even the single-use code: the opener gets a private page that
    // forwards to the link (a local user racing `ps` gets nothing).
    assert!(
        !argv.contains("code="),
        "the opener's argv carries the code: {argv}"
    );
    let page_path = argv
        .lines()
        .nth(1)
        .expect("the opener got an argument")
        .trim();
    {
        use std::os::unix::fs::MetadataExt;
        let mode = std::fs::metadata(page_path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{page_path}");
    }
    let page_html = std::fs::read_to_string(page_path).unwrap();
    assert!(!page_html.contains(&d.info.admin_token));
    let code = page_html
        .split("#code=")
        .nth(1)
        .expect("a link with a code")
        .split('"')
        .next()
        .unwrap()
        .trim()
        .to_string();
    // The code lets a page in once (as the admin) ...
    let page = Connection::connect(&d.info.ws_url, &Auth::Token(code.clone()))
        .await
        .expect("the code works once");
    let session = page.call(None, Request::AdminSession {}).await.unwrap()["session"]
        .as_str()
        .unwrap()
        .to_string();
    // ... and is useless afterwards: seen in `ps` or in history, it gives nothing.
    let r = raw(
        &d.addr(),
        &upgrade(&d.addr(), &format!("Authorization: Bearer {code}\r\n")),
    );
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    assert!(r.contains("already used"), "{r}");
    // The session the page traded it for works, but not from a foreign page.
    let again = Connection::connect(&d.info.ws_url, &Auth::Token(session.clone()))
        .await
        .unwrap();
    again.call(None, Request::Status {}).await.unwrap();
    let r = raw(
        &d.addr(),
        &upgrade(
            &d.addr(),
            &format!("Authorization: Bearer {session}\r\nOrigin: http://evil.example\r\n"),
        ),
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
}

/// Issue 16 item 8: `masq pair join URI` put the invite secret in argv and
/// in the shell history; it can now come on stdin or from a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_join_reads_the_invite_from_stdin_or_a_file() {
    let relay = masq::relay::start(masq::relay::RelayConfig::loopback_any_port())
        .await
        .unwrap();
    let url = relay.url();
    let a = Daemon::start(Some(&url));
    let b = Daemon::start(Some(&url));
    let mut invite = a
        .cli()
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
    assert!(line.starts_with("masq:"), "{line}");
    let mut join = b
        .cli()
        .args(["pair", "join", "--yes"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    join.stdin
        .take()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let out = tokio::task::spawn_blocking(move || join.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(invite.wait().unwrap().success());
    // Paired: each store lists the other.
    let listed = |d: &Daemon| {
        let out = d.cli().args(["devices", "list"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(listed(&a).lines().count(), 2, "{}", listed(&a));
    assert_eq!(listed(&b).lines().count(), 2, "{}", listed(&b));

    // Or from a file (`--file`), e.g. one only its owner can read.
    let c = Daemon::start(Some(&url));
    let mut invite = a
        .cli()
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
    let file = c.dir.path().join("invite.txt");
    std::fs::write(&file, format!("\n{line}")).unwrap();
    let path = file.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        c.cli()
            .args(["pair", "join", "--yes", "--file", &path])
            .stdin(Stdio::null())
            .output()
            .map(|o| (o, c))
    })
    .await
    .unwrap()
    .unwrap();
    let (out, c) = out;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(invite.wait().unwrap().success());
    assert_eq!(listed(&c).lines().count(), 3, "{}", listed(&c));
}

/// CPU time (user + system) the process has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// A local flood of TCP connections that exhausts the daemon's file
/// descriptors (`ulimit -n 64`): `accept` then fails with `EMFILE` while the
/// backlog stays full, and the old accept loop retried at once, spinning a
/// core for as long as the flood lasted. Now it pauses
/// (`service::ACCEPT_ERROR_BACKOFF`), and serves again once the flood ends.
#[test]
fn a_descriptor_flood_does_not_spin_the_accept_loop_and_the_store_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_masq");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64; exec {bin} --data {} --durability buffered store --listen 127.0.0.1:0",
            dir.path().display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let info = loop {
        if let Some(i) =
            masq::internals::daemon_file::read(dir.path()).filter(|i| i.pid == child.id())
        {
            break i;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the store did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let addr = info.http_url.trim_start_matches("http://").to_string();
    // 200 connections that send nothing: more than the daemon has descriptors.
    let flood: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(child.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(child.id()) - before;
    // A spinning accept loop burns ~2 s of CPU here (one core, flat out);
    // a paused one next to nothing. The bound is generous for a loaded CI.
    assert!(
        used < 0.6,
        "the daemon used {used:.2} s of CPU in 2 s under the flood"
    );
    drop(flood);
    let started = std::time::Instant::now();
    loop {
        let got = std::net::TcpStream::connect(&addr).ok().map(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(
                format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        });
        if got.is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the store did not serve again after the flood"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.try_wait().unwrap().is_none(), "the store died");
    let _ = child.kill();
    let _ = child.wait();
}

/// Review of item 2: a waiting connection could still send 8 MiB messages,
/// each parsed in full on a runtime thread and answered at once with the
/// unknown op echoed back, so 64 of them from one web page cost hundreds of
/// MB and both cores. Now a waiting connection's messages are answered one
/// per `PENDING_REQUEST_INTERVAL`, a message over
/// `MAX_PENDING_REQUEST_BYTES` closes it (1009) unparsed, and an echoed op is
/// cut to `MAX_ECHOED_OP_CHARS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_connection_cannot_make_the_store_parse_megabytes() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let d = Daemon::start(None);
    let mut req = format!("{}?app=web", d.info.ws_url)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", "http://stranger.example".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("pending"), "{first:?}");
    // A small request: not_approved, with a long unknown op cut short.
    let op = "x".repeat(2000);
    ws.send(Message::text(format!(r#"{{"id":1,"op":"{op}"}}"#)))
        .await
        .unwrap();
    let answer = ws.next().await.unwrap().unwrap();
    let answer = answer.to_text().unwrap();
    assert!(
        answer.contains("not_approved") || answer.contains("unknown_op"),
        "{answer}"
    );
    assert!(
        answer.len() < 600,
        "the answer echoes the request: {} bytes",
        answer.len()
    );
    // A large one closes the connection before it is parsed.
    ws.send(Message::text(format!(
        r#"{{"id":2,"op":"kv.put","key":"k","value":"{}"}}"#,
        "v".repeat(64 * 1024)
    )))
    .await
    .unwrap();
    let mut closed_with = None;
    while let Some(m) = ws.next().await {
        match m {
            Ok(Message::Close(Some(f))) => {
                closed_with = Some(u16::from(f.code));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(closed_with, Some(1009));
    // The store serves the admin as before.
    d.admin()
        .await
        .call(None, Request::Status {})
        .await
        .unwrap();
}
