//! Any Automerge document, however deep, is rendered on a thread with a small
//! stack without overflowing it: as JSON (`json::read_root`), as subscribers'
//! patches (`json::patch_or_too_deep` over a diff from the empty document), by
//! the depth check that guards imports (`json::check_depth`), and after a
//! save/load round trip. A document past `MAX_DOC_DEPTH` must answer
//! `too_deep`, never crash; one within it must render.
//!
//! Input: first byte 0 → the rest is an Automerge file (`Automerge::load`);
//! otherwise the bytes are a script that builds a document, one op per byte,
//! so the fuzzer reaches depths far past the limit in a few KiB:
//! `b % 5` = 0 nest a map, 1 nest a list, 2 nest a text, 3 put a scalar,
//! 4 go back up one level.
#![no_main]
use automerge::{transaction::Transactable, AutoCommit, Automerge, ObjId, ObjType, ReadDoc, ROOT};
use libfuzzer_sys::fuzz_target;
use masq_store::doc::json::{self, MAX_DOC_DEPTH};

/// The render thread's stack: far below a tokio worker's 2 MiB, so only a
/// bounded walk survives (sanitizer builds use several times the stack a
/// release build does).
const SMALL_STACK: usize = 256 * 1024;

fn build(script: &[u8]) -> Automerge {
    let mut doc = AutoCommit::new();
    let mut path: Vec<ObjId> = vec![ROOT];
    for (i, b) in script.iter().enumerate() {
        let at = path.last().cloned().unwrap_or(ROOT);
        let is_list = matches!(doc.object_type(&at), Ok(ObjType::List));
        let key = format!("k{}", b % 3);
        let nest = |doc: &mut AutoCommit, t: ObjType| {
            if is_list {
                let len = doc.length(&at);
                doc.insert_object(&at, len, t)
            } else {
                doc.put_object(&at, key.as_str(), t)
            }
        };
        match b % 5 {
            0 => path.extend(nest(&mut doc, ObjType::Map).ok()),
            1 => path.extend(nest(&mut doc, ObjType::List).ok()),
            2 => {
                if let Ok(t) = nest(&mut doc, ObjType::Text) {
                    let _ = doc.splice_text(&t, 0, 0, "x");
                }
            }
            3 => {
                let _ = if is_list {
                    let len = doc.length(&at);
                    doc.insert(&at, len, i as i64)
                } else {
                    doc.put(&at, key.as_str(), i as i64)
                };
            }
            _ => {
                if path.len() > 1 {
                    path.pop();
                }
            }
        }
        if i % 64 == 63 {
            doc.commit();
        }
    }
    doc.commit();
    doc.document().clone()
}

fn render(doc: &Automerge) {
    let full = json::read_root(doc, None);
    let checked = json::check_depth(doc);
    // The check and the render agree on what is too deep.
    assert_eq!(full.is_ok(), checked.is_ok(), "read_root and check_depth disagree");
    for p in doc.diff(&[], &doc.get_heads()) {
        let _ = json::patch_or_too_deep(doc, &p);
    }
    // A document the check accepts renders, and stays within the limit.
    if let Ok(v) = full {
        assert!(json::json_depth(&v, MAX_DOC_DEPTH) <= MAX_DOC_DEPTH);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let rest = rest.to_vec();
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(move || {
            let doc = if mode == 0 {
                match Automerge::load(&rest) {
                    Ok(d) => d,
                    Err(_) => return,
                }
            } else {
                build(&rest)
            };
            render(&doc);
            if mode != 0 {
                if let Ok(again) = Automerge::load(&doc.save()) {
                    render(&again);
                }
            }
        })
        .expect("spawn the render thread")
        .join()
        .expect("rendering a document panicked");
});
