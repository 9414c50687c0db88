//! masq-web: masq inside a web page (browser peer mode, M11), built for
//! `wasm32-unknown-unknown` with wasm-bindgen.
//!
//! - [`tables`]: the page's records in memory, mirror of its IndexedDB
//!   object stores, and the byte frames a write set travels to the page in.
//! - [`peer_store`]: the app protocol's data requests over those records,
//!   through the core's executor: the same documents, catalog, KV shards and
//!   index as the native store.
//! - [`WebStore`] (this file): what JavaScript calls. The page owns all I/O:
//!   it reads IndexedDB into the store at open ([`WebStore::load`]), sends
//!   requests ([`WebStore::request`]), commits what they wrote in one
//!   IndexedDB transaction ([`WebStore::take_writes`]) and only then answers
//!   them and delivers their events ([`WebStore::take_events`]).
//!
//! Architecture invariant: no I/O and no clock here; the page passes the
//! time with every request. Nothing is acknowledged by this crate: the page
//! answers a write once its transaction completed.
//!
//! - [`sync`]: the page's device: identity, peers, and the sync engine
//!   over the core's sans-I/O state machines; [`relay_conn`]: the opening
//!   of a relay connection; [`pairing`]: pairing through the relay's
//!   rendezvous. The page owns the sockets and timers: it hands frames in
//!   and sends what comes out ([`WebStore::take_frames`]), only after the
//!   writes taken before them are committed.

pub mod pairing;
pub mod peer_store;
pub mod relay_conn;
pub mod sync;
pub mod tables;

use std::collections::BTreeMap;

use masq_core::api::event::Filter;
use masq_core::api::execute::{execute, Outcome};
use masq_core::api::{parse_request, ApiError, Request, Response, MAX_SUBSCRIPTIONS};
use masq_core::device::ops::{self as device_ops, LinkState};
use masq_core::records::Table;
use serde_json::json;
use wasm_bindgen::prelude::*;

use masq_core::layout::meta::NAME;
use masq_core::records::WriteSet;
use peer_store::PeerStore;
use sync::PageSync;
use tables::{encode_writes, table_of, Tables};

/// The page's clock (milliseconds since the epoch) as the core's rules
/// take it.
fn since_epoch(now_ms: f64) -> std::time::Duration {
    std::time::Duration::from_millis(now_ms.max(0.0) as u64)
}

/// Frames as one byte string: each as its length (u32, little endian),
/// then its bytes (what JavaScript splits; no JS types needed here).
fn frames_bytes(frames: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(frames.iter().map(|f| f.len() + 4).sum());
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&f);
    }
    out
}

fn js(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// One app's store in a page, as JavaScript sees it.
#[wasm_bindgen]
pub struct WebStore {
    /// Records read at open, until the first request opens the store.
    loading: Option<Tables>,
    /// The app.
    app: String,
    /// The store, once open.
    store: Option<PeerStore>,
    /// The device's sync engine, open with the store.
    sync: Option<PageSync>,
    /// Live subscriptions by the `sub` number given to the page.
    subs: BTreeMap<u64, Filter>,
    /// The next `sub` number.
    next_sub: u64,
}

#[wasm_bindgen]
impl WebStore {
    /// A store for `app`, empty until the page loads its records.
    #[wasm_bindgen(constructor)]
    pub fn new(app: &str) -> Result<WebStore, JsError> {
        masq_core::names::validate_name("app", app).map_err(|e| JsError::new(&e.to_string()))?;
        Ok(WebStore {
            loading: Some(Tables::new()),
            app: app.to_string(),
            store: None,
            sync: None,
            subs: BTreeMap::new(),
            next_sub: 1,
        })
    }

    /// Loads one record read from IndexedDB (`table`: its number in the
    /// write frames, the order of `tableNames()`). Only before the first request.
    pub fn load(&mut self, table: u8, key: &[u8], value: &[u8]) -> Result<(), JsError> {
        let t = table_of(table).ok_or_else(|| JsError::new("unknown table"))?;
        match self.loading.as_mut() {
            Some(tables) => {
                tables.load(t, key.to_vec(), value.to_vec());
                Ok(())
            }
            None => Err(JsError::new("records load only before the first request")),
        }
    }

    /// Applies a journal entry (write frames committed but maybe not yet
    /// copied into the tables) on top of the loaded records, in journal
    /// order. Only before the first request.
    pub fn replay(&mut self, frames: &[u8]) -> Result<(), JsError> {
        let writes = tables::decode_writes(frames).map_err(|e| JsError::new(&e))?;
        match self.loading.as_mut() {
            Some(tables) => {
                tables.apply(&writes);
                Ok(())
            }
            None => Err(JsError::new(
                "the journal replays only before the first request",
            )),
        }
    }

    fn store(&mut self) -> Result<&PeerStore, ApiError> {
        Ok(self.parts()?.0)
    }

    /// The store and the device's engine, opened on first use.
    fn parts(&mut self) -> Result<(&PeerStore, &mut PageSync), ApiError> {
        self.open(None)?;
        match (self.store.as_ref(), self.sync.as_mut()) {
            (Some(store), Some(sync)) => Ok((store, sync)),
            _ => Err(ApiError::new("storage", "the store did not open")),
        }
    }

    /// Opens the store and the device's engine if not yet open, with the
    /// page's clock when known (the engine's links stamp their handshake
    /// inits from it).
    fn open(&mut self, now_ms: Option<f64>) -> Result<(), ApiError> {
        if self.store.is_none() {
            let tables = self.loading.take().unwrap_or_default();
            let store = PeerStore::open(&self.app, tables)?;
            if let Some(ms) = now_ms {
                store.set_time((ms / 1000.0) as i64);
            }
            self.sync = Some(PageSync::open(&store)?);
            self.store = Some(store);
        }
        Ok(())
    }

    /// Like [`Self::parts`], with the clock set and errors for JavaScript.
    fn parts_at(&mut self, now_ms: f64) -> Result<(&PeerStore, &mut PageSync), JsError> {
        self.open(Some(now_ms)).map_err(js)?;
        let (store, sync) = self.parts().map_err(js)?;
        store.set_time((now_ms / 1000.0) as i64);
        Ok((store, sync))
    }

    /// Answers one request frame of the app protocol (a JSON object with
    /// `id` and `op`) with its JSON answer. `now_ms`: the page's clock.
    /// What a write changed is taken with [`WebStore::take_writes`]; the
    /// page sends the answer only once that is committed.
    pub fn request(&mut self, text: &str, now_ms: f64) -> String {
        let reply = match parse_request(text) {
            Err((id, error)) => Response::Err { id, error },
            Ok(env) => {
                let id = env.id;
                match self.answer(env.request, now_ms) {
                    Ok(ok) => Response::Ok { id, ok },
                    Err(error) => Response::Err { id, error },
                }
            }
        };
        serde_json::to_string(&reply).unwrap_or_else(|_| {
            r#"{"id":0,"error":{"code":"json","message":"the answer did not serialize"}}"#.into()
        })
    }

    fn answer(&mut self, req: Request, now_ms: f64) -> Result<serde_json::Value, ApiError> {
        match req {
            Request::DevicesList {}
            | Request::DevicesRemove { .. }
            | Request::DevicesName { .. }
            | Request::SyncStatus {}
            | Request::Status {} => {
                let (store, sync) = self.parts()?;
                store.set_time((now_ms / 1000.0) as i64);
                return device_op(store, sync, req);
            }
            Request::PairInvite { .. } | Request::PairJoin { .. } | Request::PairConfirm { .. } => {
                return Err(ApiError::new(
                    "unsupported",
                    "pairing runs in the page's shell (masq-peer.js), not in a request",
                ));
            }
            _ => {}
        }
        if req.is_admin() {
            return Err(ApiError::new(
                "forbidden",
                "admin operations need a store (this page is its own device)",
            ));
        }
        if let Request::Unsubscribe { sub } = req {
            // As the native store answers.
            if self.subs.remove(&sub).is_none() {
                return Err(ApiError::new("not_found", format!("no subscription {sub}")));
            }
            let listening = !self.subs.is_empty();
            self.store()?.set_listening(listening);
            return Ok(serde_json::Value::Null);
        }
        let subs_full = self.subs.len() >= MAX_SUBSCRIPTIONS;
        let store = self.store()?;
        store.set_time((now_ms / 1000.0) as i64);
        match execute(store, req)? {
            Outcome::Value(v) => Ok(v),
            Outcome::Subscribe(filter) => {
                if subs_full {
                    return Err(ApiError::new(
                        "too_many_subscriptions",
                        format!("at most {MAX_SUBSCRIPTIONS} per connection"),
                    ));
                }
                store.set_listening(true);
                let sub = self.next_sub;
                self.next_sub += 1;
                self.subs.insert(sub, filter);
                Ok(json!({ "sub": sub }))
            }
        }
    }

    /// The writes of the requests answered since the last call, as frames
    /// (see [`tables::encode_writes`]); empty when nothing changed. Throws if
    /// they cannot be committed whole: the page then fails the batch's
    /// writes and reopens the store.
    #[wasm_bindgen(js_name = takeWrites)]
    pub fn take_writes(&mut self) -> Result<Vec<u8>, JsError> {
        match self.store.as_ref() {
            // Many requests' writes, committed together: a document's
            // metadata once, not once per change.
            Some(s) => s
                .take_writes()
                .map(|w| encode_writes(&w.coalesced()))
                .map_err(|e| JsError::new(&e.to_string())),
            None => Ok(Vec::new()),
        }
    }

    /// Number of writes the requests answered since the last
    /// [`WebStore::take_writes`] made (it grows with each request that wrote).
    #[wasm_bindgen(js_name = pendingWrites)]
    pub fn pending_writes(&self) -> usize {
        self.store.as_ref().map_or(0, PeerStore::pending_writes)
    }

    /// The events of the requests answered since the last call, each as a
    /// `{"sub":S,"event":E}` line, for every subscription that hears it.
    #[wasm_bindgen(js_name = takeEvents)]
    pub fn take_events(&mut self) -> String {
        let Some(s) = self.store.as_ref() else {
            return String::new();
        };
        let mut out = String::new();
        for ev in s.take_events() {
            for (sub, filter) in &self.subs {
                if filter.matches(&ev) {
                    let line = Response::Event {
                        sub: *sub,
                        event: ev.clone(),
                    };
                    if let Ok(text) = serde_json::to_string(&line) {
                        out.push_str(&text);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }

    /// This device's id (hex).
    #[wasm_bindgen(js_name = deviceId)]
    pub fn device_id(&mut self) -> Result<String, JsError> {
        Ok(self.parts().map_err(js)?.1.device_id().to_string())
    }

    /// The relay this device syncs through (set by pairing), if any.
    #[wasm_bindgen(js_name = relayUrl)]
    pub fn relay_url(&mut self) -> Result<Option<String>, JsError> {
        Ok(sync::relay_url(self.parts().map_err(js)?.0))
    }

    /// Number of paired devices.
    #[wasm_bindgen(js_name = peerCount)]
    pub fn peer_count(&mut self) -> Result<usize, JsError> {
        Ok(sync::peers(self.parts().map_err(js)?.0).len())
    }

    /// Names this device (as its paired devices show it) unless it has a
    /// name: the page's default, e.g. "notes on Chromium".
    #[wasm_bindgen(js_name = setDefaultName)]
    pub fn set_default_name(&mut self, name: &str) -> Result<(), JsError> {
        let (store, _) = self.parts().map_err(js)?;
        if store.meta(NAME).is_none() && !name.trim().is_empty() {
            let mut w = WriteSet::new();
            w.put(Table::Meta, NAME.to_vec(), name.trim().as_bytes().to_vec());
            store.put_records(w);
        }
        Ok(())
    }

    /// The page opened its WebSocket to the relay.
    #[wasm_bindgen(js_name = relayOpened)]
    pub fn relay_opened(&mut self) -> Result<(), JsError> {
        self.parts().map_err(js)?.1.on_relay_open();
        Ok(())
    }

    /// The relay's WebSocket closed.
    #[wasm_bindgen(js_name = relayClosed)]
    pub fn relay_closed(&mut self) -> Result<(), JsError> {
        self.parts().map_err(js)?.1.on_relay_closed();
        Ok(())
    }

    /// Whether the relay accepted this device on the current connection
    /// (the page's reconnect backoff starts over only then: a relay that
    /// accepts sockets but refuses the device is not hammered).
    #[wasm_bindgen(js_name = relayReady)]
    pub fn relay_ready(&self) -> bool {
        self.sync
            .as_ref()
            .is_some_and(|s| s.stats().relay_connected)
    }

    /// One binary frame from the relay. Returns `""`, or why the
    /// connection cannot go on (the page closes it and connects again
    /// later). Throws if this page's storage failed (the page reopens).
    #[wasm_bindgen(js_name = relayFrame)]
    pub fn relay_frame(&mut self, bytes: &[u8], now_ms: f64) -> Result<String, JsError> {
        let (store, sync) = self.parts_at(now_ms)?;
        match sync
            .on_relay_frame(store, bytes, since_epoch(now_ms))
            .map_err(js)?
        {
            Ok(()) => Ok(String::new()),
            Err(e) => Ok(e.to_string()),
        }
    }

    /// The page's sync timer (about once a second).
    #[wasm_bindgen(js_name = syncTick)]
    pub fn sync_tick(&mut self, now_ms: f64) -> Result<(), JsError> {
        let (store, sync) = self.parts_at(now_ms)?;
        sync.on_tick(store, since_epoch(now_ms)).map_err(js)
    }

    /// After a batch of requests: offers what changed to the peers.
    #[wasm_bindgen(js_name = syncFlush)]
    pub fn sync_flush(&mut self) -> Result<(), JsError> {
        let (store, sync) = self.parts().map_err(js)?;
        sync.flush(store).map_err(js)
    }

    /// Relay frames to send, as length-prefixed byte strings (u32 LE),
    /// once the writes taken before are committed.
    #[wasm_bindgen(js_name = takeFrames)]
    pub fn take_frames(&mut self) -> Vec<u8> {
        self.sync
            .as_mut()
            .map(|s| frames_bytes(s.take_frames()))
            .unwrap_or_default()
    }

    /// Makes an invite through `relay` (`ws://` or `wss://`).
    #[wasm_bindgen(js_name = pairInvite)]
    pub fn pair_invite(&mut self, relay: &str, now_ms: f64) -> Result<WebPairing, JsError> {
        let relay = relay.trim();
        if !(relay.starts_with("ws://") || relay.starts_with("wss://")) {
            return Err(JsError::new(
                "the relay's URL must start with ws:// or wss://",
            ));
        }
        let (store, sync) = self.parts_at(now_ms)?;
        Ok(WebPairing(pairing::Pairing::invite(
            relay,
            (now_ms / 1000.0) as i64,
            sync.keypair(),
            &sync::device_name(store),
        )))
    }

    /// Opens someone's invite (a `masq:` URI) to join it.
    #[wasm_bindgen(js_name = pairJoin)]
    pub fn pair_join(&mut self, uri: &str, now_ms: f64) -> Result<WebPairing, JsError> {
        let (store, sync) = self.parts_at(now_ms)?;
        pairing::Pairing::join(
            uri,
            (now_ms / 1000.0) as i64,
            sync.keypair(),
            &sync::device_name(store),
        )
        .map(WebPairing)
        .map_err(js)
    }

    /// Completes a pairing both users said yes to
    /// ([`WebPairing::is_ready`]): its records go into the writes, the
    /// engine learns the new peers. Returns the paired device as JSON.
    #[wasm_bindgen(js_name = pairFinish)]
    pub fn pair_finish(&mut self, p: &mut WebPairing, now_ms: f64) -> Result<String, JsError> {
        let (store, sync) = self.parts_at(now_ms)?;
        let paired = p.0.finish(store, sync.keypair()).map_err(js)?;
        sync.peers_changed(store).map_err(js)?;
        serde_json::to_string(&paired).map_err(js)
    }

    /// Number of records in table `table` (for the page's statistics).
    #[wasm_bindgen(js_name = recordCount)]
    pub fn record_count(&mut self, table: u8) -> usize {
        let Some(t) = table_of(table) else { return 0 };
        match (&self.store, &self.loading) {
            (Some(s), _) => s.record_count(t),
            (None, Some(l)) => l.len(t),
            (None, None) => 0,
        }
    }
}

/// A pairing in progress, as JavaScript holds it: the page opens a relay
/// connection for it, hands in its frames and sends what it returns.
#[wasm_bindgen]
pub struct WebPairing(pairing::Pairing);

#[wasm_bindgen]
impl WebPairing {
    /// The `masq:` URI (the invite's secret: show it only to the user).
    pub fn uri(&self) -> String {
        self.0.invite_ref().to_uri()
    }

    /// The invite as a QR code's text (for terminals).
    pub fn qr(&self) -> String {
        self.0.invite_ref().qr_text()
    }

    /// The invite as a QR code (SVG).
    #[wasm_bindgen(js_name = qrSvg)]
    pub fn qr_svg(&self) -> String {
        self.0.invite_ref().qr_svg()
    }

    /// The relay the pairing goes through.
    pub fn relay(&self) -> String {
        self.0.invite_ref().relay.clone()
    }

    /// When the invite expires (ms since the epoch).
    #[wasm_bindgen(js_name = expiresMs)]
    pub fn expires_ms(&self) -> f64 {
        self.0.invite_ref().expires as f64 * 1000.0
    }

    /// One frame from the relay; throws if the pairing failed.
    #[wasm_bindgen(js_name = onFrame)]
    pub fn on_frame(&mut self, bytes: &[u8]) -> Result<(), JsError> {
        self.0.on_frame(bytes).map_err(js)
    }

    /// The code to show the user, once it is known (JSON `{"code",
    /// "device_id", "fingerprint", "name"}`), else undefined. Answer with
    /// [`confirm`](Self::confirm).
    #[wasm_bindgen(js_name = takeCode)]
    pub fn take_code(&mut self) -> Option<String> {
        self.0.take_code()
    }

    /// The user's answer to the code; throws if it ends the pairing (a no,
    /// or an answer out of turn). Send `takeFrames` after it either way.
    pub fn confirm(&mut self, yes: bool) -> Result<(), JsError> {
        self.0.confirm(yes).map_err(js)
    }

    /// Gives up (expired, closed): the other device is told if it can still
    /// hear (send `takeFrames`).
    pub fn abandon(&mut self) {
        self.0.abandon()
    }

    /// Whether both users said yes (finish it with `WebStore.pairFinish`).
    #[wasm_bindgen(js_name = isReady)]
    pub fn is_ready(&self) -> bool {
        self.0.is_ready()
    }

    /// Frames to send on the pairing connection (as `WebStore.takeFrames`).
    #[wasm_bindgen(js_name = takeFrames)]
    pub fn take_frames(&mut self) -> Vec<u8> {
        frames_bytes(self.0.take_frames())
    }
}

/// Answers the device operations a page serves itself (it is its own
/// device, and its app its owner): the device list, removal, its name, and
/// the sync status.
fn device_op(
    store: &PeerStore,
    sync: &mut PageSync,
    req: Request,
) -> Result<serde_json::Value, ApiError> {
    match req {
        // As a store answers it (`sync.status`): the page's own choices
        // (all on, unless its records say otherwise) and what each device
        // said it takes of this app.
        Request::SyncStatus {} => {
            let app = store.app();
            let local = sync.local_prefs();
            let devices: Vec<serde_json::Value> = sync::peers(store)
                .into_iter()
                .map(|(id, rec)| {
                    json!({
                        "name": rec.name,
                        "on": local.app_on(&id, app),
                        "takes": sync.remote_prefs(&id).map(|r| r.takes(app)),
                    })
                })
                .collect();
            Ok(json!({ "app": app, "paused": local.paused, "devices": devices }))
        }
        Request::DevicesList {} => {
            device_ops::devices_list(store, sync.keypair(), |id| LinkState {
                online: sync.is_online(id),
                syncing: sync.is_ready(id),
            })
        }
        Request::DevicesRemove { device } => {
            // Its records go here, and every other device is told (and
            // passes it on: the membership log).
            let id = device_ops::remove(store, sync.device_id(), &device, store.now_secs())?;
            sync.peers_changed(store)?;
            Ok(json!({ "removed": id.to_string() }))
        }
        Request::DevicesName { name } => {
            device_ops::set_name(store, &name)?;
            Ok(serde_json::Value::Null)
        }
        _ => Ok(json!({
            "device": sync.device_id().to_string(),
            "fingerprint": sync.device_id().fingerprint(),
            "relay": sync::relay_url(store),
            "sync": sync.stats(),
            "devices": device_ops::devices_list(store, sync.keypair(), |id| LinkState {
                online: sync.is_online(id),
                syncing: sync.is_ready(id),
            })?["devices"].take(),
        })),
    }
}

/// The IndexedDB object stores, in the order of the table numbers.
#[wasm_bindgen(js_name = tableNames)]
pub fn table_names() -> Vec<String> {
    Table::ALL.iter().map(|t| t.name().to_string()).collect()
}

/// Runs the crypto known-answer check of the native build
/// ([`masq_core::crypto::known_answers`]) in this build; returns how many
/// answers matched, or throws naming the first that did not.
#[wasm_bindgen(js_name = knownAnswers)]
pub fn known_answers() -> Result<usize, JsError> {
    masq_core::crypto::known_answers::check().map_err(|e| JsError::new(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_answer_in_the_protocol_and_subscriptions_get_events() {
        let mut s = WebStore::new("notes").unwrap();
        let answer = |s: &mut WebStore, text: &str| -> serde_json::Value {
            serde_json::from_str(&s.request(text, 1.7e12)).unwrap()
        };
        assert_eq!(
            answer(&mut s, r#"{"id":1,"op":"kv.watch","prefix":"k"}"#),
            json!({"id": 1, "ok": {"sub": 1}})
        );
        assert_eq!(
            answer(&mut s, r#"{"id":2,"op":"kv.put","key":"k1","value":5}"#),
            json!({"id": 2, "ok": null})
        );
        assert_eq!(
            answer(&mut s, r#"{"id":3,"op":"kv.put","key":"other","value":6}"#)["ok"],
            json!(null)
        );
        assert!(!s.take_writes().unwrap().is_empty());
        let events: Vec<serde_json::Value> = s
            .take_events()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["sub"], 1);
        assert_eq!(events[0]["event"]["key"], "k1");
        assert_eq!(
            answer(&mut s, r#"{"id":4,"op":"apps.list"}"#)["error"]["code"],
            "forbidden"
        );
        assert_eq!(answer(&mut s, r#"{"id":5,"op":"nope"}"#)["id"], 5);
        assert_eq!(answer(&mut s, "not json")["id"], 0);
        assert_eq!(
            answer(&mut s, r#"{"id":6,"op":"unsubscribe","sub":1}"#),
            json!({"id": 6, "ok": null})
        );
        assert_eq!(
            answer(&mut s, r#"{"id":6,"op":"unsubscribe","sub":1}"#)["error"]["code"],
            "not_found"
        );
        answer(&mut s, r#"{"id":7,"op":"kv.put","key":"k2","value":7}"#);
        assert_eq!(s.take_events(), "");
    }

    #[test]
    fn the_known_answers_pass_through_this_crate() {
        assert_eq!(known_answers().ok(), Some(30));
    }
}
