//! The cluster without Redis (built without the `cluster` feature): a
//! [`Cluster`] cannot exist, so every method is unreachable by type, and
//! [`Cluster::connect_retrying`] says how to get the real one.

use masq_core::crypto::DeviceId;
use tokio::sync::mpsc;

use super::{Inbound, RemoteSend};

/// Why there is no cluster link.
#[derive(Debug, thiserror::Error)]
#[error(
    "this masq was built without cluster support; rebuild with `--features cluster` (needs Redis)"
)]
pub struct ClusterError;

/// No values: without the `cluster` feature a relay node is never clustered.
pub enum Cluster {}

impl Cluster {
    /// Always [`ClusterError`].
    pub async fn connect_retrying(
        _url: &str,
    ) -> Result<(Self, mpsc::Receiver<Inbound>), ClusterError> {
        Err(ClusterError)
    }

    /// Unreachable (no `Cluster` exists).
    pub fn device_connected(&self, _device: DeviceId) -> tokio::sync::oneshot::Receiver<()> {
        match *self {}
    }

    /// Unreachable (no `Cluster` exists).
    pub fn device_disconnected(&self, _device: DeviceId, _moved: bool) {
        match *self {}
    }

    /// Unreachable (no `Cluster` exists).
    pub async fn send_to_device(&self, _send: RemoteSend) {
        match *self {}
    }

    /// Unreachable (no `Cluster` exists).
    pub fn refuse(&self, _sender: DeviceId, _frame: Vec<u8>) {
        match *self {}
    }

    /// Unreachable (no `Cluster` exists).
    pub fn query_presence(&self, _device: DeviceId, _conn_id: u64, _ids: Vec<DeviceId>) {
        match *self {}
    }

    /// Unreachable (no `Cluster` exists).
    pub fn rendezvous_join(
        &self,
        _device: DeviceId,
        _conn_id: u64,
        _s: [u8; 32],
        _ttl: std::time::Duration,
    ) {
        match *self {}
    }

    /// Unreachable (no `Cluster` exists).
    pub fn rendezvous_send(&self, _conn_id: u64, _s: [u8; 32], _data: Vec<u8>) {
        match *self {}
    }

    /// Unreachable (no `Cluster` exists).
    pub fn rendezvous_leave(&self, _device: DeviceId, _conn_id: u64) {
        match *self {}
    }
}
