//! The native store answers the app protocol's data requests through the
//! core's executor ([`masq_core::api::execute`]): this is the one place that
//! says which [`App`] method serves which request.

use automerge::ChangeHash;
use masq_core::api::{ApiError, DataApi, ListOptions};
use masq_core::doc::history::HistoryEntry;
use masq_core::doc::{ChangeOp, DocId};
use serde_json::Value as Json;

use crate::doc::Subscription;
use crate::error::{Error, Result};
use crate::store::App;

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError::new(e.code(), e.to_string())
    }
}

impl DataApi for App {
    type Subscription = Subscription;
    type Error = Error;

    fn kv_get(&self, bucket: &str, key: &str) -> Result<Option<Json>> {
        self.bucket(bucket)?.get(key)
    }
    fn kv_put(&self, bucket: &str, key: &str, value: &Json) -> Result<()> {
        self.bucket(bucket)?.put(key, value)
    }
    fn kv_put_many(&self, bucket: &str, entries: Vec<(String, Json)>) -> Result<()> {
        self.bucket(bucket)?.put_many(entries)
    }
    fn kv_delete(&self, bucket: &str, key: &str) -> Result<bool> {
        self.bucket(bucket)?.delete(key)
    }
    fn kv_list(&self, bucket: &str, opts: &ListOptions) -> Result<Vec<(String, Json)>> {
        self.bucket(bucket)?.list(opts)
    }
    fn kv_conflicts(&self, bucket: &str, key: &str) -> Result<Vec<Json>> {
        self.bucket(bucket)?.conflicts(key)
    }
    fn kv_watch(&self, bucket: &str, prefix: &str) -> Result<Subscription> {
        Ok(self.bucket(bucket)?.watch(prefix))
    }
    fn doc_create(&self, ops: &[ChangeOp], message: Option<&str>) -> Result<DocId> {
        self.docs().create_with(ops, message)
    }
    fn doc_get(&self, id: &DocId, at: Option<&[ChangeHash]>) -> Result<Json> {
        match at {
            Some(heads) => self.docs().get_at(id, heads),
            None => self.docs().get(id),
        }
    }
    fn doc_change(
        &self,
        id: &DocId,
        ops: &[ChangeOp],
        message: Option<&str>,
    ) -> Result<Vec<ChangeHash>> {
        self.docs().change(id, ops, message)
    }
    fn doc_heads(&self, id: &DocId) -> Result<Vec<ChangeHash>> {
        self.docs().heads(id)
    }
    fn doc_history(&self, id: &DocId) -> Result<Vec<HistoryEntry>> {
        self.docs().history(id)
    }
    fn doc_list(&self) -> Result<Vec<DocId>> {
        self.docs().list()
    }
    fn doc_delete(&self, id: &DocId) -> Result<()> {
        self.docs().delete(id)
    }
    fn doc_export(&self, id: &DocId) -> Result<Vec<u8>> {
        self.docs().export(id)
    }
    fn doc_import(&self, bytes: &[u8]) -> Result<DocId> {
        self.docs().import(bytes)
    }
    fn doc_subscribe(&self, id: Option<DocId>) -> Result<Subscription> {
        Ok(self.docs().subscribe(id))
    }
}
