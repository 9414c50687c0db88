//! Hostile input to the store itself: documents nested too deep to walk,
//! however they arrive; data directories other users could read or write;
//! closing many stores at once.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use masq::client::ClientError;
use masq::Durability;
use masq::{ChangeOp, DocId, Store, StoreOptions};
use masq_store::doc::json::MAX_DOC_DEPTH;
use serde_json::json;

use crate::support;

const T: Duration = Duration::from_secs(60);

use crate::support::Daemon;

fn masq(dir: &Path) -> Command {
    support::masq_cli(dir)
}

fn code(e: ClientError) -> String {
    match e {
        ClientError::Api(a) => a.code,
        other => panic!("expected an API error, got {other}"),
    }
}

/// `/a/a/…/a` with `n` segments.
fn path(n: usize) -> String {
    "/a".repeat(n)
}

/// Builds, with the library's raw transaction (as an embedding app, or a
/// modified peer, can), a document `levels` maps deep: `{"a": {"a": …}}`.
fn build_deep(docs: &masq::Docs, levels: usize) -> DocId {
    let id = docs.create().unwrap();
    docs.transact(&id, Some("deep"), |tx| {
        use automerge::transaction::Transactable;
        let mut obj = automerge::ROOT;
        for _ in 0..levels {
            obj = tx.put_object(&obj, "a", automerge::ObjType::Map)?;
        }
        tx.put(&obj, "bottom", true)?;
        Ok(())
    })
    .unwrap();
    id
}

/// Runs `f` on a thread with a 256 KiB stack: an unbounded walk of a
/// 400-level document overflows it (and aborts the test binary, which fails
/// the test); a bounded one does not.
fn on_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// Finding 1, from an app: 20 `doc.change` calls of 20 puts one level deeper
/// each used to build a document 400 levels deep, whose next read aborted
/// the store. Now each change that would reach below level 64 is refused
/// whole with `too_deep`, and the store keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_build_a_document_deeper_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Daemon::start_in(dir, None);
    let token = store.app_token("notes").await;
    let app = store.client("notes", &token).await;
    let id = app.create_doc(&[]).await.unwrap();
    let mut refused = 0;
    let mut accepted_levels = 0;
    for call in 0..20 {
        let ops: Vec<ChangeOp> = (1..=20)
            .map(|j| ChangeOp::Put {
                path: path(call * 20 + j),
                value: json!({}),
            })
            .collect();
        match app.change_doc(&id, &ops, None).await {
            Ok(_) => accepted_levels = call * 20 + 20,
            Err(e) => {
                let c = code(e);
                // Past the limit the path itself is refused, or its parent
                // was never created (the change that would have made it was
                // refused whole).
                assert!(c == "too_deep" || c == "bad_path", "{c}");
                refused += 1;
            }
        }
    }
    assert_eq!(accepted_levels, 60, "three changes fit within 64 levels");
    assert_eq!(refused, 17);
    // The refused change (levels 61..80) left nothing behind: atomic.
    let v = app.read_doc(&id).await.unwrap();
    let mut depth = 0;
    let mut at = &v;
    while let Some(next) = at.get("a") {
        depth += 1;
        at = next;
    }
    assert_eq!(depth, 60);
    // A value nested too deep, and a text too deep, are refused the same way.
    let deep_value = (0..MAX_DOC_DEPTH).fold(json!(1), |v, _| json!([v]));
    let err = app
        .change_doc(
            &id,
            &[ChangeOp::Put {
                path: "/x".into(),
                value: json!({"y": deep_value}),
            }],
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(code(err), "too_deep");
    let err = app
        .change_doc(
            &id,
            &[ChangeOp::PutText {
                path: path(65),
                value: "t".into(),
            }],
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(code(err), "too_deep");
    // So does a KV value.
    let err = app
        .put(
            "b",
            "k",
            &(0..=MAX_DOC_DEPTH).fold(json!(1), |v, _| json!({ "a": v })),
        )
        .await
        .unwrap_err();
    assert_eq!(code(err), "too_deep");
    app.put("b", "k", &json!({"fine": [1, 2]})).await.unwrap();
    assert!(store.alive(), "the store died");
    assert_eq!(
        app.get("b", "k").await.unwrap(),
        Some(json!({"fine": [1, 2]}))
    );
}

/// Finding 1, every walk: a document 400 levels deep (built with the raw
/// transaction API, as a paired device could send it) is answered
/// `too_deep` by every reader, on a thread whose stack an unbounded walk
/// overflows, while other documents stay readable.
#[test]
fn every_walk_of_a_document_deeper_than_the_limit_answers_too_deep() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path(),
        StoreOptions {
            durability: Durability::Buffered,
            ..Default::default()
        },
    )
    .unwrap();
    let docs = store.app("notes").unwrap().docs();
    let mut sub = docs.subscribe(None);
    let deep = build_deep(&docs, 400);
    let fine = build_deep(&docs, 10);
    let exported = docs.export(&deep).unwrap();
    let heads = docs.heads(&deep).unwrap();
    let d2 = docs.clone();
    let deep2 = deep.clone();
    let (get, at, import, fine_get) = on_small_stack(move || {
        let deep = deep2;
        (
            d2.get(&deep).unwrap_err(),
            d2.get_at(&deep, &heads).unwrap_err(),
            d2.import(&exported).unwrap_err(),
            d2.get(&fine).unwrap(),
        )
    });
    for e in [&get, &at, &import] {
        assert_eq!(e.code(), "too_deep", "{e}");
    }
    assert!(get.to_string().contains(deep.as_str()), "{get}");
    assert!(fine_get["a"]["a"].is_object());
    // The subscriber heard of the deep change as a too_deep marker.
    let mut saw_marker = false;
    while let Some(ev) = sub.try_next() {
        if let masq::Event::Doc { doc, patches, .. } = ev {
            if doc == deep {
                saw_marker |= patches.iter().any(|p| p["action"] == "too_deep");
            }
        }
    }
    assert!(saw_marker, "no too_deep patch reached the subscriber");
    // History and export still work: they do not walk the nesting.
    assert!(!docs.history(&deep).unwrap().is_empty());
}

/// Finding 1, spreading: the deep document on store A syncs to store B (real
/// processes, a real relay). Both stores answer `too_deep` for it, keep
/// serving the app's other document, survive a restart, and stay up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_document_from_a_paired_store_leaves_both_stores_up() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (deep, fine) = {
        let store = Store::open_with(
            dir_a.path(),
            StoreOptions {
                durability: Durability::Buffered,
                ..Default::default()
            },
        )
        .unwrap();
        let docs = store.app("notes").unwrap().docs();
        let ids = (build_deep(&docs, 400), build_deep(&docs, 3));
        assert!(store.close());
        ids
    };
    let relay = masq::relay::start(masq::relay::RelayConfig::loopback_any_port())
        .await
        .unwrap();
    let url = relay.url();
    let mut a = Daemon::start_in(dir_a, Some(&url));
    let mut b = Daemon::start_in(dir_b, Some(&url));
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
    let joined = b
        .cli()
        .args(["pair", "join", "--yes", line.trim()])
        .output()
        .unwrap();
    assert!(
        joined.status.success(),
        "{}",
        String::from_utf8_lossy(&joined.stderr)
    );
    assert!(invite.wait().unwrap().success());

    let token_b = b.app_token("notes").await;
    let app_b = b.client("notes", &token_b).await;
    let mut events = app_b.subscribe_docs(None).await.unwrap();
    let started = std::time::Instant::now();
    loop {
        let listed = app_b.list_docs().await.unwrap();
        if listed.contains(&deep.to_string()) && listed.contains(&fine.to_string()) {
            match app_b.read_doc(deep.as_str()).await {
                Err(e) => {
                    assert_eq!(code(e), "too_deep");
                    if app_b.read_doc(fine.as_str()).await.is_ok() {
                        break;
                    }
                }
                Ok(v) => assert!(v.as_object().is_none_or(|m| m.is_empty()), "{v}"),
            }
        }
        assert!(b.alive(), "store B died");
        assert!(started.elapsed() < T, "the documents did not reach B");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The subscriber on B got events, not a dead connection.
    let ev = tokio::time::timeout(T, events.next()).await.unwrap();
    assert!(ev.is_some());
    assert_eq!(
        app_b.read_doc(fine.as_str()).await.unwrap()["a"]["a"]["a"]["bottom"],
        json!(true)
    );
    let app_a = a.client("notes", &a.app_token("notes").await).await;
    assert_eq!(
        code(app_a.read_doc(deep.as_str()).await.unwrap_err()),
        "too_deep"
    );
    assert!(a.alive() && b.alive(), "a store died");
    // Persistent: after a restart B still answers, and stays up.
    drop(app_b);
    let dir_b = b.stop();
    let mut b = Daemon::start_in(dir_b, Some(&url));
    let app_b = b.client("notes", &token_b).await;
    assert_eq!(
        code(app_b.read_doc(deep.as_str()).await.unwrap_err()),
        "too_deep"
    );
    let cli = b
        .cli()
        .args(["doc", "show", "--app", "notes", deep.as_str()])
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&cli.stderr).contains("deeper than 64"));
    assert!(b.alive(), "store B died after its restart");
}

fn modes_under(dir: &Path, out: &mut Vec<(String, u32, bool)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        out.push((e.path().display().to_string(), m.mode() & 0o777, m.is_dir()));
        if m.is_dir() {
            modes_under(&e.path(), out);
        }
    }
}

/// Finding 7: under umask 000 (and 022) the data directory was 0755/0777
/// and the fjall journal 0644/0666, so any local user read the identity
/// secret and every app's data. Now every directory is 0700 and every file
/// 0600, whatever the umask of the CLI or the daemon.
#[test]
fn data_directory_files_are_private_whatever_the_umask() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let sh = |cmd: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("umask 000; exec {cmd}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let bin = env!("CARGO_BIN_EXE_masq");
    let d = dir.display();
    sh(&format!(
        "{bin} --data {d} kv put --app a k '{{\"secret\": 1}}'"
    ));
    sh(&format!(
        "{bin} --data {d} doc create --app a --json '{{\"t\": 1}}'"
    ));
    // A daemon under umask 000 too: it writes its store.json and journal.
    let mut daemon = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {bin} --data {d} store --listen 127.0.0.1:0"
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while masq::internals::daemon_file::read(&dir).is_none() {
        assert!(started.elapsed() < T, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut modes = Vec::new();
    modes_under(&dir, &mut modes);
    let _ = daemon.kill();
    let _ = daemon.wait();
    modes_under(&dir, &mut modes);
    let top = std::fs::metadata(&dir).unwrap().mode() & 0o777;
    assert_eq!(top, 0o700, "data directory mode {top:o}");
    assert!(
        modes
            .iter()
            .any(|(p, ..)| p.ends_with(".jnl") || p.contains("journal")),
        "{modes:?}"
    );
    for (p, mode, is_dir) in &modes {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{p} has mode {mode:o}");
    }
}

/// Finding 7, the other half: a data directory that other users can write
/// is refused with a message that says how to fix it (they could have
/// planted or swapped files); one merely readable by others is tightened.
#[test]
fn a_data_directory_others_can_write_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = masq(&dir)
        .args(["kv", "list", "--app", "a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(
        msg.contains("not private") && msg.contains("chmod"),
        "{msg}"
    );
    let err = Store::open(&dir).unwrap_err();
    assert_eq!(err.code(), "insecure_data_dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
    assert_eq!(Store::open(&dir).unwrap_err().code(), "insecure_data_dir");
    // Readable by others only (mkdir under umask 022): fixed, not refused.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = Store::open(&dir).unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert!(store.close());
}

/// Finding 10: dropping the last handle of a store flushed fjall's
/// memtables in `Drop`, with no bound; in CI two runtime workers sat there
/// forever. Now `Drop` never waits on fjall and `close` is bounded: eight
/// stores with writes in flight are closed or dropped at once, from runtime
/// threads, fifty times, and every round finishes and reopens with all its
/// writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_stores_closed_and_dropped_at_once_always_finish() {
    let dirs: Vec<tempfile::TempDir> = (0..8).map(|_| tempfile::tempdir().unwrap()).collect();
    let all = async {
        for round in 0..50u32 {
            let mut tasks = Vec::new();
            for (i, d) in dirs.iter().enumerate() {
                let path = d.path().to_path_buf();
                tasks.push(tokio::spawn(async move {
                    let store = tokio::task::spawn_blocking(move || {
                        Store::open_with(
                            &path,
                            StoreOptions {
                                durability: Durability::Buffered,
                                ..Default::default()
                            },
                        )
                    })
                    .await
                    .unwrap()
                    .unwrap();
                    let bucket = store.app("a").unwrap().bucket("b").unwrap();
                    let s2 = store.clone();
                    tokio::task::spawn_blocking(move || {
                        for k in 0..20 {
                            bucket.put(&format!("r{round}-{k}"), &json!(k)).unwrap();
                        }
                        let docs = s2.app("a").unwrap().docs();
                        let id = docs.create().unwrap();
                        docs.change(
                            &id,
                            &[ChangeOp::Put {
                                path: "/r".into(),
                                value: json!(round),
                            }],
                            None,
                        )
                        .unwrap();
                    })
                    .await
                    .unwrap();
                    // Half close explicitly, half just drop the last handle on
                    // a runtime thread (a cancelled task does that).
                    if (i + round as usize) % 2 == 0 {
                        store.close_async().await;
                    } else {
                        drop(store);
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(300), all)
        .await
        .expect("closing stores hung");
    for d in &dirs {
        let store = Store::open(d.path()).unwrap();
        let bucket = store.app("a").unwrap().bucket("b").unwrap();
        assert_eq!(bucket.get("r49-19").unwrap(), Some(json!(19)));
        assert_eq!(bucket.get("r0-0").unwrap(), Some(json!(0)));
        assert!(store.close());
    }
}
