//! Change operations addressed by JSON Pointer paths (RFC 6901, e.g. `/todos/0/title`).
//!
//! A change is a list of [`ChangeOp`]s applied in one Automerge transaction: either
//! all apply or none does.

use automerge::{
    transaction::Transactable, ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value, ROOT,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::json;
use super::{DocError as Error, Result};

/// One operation of a change. Serialized as `{"op": "put", "path": "/a", "value": 1}` etc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChangeOp {
    /// Sets a map key or list element to a JSON value (strings become plain
    /// strings; objects and arrays become nested maps and lists).
    Put {
        /// Where.
        path: String,
        /// What.
        value: Json,
    },
    /// Sets a map key or list element to a collaborative text object.
    PutText {
        /// Where.
        path: String,
        /// Initial text.
        value: String,
    },
    /// Sets a map key or list element to a counter.
    PutCounter {
        /// Where.
        path: String,
        /// Initial value.
        value: i64,
    },
    /// Removes a map key or a list element.
    Delete {
        /// What.
        path: String,
    },
    /// Inserts into a list before the index the path ends with (`-` appends).
    Insert {
        /// Where (`/list/3` or `/list/-`).
        path: String,
        /// What.
        value: Json,
    },
    /// Splices a text object: deletes `delete` characters at `index`, then inserts `insert`.
    Splice {
        /// The text object.
        path: String,
        /// Character index.
        index: usize,
        /// How many characters to delete.
        #[serde(default)]
        delete: usize,
        /// What to insert.
        #[serde(default)]
        insert: String,
    },
    /// Adds `by` to a counter.
    Increment {
        /// The counter.
        path: String,
        /// Amount (may be negative).
        #[serde(default = "one")]
        by: i64,
    },
}

fn one() -> i64 {
    1
}

/// Splits a JSON Pointer into unescaped segments. `""` is the root.
///
/// A path can name at most a property of an object at
/// [`MAX_DOC_DEPTH`](json::MAX_DOC_DEPTH), so longer paths are
/// [`Error::TooDeep`] before anything is walked.
pub fn parse_pointer(path: &str) -> Result<Vec<String>> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(bad(path, "must start with '/'"));
    };
    if rest.bytes().filter(|&b| b == b'/').count() + 1 > json::MAX_DOC_DEPTH + 1 {
        return Err(Error::TooDeep {
            what: format!("path {path:?}"),
            limit: json::MAX_DOC_DEPTH,
        });
    }
    Ok(rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn bad(path: &str, reason: impl Into<String>) -> Error {
    Error::BadPath {
        path: path.to_string(),
        reason: reason.into(),
    }
}

fn type_name<R: ReadDoc>(doc: &R, obj: &ObjId) -> String {
    match doc.object_type(obj) {
        Ok(ObjType::Map) | Ok(ObjType::Table) => "object".into(),
        Ok(ObjType::List) => "list".into(),
        Ok(ObjType::Text) => "text".into(),
        Err(_) => "nothing".into(),
    }
}

/// Turns a segment into a property of `obj` (a key for maps, an index for lists).
fn prop_of<R: ReadDoc>(
    doc: &R,
    path: &str,
    obj: &ObjId,
    seg: &str,
    allow_end: bool,
) -> Result<Prop> {
    match doc.object_type(obj) {
        Ok(ObjType::Map) | Ok(ObjType::Table) => Ok(Prop::Map(seg.to_string())),
        Ok(ObjType::List) | Ok(ObjType::Text) => {
            let len = doc.length(obj);
            let idx = if seg == "-" && allow_end {
                len
            } else {
                seg.parse::<usize>()
                    .map_err(|_| bad(path, format!("{seg:?} is not a list index")))?
            };
            let max = if allow_end {
                len
            } else {
                len.saturating_sub(1)
            };
            if idx > max || (!allow_end && len == 0) {
                return Err(bad(
                    path,
                    format!("index {idx} out of range (length {len})"),
                ));
            }
            Ok(Prop::Seq(idx))
        }
        Err(_) => Err(bad(path, "no such object")),
    }
}

/// Walks all segments; every one must name an object. Returns that object.
fn resolve_obj<R: ReadDoc>(doc: &R, path: &str, segs: &[String]) -> Result<ObjId> {
    let mut obj = ROOT;
    for seg in segs {
        let p = prop_of(doc, path, &obj, seg, false)?;
        match doc.get(&obj, p)? {
            Some((Value::Object(_), id)) => obj = id,
            Some((Value::Scalar(s), _)) => {
                return Err(Error::WrongType {
                    path: path.to_string(),
                    expected: "object, list or text",
                    found: scalar_type(&s).to_string(),
                })
            }
            None => return Err(bad(path, format!("{seg:?} does not exist"))),
        }
    }
    Ok(obj)
}

fn scalar_type(s: &ScalarValue) -> &'static str {
    match s {
        ScalarValue::Str(_) => "string",
        ScalarValue::Counter(_) => "counter",
        ScalarValue::Null => "null",
        ScalarValue::Boolean(_) => "boolean",
        ScalarValue::Bytes(_) => "bytes",
        _ => "number",
    }
}

/// Resolves the parent object of the last segment and the property it names.
fn resolve_parent<R: ReadDoc>(doc: &R, path: &str, allow_end: bool) -> Result<(ObjId, Prop)> {
    let segs = parse_pointer(path)?;
    let Some((last, parents)) = segs.split_last() else {
        return Err(bad(path, "the root itself cannot be replaced"));
    };
    let obj = resolve_obj(doc, path, parents)?;
    if matches!(doc.object_type(&obj), Ok(ObjType::Text)) {
        return Err(Error::WrongType {
            path: path.into(),
            expected: "object or list",
            found: "text".into(),
        });
    }
    let p = prop_of(doc, path, &obj, last, allow_end)?;
    Ok((obj, p))
}

/// The depth rule for a write: `objects` levels of objects created at `path`
/// (a value's nesting, or 1 for a text) must not reach below
/// [`MAX_DOC_DEPTH`](json::MAX_DOC_DEPTH). The object holding the last
/// segment lies `segments - 1` levels down.
fn check_write_depth(path: &str, objects: usize) -> Result<()> {
    let parent = parse_pointer(path)?.len().saturating_sub(1);
    if parent + objects > json::MAX_DOC_DEPTH {
        return Err(Error::TooDeep {
            what: format!("the value at {path:?}"),
            limit: json::MAX_DOC_DEPTH,
        });
    }
    Ok(())
}

/// Applies one op inside a transaction.
pub fn apply<T: Transactable + ReadDoc>(tx: &mut T, op: &ChangeOp) -> Result<()> {
    match op {
        ChangeOp::Put { path, value } | ChangeOp::Insert { path, value } => {
            check_write_depth(path, json::json_depth(value, json::MAX_DOC_DEPTH))?
        }
        ChangeOp::PutText { path, .. } => check_write_depth(path, 1)?,
        _ => {}
    }
    match op {
        ChangeOp::Put { path, value } => {
            let (obj, p) = resolve_parent(tx, path, false).or_else(|e| match e {
                // Putting a new key into a map is fine even though it does not exist yet.
                Error::BadPath { .. } => resolve_parent(tx, path, true),
                e => Err(e),
            })?;
            if let Prop::Seq(i) = p {
                if i >= tx.length(&obj) {
                    return Err(bad(path, "use insert to add list elements"));
                }
            }
            json::put(tx, &obj, p, value)
        }
        ChangeOp::PutText { path, value } => {
            let (obj, p) = resolve_parent(tx, path, true)?;
            let text = tx.put_object(&obj, p, ObjType::Text)?;
            tx.splice_text(&text, 0, 0, value)?;
            Ok(())
        }
        ChangeOp::PutCounter { path, value } => {
            let (obj, p) = resolve_parent(tx, path, true)?;
            tx.put(&obj, p, ScalarValue::counter(*value))?;
            Ok(())
        }
        ChangeOp::Delete { path } => {
            let (obj, p) = resolve_parent(tx, path, false)?;
            if let Prop::Map(k) = &p {
                if tx.get(&obj, k.as_str())?.is_none() {
                    return Err(bad(path, format!("{k:?} does not exist")));
                }
            }
            tx.delete(&obj, p)?;
            Ok(())
        }
        ChangeOp::Insert { path, value } => {
            let (obj, p) = resolve_parent(tx, path, true)?;
            match p {
                Prop::Seq(i) => json::insert(tx, &obj, i, value),
                Prop::Map(_) => Err(Error::WrongType {
                    path: path.clone(),
                    expected: "list",
                    found: "object".into(),
                }),
            }
        }
        ChangeOp::Splice {
            path,
            index,
            delete,
            insert,
        } => {
            let segs = parse_pointer(path)?;
            let obj = resolve_obj(tx, path, &segs)?;
            if !matches!(tx.object_type(&obj), Ok(ObjType::Text)) {
                return Err(Error::WrongType {
                    path: path.clone(),
                    expected: "text",
                    found: type_name(tx, &obj),
                });
            }
            let len = tx.length(&obj);
            if *index > len || index + delete > len {
                return Err(bad(
                    path,
                    format!("splice {index}+{delete} out of range (length {len})"),
                ));
            }
            tx.splice_text(&obj, *index, *delete as isize, insert)?;
            Ok(())
        }
        ChangeOp::Increment { path, by } => {
            let (obj, p) = resolve_parent(tx, path, false)?;
            match tx.get(&obj, p.clone())? {
                Some((Value::Scalar(s), _)) if matches!(s.as_ref(), ScalarValue::Counter(_)) => {
                    tx.increment(&obj, p, *by)?;
                    Ok(())
                }
                Some((Value::Scalar(s), _)) => Err(Error::WrongType {
                    path: path.clone(),
                    expected: "counter",
                    found: scalar_type(&s).into(),
                }),
                Some((Value::Object(_), id)) => Err(Error::WrongType {
                    path: path.clone(),
                    expected: "counter",
                    found: type_name(tx, &id),
                }),
                None => Err(bad(path, "does not exist")),
            }
        }
    }
}
