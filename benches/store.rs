//! M1 store benchmarks: each group puts the raw baseline beside masq in one run.
//!
//! Run: `cargo bench --bench store` (add `-- --quick` for a fast pass).
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use automerge::transaction::Transactable;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use masq::Durability;
use masq::{ChangeOp, Store, StoreOptions};
use serde_json::json;

fn buffered(dir: &std::path::Path) -> Store {
    Store::open_with(
        dir,
        StoreOptions {
            durability: Durability::Buffered,
            ..Default::default()
        },
    )
    .unwrap()
}

fn kv_get(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = buffered(dir.path());
    let b = store.app("bench").unwrap().bucket("b").unwrap();
    b.put_many((0..10_000).map(|i| (format!("key{i:05}"), json!({"n": i}))))
        .unwrap();
    let raw_dir = tempfile::tempdir().unwrap();
    let raw = fjall::Database::builder(raw_dir.path()).open().unwrap();
    let ks = raw
        .keyspace("k", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    for i in 0..10_000 {
        ks.insert(
            format!("key{i:05}"),
            serde_json::to_vec(&json!({"n": i})).unwrap(),
        )
        .unwrap();
    }
    let mut g = c.benchmark_group("kv_get_hot");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("raw_fjall_get", |bch| {
        bch.iter(|| {
            i = (i + 7919) % 10_000;
            ks.get(format!("key{i:05}")).unwrap()
        })
    });
    g.bench_function("masq_kv_get", |bch| {
        bch.iter(|| {
            i = (i + 7919) % 10_000;
            b.get(&format!("key{i:05}")).unwrap()
        })
    });
    g.finish();
}

fn kv_put(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = buffered(dir.path());
    let b = store.app("bench").unwrap().bucket("b").unwrap();
    let raw_dir = tempfile::tempdir().unwrap();
    let raw = fjall::Database::builder(raw_dir.path())
        .manual_journal_persist(true)
        .open()
        .unwrap();
    let ks = raw
        .keyspace("k", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let mut g = c.benchmark_group("kv_put_buffered");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("raw_fjall_insert_buffer", |bch| {
        bch.iter(|| {
            i += 1;
            ks.insert(format!("key{}", i % 50_000), b"{\"n\":1}".to_vec())
                .unwrap();
            raw.persist(fjall::PersistMode::Buffer).unwrap();
        })
    });
    // The floor under a replicated put: one Automerge change putting one key
    // of a map the size of a KV shard (~200 keys), nothing stored.
    let mut shard = automerge::Automerge::new();
    g.bench_function("raw_automerge_put_change", |bch| {
        bch.iter(|| {
            i += 1;
            shard
                .transact(|tx| tx.put(automerge::ROOT, format!("key{}", i % 200), "{\"n\":1}"))
                .unwrap();
        })
    });
    // The same with a new value every time, as real data has: Automerge
    // 0.12's cost per op is several times higher when values differ (its
    // value columns no longer run-length encode), so this is the floor that
    // matters for real buckets.
    let mut shard_v = automerge::Automerge::new();
    g.bench_function("raw_automerge_put_change_varying", |bch| {
        bch.iter(|| {
            i += 1;
            shard_v
                .transact(|tx| {
                    tx.put(
                        automerge::ROOT,
                        format!("key{}", i % 200),
                        format!("{{\"n\":{i}}}"),
                    )
                })
                .unwrap();
        })
    });
    // Each sample ends with `flush_kv`, so the time includes folding every
    // put into its shard's Automerge document (write-behind, see
    // `kv::pending`), not only the durable index write the caller waits for.
    g.bench_function("masq_kv_put", |bch| {
        bch.iter_custom(|iters| {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                i += 1;
                b.put(&format!("key{}", i % 50_000), &json!({"n": 1}))
                    .unwrap();
            }
            store.flush_kv().unwrap();
            start.elapsed()
        })
    });
    g.bench_function("masq_kv_put_varying", |bch| {
        bch.iter_custom(|iters| {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                i += 1;
                b.put(&format!("key{}", i % 50_000), &json!({ "n": i }))
                    .unwrap();
            }
            store.flush_kv().unwrap();
            start.elapsed()
        })
    });
    g.finish();
}

fn kv_put_fsync_concurrent(c: &mut Criterion) {
    const WRITERS: usize = 64;
    const PER_WRITER: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let b = store.app("bench").unwrap().bucket("b").unwrap();
    let mut g = c.benchmark_group("kv_put_fsync_64_writers");
    g.sample_size(10);
    g.throughput(Throughput::Elements((WRITERS * PER_WRITER) as u64));
    let mut round = 0u64;
    g.bench_function("masq_kv_put_group_commit", |bch| {
        bch.iter(|| {
            round += 1;
            std::thread::scope(|s| {
                for w in 0..WRITERS {
                    let b = b.clone();
                    s.spawn(move || {
                        for i in 0..PER_WRITER {
                            b.put(&format!("w{w}-{i}"), &json!(round)).unwrap();
                        }
                    });
                }
            });
            // Include folding the round's puts into Automerge (see kv_put).
            store.flush_kv().unwrap();
        })
    });
    g.finish();
    let (writes, fsyncs) = store.db().commit_stats();
    eprintln!(
        "group commit: {writes} writes, {fsyncs} fsyncs, {:.1} writes per fsync",
        writes as f64 / fsyncs.max(1) as f64
    );
}

fn doc_change(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = buffered(dir.path());
    let docs = store.app("bench").unwrap().docs();
    let id = docs.create().unwrap();
    let mut raw = automerge::Automerge::new();
    let mut g = c.benchmark_group("doc_change");
    g.throughput(Throughput::Elements(1));
    let mut i = 0i64;
    g.bench_function("raw_automerge_transact", |bch| {
        bch.iter(|| {
            i += 1;
            raw.transact(|tx| tx.put(automerge::ROOT, "n", i)).unwrap();
        })
    });
    let op = |i: i64| {
        vec![ChangeOp::Put {
            path: "/n".into(),
            value: json!(i),
        }]
    };
    g.bench_function("masq_doc_change_persisted", |bch| {
        bch.iter(|| {
            i += 1;
            docs.change(&id, &op(i), None).unwrap()
        })
    });
    g.finish();
}

fn doc_load(c: &mut Criterion) {
    const EDITS: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let id;
    let raw;
    {
        let store = buffered(dir.path());
        let docs = store.app("bench").unwrap().docs();
        id = docs
            .create_with(
                &[ChangeOp::PutText {
                    path: "/t".into(),
                    value: String::new(),
                }],
                None,
            )
            .unwrap();
        // 100k single-character edits, 1000 per change (as a typing session saved in batches).
        for chunk in 0..(EDITS / 1000) {
            docs.transact(&id, None, |tx| {
                let t = match automerge::ReadDoc::get(tx, automerge::ROOT, "t")? {
                    Some((_, t)) => t,
                    None => return Err(masq::Error::BadOp("no text".into())),
                };
                for k in 0..1000 {
                    tx.splice_text(&t, chunk * 1000 + k, 0, "x")?;
                }
                Ok(())
            })
            .unwrap();
        }
        let bytes = docs.export(&id).unwrap();
        raw = automerge::Automerge::load(&bytes).unwrap();
    }
    let saved = raw.save();
    let mut g = c.benchmark_group("load_100k_text_edits");
    g.sample_size(10);
    g.bench_function("raw_automerge_load", |bch| {
        bch.iter(|| automerge::Automerge::load(&saved).unwrap())
    });
    g.bench_function("masq_open_and_read", |bch| {
        bch.iter_batched(
            || (),
            |_| {
                let store = buffered(dir.path());
                let v = store.app("bench").unwrap().docs().get(&id).unwrap();
                assert_eq!(v["t"].as_str().map(str::len), Some(EDITS));
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = kv_get, kv_put, kv_put_fsync_concurrent, doc_change, doc_load
}
criterion_main!(benches);
