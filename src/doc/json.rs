//! Automerge ⇄ JSON: reading a document (or part of it) as `serde_json::Value`,
//! writing JSON values into a transaction, and rendering patches as JSON.
//!
//! Mapping: maps → objects, lists → arrays, text → string, counters and
//! timestamps → numbers, bytes → array of numbers, null/bool/int/uint/f64 as is.

use automerge::{
    transaction::Transactable, ChangeHash, ObjId, ObjType, Patch, PatchAction, Prop, ReadDoc,
    ScalarValue, Value, ROOT,
};
use serde_json::{json, Map, Value as Json};

use crate::error::{Error, Result};

/// Deepest nesting accepted when writing JSON into a document.
pub const MAX_JSON_DEPTH: usize = 64;

/// Reads object `obj` of `doc` as JSON, at `heads` if given (time travel).
pub fn read<R: ReadDoc>(doc: &R, obj: &ObjId, heads: Option<&[ChangeHash]>) -> Json {
    match doc.object_type(obj) {
        Ok(ObjType::Text) => Json::String(text(doc, obj, heads)),
        Ok(ObjType::List) => {
            let len = match heads {
                Some(h) => doc.length_at(obj, h),
                None => doc.length(obj),
            };
            let mut out = Vec::with_capacity(len);
            for i in 0..len {
                out.push(prop(doc, obj, i.into(), heads).unwrap_or(Json::Null));
            }
            Json::Array(out)
        }
        _ => {
            let mut out = Map::new();
            let keys: Vec<String> = match heads {
                Some(h) => doc.keys_at(obj, h).collect(),
                None => doc.keys(obj).collect(),
            };
            for k in keys {
                if let Some(v) = prop(doc, obj, k.clone().into(), heads) {
                    out.insert(k, v);
                }
            }
            Json::Object(out)
        }
    }
}

fn text<R: ReadDoc>(doc: &R, obj: &ObjId, heads: Option<&[ChangeHash]>) -> String {
    match heads {
        Some(h) => doc.text_at(obj, h),
        None => doc.text(obj),
    }
    .unwrap_or_default()
}

/// Reads one property as JSON (`None` if absent).
pub fn prop<R: ReadDoc>(
    doc: &R,
    obj: &ObjId,
    p: Prop,
    heads: Option<&[ChangeHash]>,
) -> Option<Json> {
    let got = match heads {
        Some(h) => doc.get_at(obj, p, h),
        None => doc.get(obj, p),
    };
    match got {
        Ok(Some((Value::Object(_), id))) => Some(read(doc, &id, heads)),
        Ok(Some((Value::Scalar(s), _))) => Some(scalar(&s)),
        _ => None,
    }
}

/// A scalar as JSON.
pub fn scalar(s: &ScalarValue) -> Json {
    match s {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(i) => json!(i),
        ScalarValue::Uint(u) => json!(u),
        ScalarValue::F64(f) => json!(f),
        ScalarValue::Counter(c) => json!(i64::from(c)),
        ScalarValue::Timestamp(t) => json!(t),
        ScalarValue::Boolean(b) => json!(b),
        ScalarValue::Null => Json::Null,
        ScalarValue::Bytes(b) => json!(b),
        ScalarValue::Unknown { bytes, .. } => json!(bytes),
    }
}

/// The whole document as JSON.
pub fn read_root<R: ReadDoc>(doc: &R, heads: Option<&[ChangeHash]>) -> Json {
    read(doc, &ROOT, heads)
}

/// A JSON scalar as an Automerge scalar; `None` for arrays and objects.
pub fn json_scalar(v: &Json) -> Option<ScalarValue> {
    Some(match v {
        Json::Null => ScalarValue::Null,
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                ScalarValue::Int(i)
            } else if let Some(u) = n.as_u64() {
                ScalarValue::Uint(u)
            } else {
                ScalarValue::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        Json::Array(_) | Json::Object(_) => return None,
    })
}

/// Writes `value` at `obj[p]` (objects and arrays become nested maps and lists).
pub fn put<T: Transactable>(tx: &mut T, obj: &ObjId, p: Prop, value: &Json) -> Result<()> {
    put_depth(tx, obj, p, value, 0)
}

fn put_depth<T: Transactable>(
    tx: &mut T,
    obj: &ObjId,
    p: Prop,
    value: &Json,
    depth: usize,
) -> Result<()> {
    if depth > MAX_JSON_DEPTH {
        return Err(Error::BadOp(format!(
            "value nested deeper than {MAX_JSON_DEPTH}"
        )));
    }
    match value {
        Json::Array(items) => {
            let list = tx.put_object(obj, p, ObjType::List)?;
            fill_list(tx, &list, items, depth)
        }
        Json::Object(m) => {
            let map = tx.put_object(obj, p, ObjType::Map)?;
            fill_map(tx, &map, m, depth)
        }
        other => {
            let s = json_scalar(other).unwrap_or(ScalarValue::Null);
            tx.put(obj, p, s)?;
            Ok(())
        }
    }
}

/// Inserts `value` into list `obj` at `index`.
pub fn insert<T: Transactable>(tx: &mut T, obj: &ObjId, index: usize, value: &Json) -> Result<()> {
    insert_depth(tx, obj, index, value, 0)
}

fn insert_depth<T: Transactable>(
    tx: &mut T,
    obj: &ObjId,
    index: usize,
    value: &Json,
    depth: usize,
) -> Result<()> {
    if depth > MAX_JSON_DEPTH {
        return Err(Error::BadOp(format!(
            "value nested deeper than {MAX_JSON_DEPTH}"
        )));
    }
    match value {
        Json::Array(items) => {
            let list = tx.insert_object(obj, index, ObjType::List)?;
            fill_list(tx, &list, items, depth)
        }
        Json::Object(m) => {
            let map = tx.insert_object(obj, index, ObjType::Map)?;
            fill_map(tx, &map, m, depth)
        }
        other => {
            tx.insert(obj, index, json_scalar(other).unwrap_or(ScalarValue::Null))?;
            Ok(())
        }
    }
}

fn fill_list<T: Transactable>(
    tx: &mut T,
    list: &ObjId,
    items: &[Json],
    depth: usize,
) -> Result<()> {
    for (i, item) in items.iter().enumerate() {
        insert_depth(tx, list, i, item, depth + 1)?;
    }
    Ok(())
}

fn fill_map<T: Transactable>(
    tx: &mut T,
    map: &ObjId,
    m: &Map<String, Json>,
    depth: usize,
) -> Result<()> {
    for (k, v) in m {
        put_depth(tx, map, k.as_str().into(), v, depth + 1)?;
    }
    Ok(())
}

/// Renders an Automerge patch as JSON:
/// `{"path": [..], "action": "put"|"insert"|"splice"|"increment"|"delete"|"conflict"|"mark", ...}`.
pub fn patch<R: ReadDoc>(doc: &R, p: &Patch) -> Json {
    let mut path: Vec<Json> = p
        .path
        .iter()
        .map(|(_, prop)| match prop {
            Prop::Map(k) => json!(k),
            Prop::Seq(i) => json!(i),
        })
        .collect();
    let value_json = |v: &Value<'_>, id: &ObjId| match v {
        Value::Object(_) => read(doc, id, None),
        Value::Scalar(s) => scalar(s),
    };
    let body = match &p.action {
        PatchAction::PutMap {
            key,
            value,
            conflict,
        } => {
            path.push(json!(key));
            json!({"action": "put", "value": value_json(&value.0, &value.1), "conflict": conflict})
        }
        PatchAction::PutSeq {
            index,
            value,
            conflict,
        } => {
            path.push(json!(index));
            json!({"action": "put", "value": value_json(&value.0, &value.1), "conflict": conflict})
        }
        PatchAction::Insert { index, values } => {
            path.push(json!(index));
            let vals: Vec<Json> = values.iter().map(|(v, id, _)| value_json(v, id)).collect();
            json!({"action": "insert", "values": vals})
        }
        PatchAction::SpliceText { index, value, .. } => {
            path.push(json!(index));
            json!({"action": "splice", "text": value.make_string()})
        }
        PatchAction::Increment { prop, value } => {
            path.push(prop_json(prop));
            json!({"action": "increment", "by": value})
        }
        PatchAction::Conflict { prop } => {
            path.push(prop_json(prop));
            json!({"action": "conflict"})
        }
        PatchAction::DeleteMap { key } => {
            path.push(json!(key));
            json!({"action": "delete"})
        }
        PatchAction::DeleteSeq { index, length } => {
            path.push(json!(index));
            json!({"action": "delete", "length": length})
        }
        PatchAction::Mark { .. } => json!({"action": "mark"}),
    };
    let mut obj = match body {
        Json::Object(m) => m,
        _ => Map::new(),
    };
    obj.insert("path".into(), Json::Array(path));
    Json::Object(obj)
}

fn prop_json(p: &Prop) -> Json {
    match p {
        Prop::Map(k) => json!(k),
        Prop::Seq(i) => json!(i),
    }
}
