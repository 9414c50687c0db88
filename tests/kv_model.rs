//! Property test: random sequences of KV operations agree with a BTreeMap model,
//! including across a reopen of the store.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use masq::Durability;
use masq::{ListOptions, Store, StoreOptions};
use proptest::prelude::*;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
enum Op {
    Put(String, i64),
    PutMany(Vec<(String, i64)>),
    Delete(String),
    Reopen,
}

fn key() -> impl Strategy<Value = String> {
    // A small key space so puts, overwrites and deletes collide often.
    prop::sample::select(vec![
        "a", "b", "ab", "abc", "b/1", "b/2", "c", "zz", "é", "k9",
    ])
    .prop_map(String::from)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (key(), any::<i64>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => prop::collection::vec((key(), any::<i64>()), 1..5).prop_map(Op::PutMany),
        3 => key().prop_map(Op::Delete),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn kv_matches_btreemap(ops in prop::collection::vec(op(), 1..40), prefix in prop::sample::select(vec!["", "a", "b/", "z"])) {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions { durability: Durability::Buffered, ..Default::default() };
        let mut store = Store::open_with(dir.path(), opts.clone()).unwrap();
        let mut model: BTreeMap<String, Value> = BTreeMap::new();
        for op in ops {
            let b = store.app("p").unwrap().bucket("b").unwrap();
            match op {
                Op::Put(k, v) => { b.put(&k, &json!(v)).unwrap(); model.insert(k, json!(v)); }
                Op::PutMany(kvs) => {
                    // A key given twice: the later entry wins, as in the model.
                    b.put_many(kvs.iter().map(|(k, v)| (k.clone(), json!(v)))).unwrap();
                    for (k, v) in kvs { model.insert(k, json!(v)); }
                }
                Op::Delete(k) => { prop_assert_eq!(b.delete(&k).unwrap(), model.remove(&k).is_some()); }
                Op::Reopen => { drop(b); drop(store); store = Store::open_with(dir.path(), opts.clone()).unwrap(); }
            }
        }
        let b = store.app("p").unwrap().bucket("b").unwrap();
        for (k, v) in &model {
            prop_assert_eq!(b.get(k).unwrap(), Some(v.clone()));
        }
        let listed = b.list(&ListOptions { prefix: prefix.to_string(), ..Default::default() }).unwrap();
        let expected: Vec<(String, Value)> = model.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(listed, expected);
    }
}
