//! Runs data requests (kv.*, doc.*) against one app's namespace of a store,
//! whatever keeps it: the store implements [`DataApi`] (the native store over
//! fjall, the browser shell over IndexedDB), and [`execute`] turns a
//! [`Request`] into calls and their results into the answer's JSON, the same
//! for every store. Blocking where the store blocks: native callers on an
//! async runtime run it on a blocking thread.

use automerge::ChangeHash;
use base64::Engine as _;
use serde_json::{json, Value as Json};

use super::{ApiError, Request};
use crate::doc::history::{heads_hex, parse_heads, HistoryEntry};
use crate::doc::{ChangeOp, DocId};
pub use crate::kv::ListOptions;

/// One app's data, as a store offers it to [`execute`]. Each method is the
/// request of the same name; its errors become the answer's error (with
/// their stable codes, see `docs/protocol.md`).
pub trait DataApi {
    /// A live watch or subscription the caller forwards as events.
    type Subscription;
    /// The store's error.
    type Error: Into<ApiError>;

    /// The winning value of `key` in `bucket`.
    fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<Json>, Self::Error>;
    /// Sets `key`, durably.
    fn kv_put(&self, bucket: &str, key: &str, value: &Json) -> Result<(), Self::Error>;
    /// Sets many keys in one atomic, durable write.
    fn kv_put_many(&self, bucket: &str, entries: Vec<(String, Json)>) -> Result<(), Self::Error>;
    /// Deletes `key`; whether it existed.
    fn kv_delete(&self, bucket: &str, key: &str) -> Result<bool, Self::Error>;
    /// Entries in key order.
    fn kv_list(&self, bucket: &str, opts: &ListOptions)
        -> Result<Vec<(String, Json)>, Self::Error>;
    /// Every value kept for `key`, the winner first.
    fn kv_conflicts(&self, bucket: &str, key: &str) -> Result<Vec<Json>, Self::Error>;
    /// Watches keys of `bucket` starting with `prefix`.
    fn kv_watch(&self, bucket: &str, prefix: &str) -> Result<Self::Subscription, Self::Error>;
    /// Creates a document whose first change applies `ops`.
    fn doc_create(&self, ops: &[ChangeOp], message: Option<&str>) -> Result<DocId, Self::Error>;
    /// The document as JSON, now or at past `at` heads.
    fn doc_get(&self, id: &DocId, at: Option<&[ChangeHash]>) -> Result<Json, Self::Error>;
    /// Applies `ops` as one change; the heads after.
    fn doc_change(
        &self,
        id: &DocId,
        ops: &[ChangeOp],
        message: Option<&str>,
    ) -> Result<Vec<ChangeHash>, Self::Error>;
    /// The document's heads.
    fn doc_heads(&self, id: &DocId) -> Result<Vec<ChangeHash>, Self::Error>;
    /// The document's history.
    fn doc_history(&self, id: &DocId) -> Result<Vec<HistoryEntry>, Self::Error>;
    /// The app's live documents.
    fn doc_list(&self) -> Result<Vec<DocId>, Self::Error>;
    /// Deletes a document (a tombstone that syncs).
    fn doc_delete(&self, id: &DocId) -> Result<(), Self::Error>;
    /// The document as an Automerge file.
    fn doc_export(&self, id: &DocId) -> Result<Vec<u8>, Self::Error>;
    /// Imports an Automerge file as a new document.
    fn doc_import(&self, bytes: &[u8]) -> Result<DocId, Self::Error>;
    /// Subscribes to one document's changes, or (`None`) to all of the app's.
    fn doc_subscribe(&self, id: Option<DocId>) -> Result<Self::Subscription, Self::Error>;
}

/// What a data request produced.
pub enum Outcome<S> {
    /// The `ok` value of the answer.
    Value(Json),
    /// A watch or subscription the caller should forward as events.
    Subscribe(S),
}

impl<S> std::fmt::Debug for Outcome<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Value(v) => write!(f, "Value({v})"),
            Outcome::Subscribe(_) => f.write_str("Subscribe"),
        }
    }
}

fn not_found(what: String) -> ApiError {
    ApiError::new("not_found", what)
}

/// Heads given by an app: an unparsable one is `bad_op`, as it always was.
fn heads(h: &[String]) -> Result<Vec<ChangeHash>, ApiError> {
    parse_heads(h).map_err(|bad| {
        ApiError::new(
            "bad_op",
            format!("invalid operation: invalid change hash {bad:?}"),
        )
    })
}

/// Executes a data request in `app`. Admin requests and `unsubscribe` are the
/// caller's business and yield `bad_request` here.
pub fn execute<A: DataApi>(app: &A, req: Request) -> Result<Outcome<A::Subscription>, ApiError> {
    use Outcome::Value;
    let e = Into::<ApiError>::into;
    Ok(match req {
        Request::KvGet { bucket, key } => match app.kv_get(&bucket, &key).map_err(e)? {
            Some(v) => Value(v),
            None => return Err(not_found(format!("no key {key:?} in bucket {bucket:?}"))),
        },
        Request::KvPut { bucket, key, value } => {
            app.kv_put(&bucket, &key, &value).map_err(e)?;
            Value(Json::Null)
        }
        Request::KvPutMany { bucket, entries } => {
            app.kv_put_many(&bucket, entries).map_err(e)?;
            Value(Json::Null)
        }
        Request::KvDelete { bucket, key } => {
            Value(json!({ "deleted": app.kv_delete(&bucket, &key).map_err(e)? }))
        }
        Request::KvList {
            bucket,
            prefix,
            start_after,
            limit,
        } => {
            let opts = ListOptions {
                prefix,
                start_after,
                limit,
            };
            let list = app.kv_list(&bucket, &opts).map_err(e)?;
            Value(Json::Array(
                list.into_iter()
                    .map(|(k, v)| json!({"key": k, "value": v}))
                    .collect(),
            ))
        }
        Request::KvConflicts { bucket, key } => {
            Value(Json::Array(app.kv_conflicts(&bucket, &key).map_err(e)?))
        }
        Request::KvWatch { bucket, prefix } => {
            Outcome::Subscribe(app.kv_watch(&bucket, &prefix).map_err(e)?)
        }
        Request::DocCreate { ops, message } => {
            Value(json!({ "doc": app.doc_create(&ops, message.as_deref()).map_err(e)? }))
        }
        Request::DocGet { doc, at } => {
            let id = DocId::parse(&doc)?;
            let at = at.as_deref().map(heads).transpose()?;
            Value(app.doc_get(&id, at.as_deref()).map_err(e)?)
        }
        Request::DocChange { doc, ops, message } => {
            let id = DocId::parse(&doc)?;
            let after = app.doc_change(&id, &ops, message.as_deref()).map_err(e)?;
            Value(json!({ "heads": heads_hex(&after) }))
        }
        Request::DocHeads { doc } => {
            let id = DocId::parse(&doc)?;
            Value(json!({ "heads": heads_hex(&app.doc_heads(&id).map_err(e)?) }))
        }
        Request::DocHistory { doc } => {
            let id = DocId::parse(&doc)?;
            let history = app.doc_history(&id).map_err(e)?;
            Value(serde_json::to_value(history).map_err(crate::doc::DocError::from)?)
        }
        Request::DocList {} => Value(Json::Array(
            app.doc_list()
                .map_err(e)?
                .into_iter()
                .map(|d| Json::String(d.to_string()))
                .collect(),
        )),
        Request::DocDelete { doc } => {
            app.doc_delete(&DocId::parse(&doc)?).map_err(e)?;
            Value(Json::Null)
        }
        Request::DocExport { doc } => {
            let bytes = app.doc_export(&DocId::parse(&doc)?).map_err(e)?;
            Value(json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }))
        }
        Request::DocImport { base64 } => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(base64.as_bytes())
                .map_err(|e| ApiError::new("bad_request", format!("base64: {e}")))?;
            Value(json!({ "doc": app.doc_import(&bytes).map_err(e)? }))
        }
        Request::DocSubscribe { doc } => {
            let id = doc.as_deref().map(DocId::parse).transpose()?;
            Outcome::Subscribe(app.doc_subscribe(id).map_err(e)?)
        }
        other => {
            return Err(ApiError::new(
                "bad_request",
                format!("{} is not a data operation", op_name(&other)),
            ))
        }
    })
}

/// The `op` string of a request.
pub fn op_name(req: &Request) -> String {
    serde_json::to_value(req)
        .ok()
        .and_then(|v| v.get("op").and_then(Json::as_str).map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with one key, `a` = 1 in bucket `default`; every other call
    /// says it should not have been made.
    struct OneKey;

    fn unused<T>() -> Result<T, ApiError> {
        Err(ApiError::new("unused", "the executor should not call this"))
    }

    impl DataApi for OneKey {
        type Subscription = ();
        type Error = ApiError;
        fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<Json>, ApiError> {
            Ok((bucket == "default" && key == "a").then(|| json!(1)))
        }
        fn kv_put(&self, _: &str, _: &str, _: &Json) -> Result<(), ApiError> {
            unused()
        }
        fn kv_put_many(&self, _: &str, _: Vec<(String, Json)>) -> Result<(), ApiError> {
            unused()
        }
        fn kv_delete(&self, _: &str, _: &str) -> Result<bool, ApiError> {
            unused()
        }
        fn kv_list(&self, _: &str, _: &ListOptions) -> Result<Vec<(String, Json)>, ApiError> {
            Ok(vec![("a".into(), json!(1))])
        }
        fn kv_conflicts(&self, _: &str, _: &str) -> Result<Vec<Json>, ApiError> {
            unused()
        }
        fn kv_watch(&self, _: &str, _: &str) -> Result<(), ApiError> {
            Ok(())
        }
        fn doc_create(&self, _: &[ChangeOp], _: Option<&str>) -> Result<DocId, ApiError> {
            unused()
        }
        fn doc_get(&self, _: &DocId, _: Option<&[ChangeHash]>) -> Result<Json, ApiError> {
            unused()
        }
        fn doc_change(
            &self,
            _: &DocId,
            _: &[ChangeOp],
            _: Option<&str>,
        ) -> Result<Vec<ChangeHash>, ApiError> {
            unused()
        }
        fn doc_heads(&self, _: &DocId) -> Result<Vec<ChangeHash>, ApiError> {
            unused()
        }
        fn doc_history(&self, _: &DocId) -> Result<Vec<HistoryEntry>, ApiError> {
            unused()
        }
        fn doc_list(&self) -> Result<Vec<DocId>, ApiError> {
            unused()
        }
        fn doc_delete(&self, _: &DocId) -> Result<(), ApiError> {
            unused()
        }
        fn doc_export(&self, _: &DocId) -> Result<Vec<u8>, ApiError> {
            unused()
        }
        fn doc_import(&self, _: &[u8]) -> Result<DocId, ApiError> {
            unused()
        }
        fn doc_subscribe(&self, _: Option<DocId>) -> Result<(), ApiError> {
            unused()
        }
    }

    fn run(req: &str) -> Result<Json, ApiError> {
        let env = super::super::parse_request(req).map_err(|(_, e)| e)?;
        match execute(&OneKey, env.request)? {
            Outcome::Value(v) => Ok(v),
            Outcome::Subscribe(()) => Ok(json!("subscribed")),
        }
    }

    /// Answers and error codes are decided here, the same for every store:
    /// bad input is refused before the store is called.
    #[test]
    fn requests_become_calls_and_answers_with_stable_codes() {
        assert_eq!(
            run(r#"{"id":1,"op":"kv.get","key":"a"}"#).unwrap(),
            json!(1)
        );
        assert_eq!(
            run(r#"{"id":1,"op":"kv.get","key":"b"}"#).unwrap_err().code,
            "not_found"
        );
        assert_eq!(
            run(r#"{"id":1,"op":"kv.list"}"#).unwrap(),
            json!([{"key": "a", "value": 1}])
        );
        assert_eq!(
            run(r#"{"id":1,"op":"kv.watch"}"#).unwrap(),
            json!("subscribed")
        );
        let bad_id = run(r#"{"id":1,"op":"doc.get","doc":"not an id"}"#).unwrap_err();
        assert_eq!(bad_id.code, "bad_doc_id");
        let id = DocId::random();
        let bad_heads = run(&format!(
            r#"{{"id":1,"op":"doc.get","doc":"{id}","at":["zz"]}}"#
        ))
        .unwrap_err();
        assert_eq!(bad_heads.code, "bad_op");
        assert_eq!(
            bad_heads.message,
            r#"invalid operation: invalid change hash "zz""#
        );
        let b64 = run(r#"{"id":1,"op":"doc.import","base64":"!!"}"#).unwrap_err();
        assert_eq!(b64.code, "bad_request");
        let admin = run(r#"{"id":1,"op":"devices.list"}"#).unwrap_err();
        assert_eq!(
            (admin.code.as_str(), admin.message.as_str()),
            ("bad_request", "devices.list is not a data operation")
        );
    }
}
