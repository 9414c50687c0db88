//! `masq demo`: the whole system in one process, no set-up. Starts a relay on
//! 127.0.0.1, two stores on temporary directories, pairs them through the
//! relay, writes KV entries and concurrent edits of one document on both, and
//! shows them converge, with timings.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::doc::ChangeOp;
use crate::error::{Error, Result};
use crate::relay::{start as start_relay, RelayConfig};
use crate::store::{Store, StoreOptions};
use crate::sync::pairing::{join, CodeCheck, Confirm, Inviter};
use crate::sync::peers;
use crate::sync::SyncEngine;

/// How long the demo waits for convergence before giving up.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

fn step(t0: Instant, msg: &str) {
    println!("[{:>7.1} ms] {msg}", t0.elapsed().as_secs_f64() * 1000.0);
}

/// Polls `f` until it returns true or the timeout passes.
pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::task::block_in_place(&mut f) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Runs the demo, printing what happens.
pub async fn run() -> Result<()> {
    let t0 = Instant::now();
    let relay = start_relay(RelayConfig {
        listen: "127.0.0.1:0"
            .parse()
            .map_err(|_| Error::BadOp("addr".into()))?,
        ..RelayConfig::default()
    })
    .await?;
    let url = format!("ws://{}", relay.local_addr());
    step(
        t0,
        &format!("relay listening on {url} (it forwards sealed envelopes only)"),
    );

    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    let a = Store::open_with(dir_a.path(), StoreOptions::default())?;
    let b = Store::open_with(dir_b.path(), StoreOptions::default())?;
    peers::set_device_name(a.db(), "laptop")?;
    peers::set_device_name(b.db(), "phone")?;
    step(
        t0,
        &format!("store A (laptop) at {}", dir_a.path().display()),
    );
    step(
        t0,
        &format!("store B (phone)  at {}", dir_b.path().display()),
    );

    let inviter = Inviter::start(a.clone(), &url).await?;
    let uri = inviter.invite().to_uri();
    step(t0, &format!("A invites: {}…", &uri[..uri.len().min(60)]));
    // Each "user" looks at the other screen and says yes only if the codes
    // are the same: nothing is stored before both did.
    let (confirm_a, confirm_b) = two_users_comparing_codes();
    let (paired_a, paired_b) = tokio::join!(inviter.wait(confirm_a), join(&b, &uri, confirm_b));
    let (paired_a, paired_b) = (paired_a?, paired_b?);
    step(
        t0,
        &format!(
            "paired: A sees {} ({}), B sees {} ({})",
            paired_a.name, paired_a.fingerprint, paired_b.name, paired_b.fingerprint
        ),
    );
    step(
        t0,
        &format!(
            "codes: A showed {}, B showed {}; both users compared and said yes",
            paired_a.safety_code, paired_b.safety_code
        ),
    );

    let engine_a = SyncEngine::start(a.clone(), url.clone())?;
    let engine_b = SyncEngine::start(b.clone(), url.clone())?;

    // Writes on both sides, including a concurrent edit of one document and of one key.
    let kv_a = a.app("demo")?.bucket("settings")?;
    let kv_b = b.app("demo")?.bucket("settings")?;
    kv_a.put("theme", &json!("dark"))?;
    kv_b.put("language", &json!("en"))?;
    kv_a.put("volume", &json!(3))?;
    kv_b.put("volume", &json!(7))?;
    let docs_a = a.app("demo")?.docs();
    let docs_b = b.app("demo")?.docs();
    let id = docs_a.create_with(
        &[ChangeOp::PutText {
            path: "/text".into(),
            value: "masq".into(),
        }],
        Some("create"),
    )?;
    step(
        t0,
        &format!("A wrote theme, volume=3 and doc {id} = \"masq\"; B wrote language, volume=7"),
    );

    let t_sync = Instant::now();
    // Its content, not only its id: the catalog that names a document can
    // arrive before the document's own changes (a separate sync message).
    let ok = wait_until(CONVERGE_TIMEOUT, || {
        docs_b
            .get(&id)
            .is_ok_and(|v| v["text"].as_str() == Some("masq"))
    })
    .await;
    if !ok {
        return Err(Error::BadOp("document did not reach B".into()));
    }
    step(
        t0,
        &format!(
            "doc reached B after {:.1} ms",
            t_sync.elapsed().as_secs_f64() * 1000.0
        ),
    );
    docs_a.change(
        &id,
        &[ChangeOp::Splice {
            path: "/text".into(),
            index: 0,
            delete: 0,
            insert: "hello ".into(),
        }],
        Some("A edits"),
    )?;
    docs_b.change(
        &id,
        &[ChangeOp::Splice {
            path: "/text".into(),
            index: 4,
            delete: 0,
            insert: ", synced".into(),
        }],
        Some("B edits"),
    )?;
    step(t0, "A and B edit the same text concurrently");
    let t_conv = Instant::now();
    let converged = wait_until(CONVERGE_TIMEOUT, || {
        let same_doc = match (docs_a.heads(&id), docs_b.heads(&id)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        };
        let same_kv = ["theme", "language", "volume"]
            .iter()
            .all(|k| matches!((kv_a.get(k), kv_b.get(k)), (Ok(Some(x)), Ok(Some(y))) if x == y));
        same_doc && same_kv
    })
    .await;
    if !converged {
        return Err(Error::BadOp("stores did not converge".into()));
    }
    step(
        t0,
        &format!(
            "converged after {:.1} ms",
            t_conv.elapsed().as_secs_f64() * 1000.0
        ),
    );
    println!();
    println!("  A doc: {}", docs_a.get(&id)?);
    println!("  B doc: {}", docs_b.get(&id)?);
    println!(
        "  A settings: {}",
        json!(kv_a
            .list(&Default::default())?
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>())
    );
    println!(
        "  B settings: {}",
        json!(kv_b
            .list(&Default::default())?
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>())
    );
    println!(
        "  volume conflict kept on both: {}",
        json!(kv_a.conflicts("volume")?)
    );
    let sa = engine_a.status();
    let sb = engine_b.status();
    println!(
        "  wire: A sent {} envelopes / {} bytes, B sent {} envelopes / {} bytes — all sealed end to end",
        sa.envelopes_sent, sa.bytes_sent, sb.envelopes_sent, sb.bytes_sent
    );
    engine_a.shutdown().await;
    engine_b.shutdown().await;
    relay.shutdown().await;
    step(t0, "done");
    Ok(())
}

/// Two [`Confirm`]s, one per device, that behave like two users side by
/// side: each tells the other what its screen shows and says yes only when
/// both screens show the same code.
pub fn two_users_comparing_codes() -> (Confirm, Confirm) {
    let (a_shows, a_seen) = tokio::sync::oneshot::channel::<String>();
    let (b_shows, b_seen) = tokio::sync::oneshot::channel::<String>();
    let user = |shows: tokio::sync::oneshot::Sender<String>,
                other: tokio::sync::oneshot::Receiver<String>|
     -> Confirm {
        Box::new(move |check: CodeCheck| {
            Box::pin(async move {
                let _ = shows.send(check.code.clone());
                other.await.is_ok_and(|code| code == check.code)
            })
        })
    };
    (user(a_shows, b_seen), user(b_shows, a_seen))
}
