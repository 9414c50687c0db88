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

use super::{DocError as Error, Result};

/// The one depth rule: no object of a document lies more than this many
/// levels below its root (the root map is level 0, `/a` level 1, ...).
///
/// Why a limit at all: every walk of a document (rendering it as JSON,
/// patches for subscribers, time travel, checking an import) follows its
/// nesting, and a document built 400 levels deep used to overflow a 2 MiB
/// worker stack and abort the whole store, on every device it synced to.
/// Why 64: deeper than any app data seen in practice, and small enough that
/// every bounded walk here fits in a few KiB of stack on any thread.
///
/// It is enforced where documents are built (change paths and values,
/// imported files, KV values) and wherever one is walked, so a document that
/// arrives deeper anyway (from a paired device) is answered with
/// [`Error::TooDeep`] for that document and nothing else is affected.
pub const MAX_DOC_DEPTH: usize = 64;

fn too_deep(what: &str) -> Error {
    Error::TooDeep {
        what: what.to_string(),
        limit: MAX_DOC_DEPTH,
    }
}

/// Reads object `obj` of `doc`, which lies `depth` levels below the root, as
/// JSON, at `heads` if given (time travel). The walk is iterative (its own
/// stack on the heap, one frame per level) and stops with
/// [`Error::TooDeep`] past [`MAX_DOC_DEPTH`]: however deep a document is,
/// reading it uses the same few hundred bytes of thread stack.
pub fn read<R: ReadDoc>(
    doc: &R,
    obj: &ObjId,
    depth: usize,
    heads: Option<&[ChangeHash]>,
) -> Result<Json> {
    if depth > MAX_DOC_DEPTH {
        return Err(too_deep("document"));
    }
    let mut stack = match Frame::open(doc, obj.clone(), heads) {
        Opened::Done(j) => return Ok(j),
        Opened::Frame(f) => vec![f],
    };
    loop {
        // The top frame's children lie this many levels below the root.
        let child_depth = depth + stack.len();
        let Some(top) = stack.last_mut() else {
            return Ok(Json::Null);
        };
        let Some(p) = top.next_prop() else {
            let done = stack.pop().map(Frame::finish).unwrap_or(Json::Null);
            match stack.last_mut() {
                Some(parent) => parent.push(Some(done)),
                None => return Ok(done),
            }
            continue;
        };
        let got = match heads {
            Some(h) => doc.get_at(&top.obj, p, h),
            None => doc.get(&top.obj, p),
        };
        match got {
            Ok(Some((Value::Object(_), id))) => {
                // The child lies one level below the top frame.
                if child_depth > MAX_DOC_DEPTH {
                    return Err(too_deep("document"));
                }
                match Frame::open(doc, id, heads) {
                    Opened::Done(j) => top.push(Some(j)),
                    Opened::Frame(f) => stack.push(f),
                }
            }
            Ok(Some((Value::Scalar(s), _))) => top.push(Some(scalar(&s))),
            _ => top.push(None),
        }
    }
}

/// One object being read by [`read`]: what is left of it and what is built.
struct Frame {
    obj: ObjId,
    body: FrameBody,
}

enum FrameBody {
    List {
        len: usize,
        out: Vec<Json>,
    },
    Map {
        keys: std::vec::IntoIter<String>,
        /// The key whose value is being read.
        current: Option<String>,
        out: Map<String, Json>,
    },
}

enum Opened {
    /// A leaf object (text), read whole.
    Done(Json),
    /// A list or map, read one property at a time.
    Frame(Frame),
}

impl Frame {
    fn open<R: ReadDoc>(doc: &R, obj: ObjId, heads: Option<&[ChangeHash]>) -> Opened {
        let body = match doc.object_type(&obj) {
            Ok(ObjType::Text) => return Opened::Done(Json::String(text(doc, &obj, heads))),
            Ok(ObjType::List) => {
                let len = match heads {
                    Some(h) => doc.length_at(&obj, h),
                    None => doc.length(&obj),
                };
                FrameBody::List {
                    len,
                    out: Vec::with_capacity(len),
                }
            }
            _ => {
                let keys: Vec<String> = match heads {
                    Some(h) => doc.keys_at(&obj, h).collect(),
                    None => doc.keys(&obj).collect(),
                };
                FrameBody::Map {
                    keys: keys.into_iter(),
                    current: None,
                    out: Map::new(),
                }
            }
        };
        Opened::Frame(Frame { obj, body })
    }

    /// The next property to read, if any is left.
    fn next_prop(&mut self) -> Option<Prop> {
        match &mut self.body {
            FrameBody::List { len, out } => (out.len() < *len).then_some(Prop::Seq(out.len())),
            FrameBody::Map { keys, current, .. } => {
                let k = keys.next()?;
                *current = Some(k.clone());
                Some(Prop::Map(k))
            }
        }
    }

    /// The value of the property [`next_prop`](Self::next_prop) gave
    /// (`None`: absent; a list shows it as `null`, a map leaves it out).
    fn push(&mut self, v: Option<Json>) {
        match &mut self.body {
            FrameBody::List { out, .. } => out.push(v.unwrap_or(Json::Null)),
            FrameBody::Map { current, out, .. } => {
                if let (Some(k), Some(v)) = (current.take(), v) {
                    out.insert(k, v);
                }
            }
        }
    }

    fn finish(self) -> Json {
        match self.body {
            FrameBody::List { out, .. } => Json::Array(out),
            FrameBody::Map { out, .. } => Json::Object(out),
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

/// Reads one property of `obj` (which lies `depth` levels below the root) as
/// JSON (`None` if absent).
pub fn prop<R: ReadDoc>(
    doc: &R,
    obj: &ObjId,
    depth: usize,
    p: Prop,
    heads: Option<&[ChangeHash]>,
) -> Result<Option<Json>> {
    let got = match heads {
        Some(h) => doc.get_at(obj, p, h),
        None => doc.get(obj, p),
    };
    match got {
        Ok(Some((Value::Object(_), id))) => read(doc, &id, depth + 1, heads).map(Some),
        Ok(Some((Value::Scalar(s), _))) => Ok(Some(scalar(&s))),
        _ => Ok(None),
    }
}

/// Checks that no object of `doc` (winners and conflicting values alike)
/// lies deeper than [`MAX_DOC_DEPTH`]: an iterative walk that builds nothing
/// and stops at the first object too deep.
pub fn check_depth<R: ReadDoc>(doc: &R) -> Result<()> {
    let mut todo = vec![(ROOT, 0usize)];
    while let Some((obj, depth)) = todo.pop() {
        if depth > MAX_DOC_DEPTH {
            return Err(too_deep("document"));
        }
        let props: Vec<Prop> = match doc.object_type(&obj) {
            Ok(ObjType::Text) | Err(_) => continue,
            Ok(ObjType::List) => (0..doc.length(&obj)).map(Prop::from).collect(),
            Ok(ObjType::Map) | Ok(ObjType::Table) => doc.keys(&obj).map(Prop::from).collect(),
        };
        for p in props {
            for (v, id) in doc.get_all(&obj, p)? {
                if let Value::Object(_) = v {
                    todo.push((id, depth + 1));
                }
            }
        }
    }
    Ok(())
}

/// How many levels of objects and arrays `value` nests (0 for a scalar,
/// 1 for `{}` or `[1]`), counted up to `cap + 1` at most: the walk is bounded
/// whatever the value.
pub fn json_depth(value: &Json, cap: usize) -> usize {
    fn walk(v: &Json, left: usize) -> usize {
        if left == 0 {
            return 0;
        }
        match v {
            Json::Array(items) => 1 + items.iter().map(|i| walk(i, left - 1)).max().unwrap_or(0),
            Json::Object(m) => 1 + m.values().map(|i| walk(i, left - 1)).max().unwrap_or(0),
            _ => 0,
        }
    }
    walk(value, cap + 1)
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

/// The whole document as JSON ([`Error::TooDeep`] past [`MAX_DOC_DEPTH`]).
pub fn read_root<R: ReadDoc>(doc: &R, heads: Option<&[ChangeHash]>) -> Result<Json> {
    read(doc, &ROOT, 0, heads)
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

/// Writes `value` at `obj[p]` (objects and arrays become nested maps and
/// lists). The caller checked the depth rule ([`json_depth`]); the walk stops
/// at [`MAX_DOC_DEPTH`] levels of `value` regardless.
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
    if depth > MAX_DOC_DEPTH {
        return Err(too_deep("value"));
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
    if depth > MAX_DOC_DEPTH {
        return Err(too_deep("value"));
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
/// A patch deeper than [`MAX_DOC_DEPTH`] (possible only in a document that
/// arrived too deep) is [`Error::TooDeep`]; see [`patch_or_too_deep`].
pub fn patch<R: ReadDoc>(doc: &R, p: &Patch) -> Result<Json> {
    // The patched object lies `p.path.len()` levels down; a value put into
    // it one more.
    let depth = p.path.len();
    if depth > MAX_DOC_DEPTH {
        return Err(too_deep("document"));
    }
    let mut path: Vec<Json> = p
        .path
        .iter()
        .map(|(_, prop)| match prop {
            Prop::Map(k) => json!(k),
            Prop::Seq(i) => json!(i),
        })
        .collect();
    let value_json = |v: &Value<'_>, id: &ObjId| match v {
        Value::Object(_) => read(doc, id, depth + 1, None),
        Value::Scalar(s) => Ok(scalar(s)),
    };
    let body = match &p.action {
        PatchAction::PutMap {
            key,
            value,
            conflict,
        } => {
            path.push(json!(key));
            json!({"action": "put", "value": value_json(&value.0, &value.1)?, "conflict": conflict})
        }
        PatchAction::PutSeq {
            index,
            value,
            conflict,
        } => {
            path.push(json!(index));
            json!({"action": "put", "value": value_json(&value.0, &value.1)?, "conflict": conflict})
        }
        PatchAction::Insert { index, values } => {
            path.push(json!(index));
            let vals = values
                .iter()
                .map(|(v, id, _)| value_json(v, id))
                .collect::<Result<Vec<Json>>>()?;
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
    Ok(Json::Object(obj))
}

/// [`patch`], or for a patch too deep to render the marker
/// `{"path": [], "action": "too_deep", "limit": 64}`: a subscriber learns
/// that the document changed and that reading it will answer `too_deep`.
pub fn patch_or_too_deep<R: ReadDoc>(doc: &R, p: &Patch) -> Json {
    patch(doc, p)
        .unwrap_or_else(|_| json!({"path": [], "action": "too_deep", "limit": MAX_DOC_DEPTH}))
}

fn prop_json(p: &Prop) -> Json {
    match p {
        Prop::Map(k) => json!(k),
        Prop::Seq(i) => json!(i),
    }
}
