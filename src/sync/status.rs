//! What the sync engine reports about itself (the admin's `status`,
//! `sync.show` and the manager page), read off the core's device.

use masq_core::device::Device;

/// What the engine reports about itself.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EngineStatus {
    /// Connected and authenticated to the relay.
    pub relay_connected: bool,
    /// Paired devices the relay reports online (hex ids).
    pub online: Vec<String>,
    /// Online devices with an established session, syncing.
    pub syncing: Vec<String>,
    /// Envelopes sealed and sent.
    pub envelopes_sent: u64,
    /// Envelopes received and opened.
    pub envelopes_received: u64,
    /// Bytes handed to the relay.
    pub bytes_sent: u64,
    /// Bytes received from the relay.
    pub bytes_received: u64,
    /// Envelopes or packets rejected (bad, unknown sender, replay, ...).
    pub rejected: u64,
    /// This store's sync is paused (its choice, kept across restarts).
    pub paused: bool,
    /// Sync messages dropped because their app does not sync with the
    /// sender here (or sync is paused).
    pub filtered: u64,
    /// What each syncing device said it takes from this one (its own
    /// choices), as far as it said so in its current session.
    pub peer_prefs: Vec<PeerPrefsView>,
}

/// What a paired device said it takes from this store.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PeerPrefsView {
    /// The device (hex id).
    pub device: String,
    /// Its sync is paused.
    pub paused: bool,
    /// Apps it turned off towards this store.
    pub off: Vec<String>,
    /// The only apps it holds (a web page: its own), if it said so.
    pub only: Option<Vec<String>>,
}

impl EngineStatus {
    /// The status of `device` now.
    pub fn of(device: &Device) -> Self {
        let stats = device.stats();
        EngineStatus {
            relay_connected: stats.relay_connected,
            online: device
                .peers()
                .filter(|id| device.is_online(id))
                .map(ToString::to_string)
                .collect(),
            syncing: device
                .peers()
                .filter(|id| device.is_ready(id))
                .map(ToString::to_string)
                .collect(),
            envelopes_sent: stats.envelopes_sent,
            envelopes_received: stats.envelopes_received,
            bytes_sent: stats.bytes_sent,
            bytes_received: stats.bytes_received,
            rejected: stats.rejected,
            paused: device.local_prefs().paused,
            filtered: stats.filtered,
            peer_prefs: device
                .peers()
                .filter_map(|id| {
                    device.remote_prefs(id).map(|p| PeerPrefsView {
                        device: id.to_string(),
                        paused: p.paused,
                        off: p.off.clone(),
                        only: p.only.clone(),
                    })
                })
                .collect(),
        }
    }
}
