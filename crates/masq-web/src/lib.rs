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
//! Not yet here: the relay connection, pairing and sync (the sans-I/O
//! engine is in `masq-core::sync`; its browser shell is the next step).

pub mod peer_store;
pub mod tables;

use std::collections::BTreeMap;

use masq_core::api::event::Filter;
use masq_core::api::execute::{execute, Outcome};
use masq_core::api::{parse_request, ApiError, Request, Response, MAX_SUBSCRIPTIONS};
use masq_core::records::Table;
use serde_json::json;
use wasm_bindgen::prelude::*;

use peer_store::PeerStore;
use tables::{encode_writes, table_of, Tables};

/// One app's store in a page, as JavaScript sees it.
#[wasm_bindgen]
pub struct WebStore {
    /// Records read at open, until the first request opens the store.
    loading: Option<Tables>,
    /// The app.
    app: String,
    /// The store, once open.
    store: Option<PeerStore>,
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
        if self.store.is_none() {
            let tables = self.loading.take().unwrap_or_default();
            self.store = Some(PeerStore::open(&self.app, tables)?);
        }
        self.store
            .as_ref()
            .ok_or_else(|| ApiError::new("storage", "the store did not open"))
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
        assert_eq!(known_answers().ok(), Some(12));
    }
}
