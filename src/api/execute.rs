//! Runs data requests (kv.*, doc.*) against one app's namespace. Blocking:
//! callers on an async runtime run it on a blocking thread.

use base64::Engine as _;
use serde_json::{json, Value as Json};

use super::{ApiError, Request};
use crate::doc::{heads_hex, parse_heads, DocId, Subscription};
use crate::kv::ListOptions;
use crate::store::App;

/// What a data request produced.
pub enum Outcome {
    /// The `ok` value of the answer.
    Value(Json),
    /// A watch or subscription the caller should forward as events.
    Subscribe(Subscription),
}

impl std::fmt::Debug for Outcome {
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

/// Executes a data request in `app`. Admin requests and `unsubscribe` are the
/// caller's business and yield `bad_request` here.
pub fn execute(app: &App, req: Request) -> Result<Outcome, ApiError> {
    use Outcome::Value;
    let docs = app.docs();
    Ok(match req {
        Request::KvGet { bucket, key } => match app.bucket(&bucket)?.get(&key)? {
            Some(v) => Value(v),
            None => return Err(not_found(format!("no key {key:?} in bucket {bucket:?}"))),
        },
        Request::KvPut { bucket, key, value } => {
            app.bucket(&bucket)?.put(&key, &value)?;
            Value(Json::Null)
        }
        Request::KvPutMany { bucket, entries } => {
            app.bucket(&bucket)?.put_many(entries)?;
            Value(Json::Null)
        }
        Request::KvDelete { bucket, key } => {
            Value(json!({ "deleted": app.bucket(&bucket)?.delete(&key)? }))
        }
        Request::KvList {
            bucket,
            prefix,
            start_after,
            limit,
        } => {
            let list = app.bucket(&bucket)?.list(&ListOptions {
                prefix,
                start_after,
                limit,
            })?;
            Value(Json::Array(
                list.into_iter()
                    .map(|(k, v)| json!({"key": k, "value": v}))
                    .collect(),
            ))
        }
        Request::KvConflicts { bucket, key } => {
            Value(Json::Array(app.bucket(&bucket)?.conflicts(&key)?))
        }
        Request::KvWatch { bucket, prefix } => {
            Outcome::Subscribe(app.bucket(&bucket)?.watch(&prefix))
        }
        Request::DocCreate { ops, message } => {
            Value(json!({ "doc": docs.create_with(&ops, message.as_deref())? }))
        }
        Request::DocGet { doc, at } => {
            let id = DocId::parse(&doc)?;
            Value(match at {
                Some(h) => docs.get_at(&id, &parse_heads(&h)?)?,
                None => docs.get(&id)?,
            })
        }
        Request::DocChange { doc, ops, message } => {
            let heads = docs.change(&DocId::parse(&doc)?, &ops, message.as_deref())?;
            Value(json!({ "heads": heads_hex(&heads) }))
        }
        Request::DocHeads { doc } => {
            Value(json!({ "heads": heads_hex(&docs.heads(&DocId::parse(&doc)?)?) }))
        }
        Request::DocHistory { doc } => Value(
            serde_json::to_value(docs.history(&DocId::parse(&doc)?)?)
                .map_err(crate::error::Error::from)?,
        ),
        Request::DocList {} => Value(Json::Array(
            docs.list()?
                .into_iter()
                .map(|d| Json::String(d.to_string()))
                .collect(),
        )),
        Request::DocDelete { doc } => {
            docs.delete(&DocId::parse(&doc)?)?;
            Value(Json::Null)
        }
        Request::DocExport { doc } => {
            let bytes = docs.export(&DocId::parse(&doc)?)?;
            Value(json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }))
        }
        Request::DocImport { base64 } => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(base64.as_bytes())
                .map_err(|e| ApiError::new("bad_request", format!("base64: {e}")))?;
            Value(json!({ "doc": docs.import(&bytes)? }))
        }
        Request::DocSubscribe { doc } => {
            let id = doc.as_deref().map(DocId::parse).transpose()?;
            Outcome::Subscribe(docs.subscribe(id))
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
