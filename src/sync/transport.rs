//! The sync engine's view of the relay: device packets to and from peers,
//! presence, and the pairing rendezvous, over one authenticated
//! [`RelayClient`](crate::relay::client::RelayClient) connection.

use crate::crypto::{DeviceId, DeviceKeypair};
use crate::error::Result;
use crate::relay::client::{RelayClient, RelayEvent};
use crate::wire::relay_frame::UndeliverableReason;

/// What the transport reports.
#[derive(Debug)]
pub enum TransportEvent {
    /// A packet from a device (authenticated by the relay as `from`).
    Packet {
        /// Sender.
        from: DeviceId,
        /// The packet.
        bytes: Vec<u8>,
    },
    /// A watched device is online.
    Online(DeviceId),
    /// A watched device went offline.
    Offline(DeviceId),
    /// A packet to this device could not be delivered.
    Undeliverable(DeviceId, UndeliverableReason),
    /// Data from the other side of the rendezvous slot.
    RendezvousData(Vec<u8>),
    /// The other side joined (true) or left (false) the rendezvous slot.
    RendezvousPeer(bool),
    /// The relay closed the connection.
    Closed(String),
    /// The relay reported an error (the connection stays open).
    Error(String),
}

/// One relay connection.
pub struct Transport {
    client: RelayClient,
}

impl Transport {
    /// Connects and authenticates.
    pub async fn connect(url: &str, kp: &DeviceKeypair) -> Result<Self> {
        Ok(Self {
            client: RelayClient::connect(url, kp).await.map_err(relay_error)?,
        })
    }

    /// Sends a packet to a device.
    pub async fn send(&mut self, to: DeviceId, bytes: Vec<u8>) -> Result<()> {
        self.client.send(to, bytes).await.map_err(relay_error)?;
        Ok(())
    }

    /// Watches these devices' presence.
    pub async fn watch(&mut self, ids: Vec<DeviceId>) -> Result<()> {
        self.client.subscribe(ids).await.map_err(relay_error)?;
        Ok(())
    }

    /// Only these devices may reach us through the relay (replaces the list).
    pub async fn allow(&mut self, ids: Vec<DeviceId>) -> Result<()> {
        self.client.allow(ids).await.map_err(relay_error)?;
        Ok(())
    }

    /// Joins the rendezvous slot of `slot_secret` (see
    /// [`RelayClient::join_rendezvous`]).
    pub async fn rendezvous(&mut self, slot_secret: &[u8; 32]) -> Result<()> {
        self.client
            .join_rendezvous(*slot_secret)
            .await
            .map_err(relay_error)?;
        Ok(())
    }

    /// Sends to the other side of the rendezvous slot.
    pub async fn send_rendezvous(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.client
            .send_rendezvous(bytes)
            .await
            .map_err(relay_error)?;
        Ok(())
    }

    /// The next event; `None` once the connection is gone.
    pub async fn next(&mut self) -> Option<TransportEvent> {
        let ev = self.client.next_event().await?;
        Some(match ev {
            RelayEvent::Message { from, payload } => TransportEvent::Packet {
                from,
                bytes: payload,
            },
            RelayEvent::Presence {
                device,
                online: true,
            } => TransportEvent::Online(device),
            RelayEvent::Presence {
                device,
                online: false,
            } => TransportEvent::Offline(device),
            RelayEvent::Undeliverable { to, reason, .. } => {
                TransportEvent::Undeliverable(to, reason)
            }
            RelayEvent::RendezvousPeer { joined } => TransportEvent::RendezvousPeer(joined),
            RelayEvent::RendezvousData(d) => TransportEvent::RendezvousData(d),
            RelayEvent::Error { code, message } => {
                TransportEvent::Error(format!("{code}: {message}"))
            }
            RelayEvent::Closed { code, reason } => {
                TransportEvent::Closed(format!("{code}: {reason}"))
            }
        })
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.client.close().await;
    }
}

/// A relay connection failure, as the store's error: the connection was
/// aborted (the engine reconnects).
fn relay_error(e: crate::relay::client::RelayClientError) -> crate::error::Error {
    crate::error::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        e.to_string(),
    ))
}
