//! The device side of the relay protocol: connect, authenticate with the
//! device's X25519 key, then send payloads, watch presence and use rendezvous
//! slots. One task per client owns the socket; it is aborted when the client drops.
//!
//! Architecture invariant: knows frames and sockets, nothing of what payloads contain.

use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use x25519_dalek::PublicKey;

use super::config::{auth_proof, slot_proof, RelayConfig};
use masq_core::crypto::{DeviceId, DeviceKeypair};
use masq_core::wire::relay_frame::{Frame, UndeliverableReason};

/// Frames the client may queue for sending before `send` waits.
pub const CLIENT_SEND_QUEUE: usize = 1024;

/// Events (delivered messages, presence, ...) received but not yet taken by
/// [`RelayClient::next_event`]. When they are queued, the client stops
/// reading its socket, so a slow consumer's backlog builds up at the relay,
/// whose per-connection limits then apply (recipient busy at the sender),
/// instead of in this process's memory without bound. Sending goes on
/// meanwhile, so a consumer that sends while it has events to take cannot
/// deadlock.
pub const CLIENT_EVENT_QUEUE: usize = 256;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum RelayClientError {
    /// Could not connect or the WebSocket failed.
    #[error("relay connection: {0}")]
    Connect(String),
    /// The relay refused our authentication.
    #[error("relay authentication failed: {0}")]
    Auth(String),
    /// The relay spoke something we do not understand.
    #[error("relay protocol: {0}")]
    Protocol(String),
    /// The connection is gone.
    #[error("relay connection closed")]
    Closed,
}

/// Something the relay told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// A payload from another device.
    Message {
        /// Sender (authenticated by the relay).
        from: DeviceId,
        /// Opaque payload.
        payload: Vec<u8>,
    },
    /// A watched device came online or went offline.
    Presence {
        /// Which.
        device: DeviceId,
        /// Online now.
        online: bool,
    },
    /// A send could not be delivered.
    Undeliverable {
        /// Our message id.
        msg_id: u64,
        /// The recipient.
        to: DeviceId,
        /// Why.
        reason: UndeliverableReason,
    },
    /// The other side joined (or left) our rendezvous slot.
    RendezvousPeer {
        /// Joined or left.
        joined: bool,
    },
    /// Data from the other side of the rendezvous slot.
    RendezvousData(Vec<u8>),
    /// The relay reported an error for this connection (it stays open).
    Error {
        /// Code (see `wire::relay_frame::codes`).
        code: u16,
        /// Text.
        message: String,
    },
    /// The connection closed, with the relay's reason if it gave one.
    Closed {
        /// WebSocket close code (4000+ are relay codes), 0 if none.
        code: u16,
        /// Reason text.
        reason: String,
    },
}

/// An authenticated relay connection.
pub struct RelayClient {
    device: DeviceId,
    /// The relay's challenge on this connection (public key, nonce): a
    /// rendezvous join proves the slot key over it.
    challenge: ([u8; 32], [u8; 32]),
    out: mpsc::Sender<Vec<u8>>,
    events: mpsc::Receiver<RelayEvent>,
    next_id: u64,
    task: Option<JoinHandle<()>>,
}

impl Drop for RelayClient {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl RelayClient {
    /// Connects to `url` and authenticates as `keypair`. `url` may name
    /// several nodes of one relay cluster, comma-separated
    /// (`ws://a:7071,ws://b:7071`): they are tried in order, so the first is
    /// preferred and the others take over when it is down.
    pub async fn connect(url: &str, keypair: &DeviceKeypair) -> Result<Self, RelayClientError> {
        let mut last = RelayClientError::Connect(format!("no relay URL in {url:?}"));
        for one in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            match Self::connect_one(one, keypair).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::debug!("relay {one}: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn connect_one(url: &str, keypair: &DeviceKeypair) -> Result<Self, RelayClientError> {
        let stream = super::tls::connect_stream(url)
            .await
            .map_err(|e| RelayClientError::Connect(e.to_string()))?;
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            url,
            stream,
            Some(RelayConfig::default().websocket()),
        )
        .await
        .map_err(|e| RelayClientError::Connect(e.to_string()))?;
        let challenge = match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                Frame::decode(&b).map_err(|e| RelayClientError::Protocol(e.to_string()))?
            }
            Some(Ok(Message::Close(c))) => {
                return Err(RelayClientError::Auth(
                    c.map(|c| c.reason.to_string()).unwrap_or_default(),
                ))
            }
            _ => return Err(RelayClientError::Protocol("expected a challenge".into())),
        };
        let Frame::Challenge {
            relay_public,
            nonce,
        } = challenge
        else {
            return Err(RelayClientError::Protocol("expected a challenge".into()));
        };
        // A low-order relay key would make the proof a function of public
        // values only: refuse it (a relay never sends one).
        let dh = keypair
            .contributory_dh(&PublicKey::from(relay_public))
            .map_err(|e| RelayClientError::Auth(format!("relay challenge: {e}")))?;
        let public = *keypair.public().as_bytes();
        let proof = auth_proof(&dh, &nonce, &relay_public, &public);
        ws.send(Message::Binary(
            Frame::Auth { public, proof }.encode().into(),
        ))
        .await
        .map_err(|e| RelayClientError::Connect(e.to_string()))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => match Frame::decode(&b) {
                    Ok(Frame::AuthOk(id)) if id == keypair.device_id() => break,
                    Ok(Frame::Error { message, .. }) => {
                        return Err(RelayClientError::Auth(message))
                    }
                    _ => return Err(RelayClientError::Protocol("expected AuthOk".into())),
                },
                Some(Ok(Message::Close(c))) => {
                    return Err(RelayClientError::Auth(
                        c.map(|c| c.reason.to_string()).unwrap_or_default(),
                    ))
                }
                Some(Ok(_)) => continue,
                _ => return Err(RelayClientError::Closed),
            }
        }
        let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(CLIENT_SEND_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(CLIENT_EVENT_QUEUE);
        let task = tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            // An event read from the socket and waiting for room in the
            // event queue; while one waits, the socket is not read.
            let mut waiting: Option<RelayEvent> = None;
            loop {
                tokio::select! {
                    out = out_rx.recv() => match out {
                        Some(bytes) => {
                            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                                let _ = ev_tx.try_send(RelayEvent::Closed { code: 0, reason: "send failed".into() });
                                break;
                            }
                        }
                        None => {
                            let _ = sink.close().await;
                            break;
                        }
                    },
                    permit = ev_tx.reserve(), if waiting.is_some() => match (permit, waiting.take()) {
                        (Ok(permit), Some(ev)) => {
                            let last = matches!(ev, RelayEvent::Closed { .. });
                            permit.send(ev);
                            if last {
                                break;
                            }
                        }
                        // The client was dropped: nobody is listening.
                        _ => break,
                    },
                    msg = stream.next(), if waiting.is_none() => {
                        waiting = match msg {
                            Some(Ok(Message::Binary(b))) => match Frame::decode(&b) {
                                Ok(Frame::Deliver { from, payload }) => Some(RelayEvent::Message { from, payload }),
                                Ok(Frame::Presence { id, online }) => Some(RelayEvent::Presence { device: id, online }),
                                Ok(Frame::Undeliverable { msg_id, to, reason }) => Some(RelayEvent::Undeliverable { msg_id, to, reason }),
                                Ok(Frame::RendezvousPeer { joined }) => Some(RelayEvent::RendezvousPeer { joined }),
                                Ok(Frame::RendezvousData(d)) => Some(RelayEvent::RendezvousData(d)),
                                Ok(Frame::Error { code, message }) => Some(RelayEvent::Error { code, message }),
                                Ok(_) | Err(_) => None,
                            },
                            Some(Ok(Message::Close(c))) => {
                                let (code, reason) = c.map(|c| (u16::from(c.code), c.reason.to_string())).unwrap_or((0, String::new()));
                                Some(RelayEvent::Closed { code, reason })
                            }
                            Some(Ok(_)) => None,
                            Some(Err(e)) => Some(RelayEvent::Closed { code: 0, reason: e.to_string() }),
                            None => Some(RelayEvent::Closed { code: 0, reason: "connection ended".into() }),
                        };
                    }
                }
            }
        });
        Ok(Self {
            device: keypair.device_id(),
            challenge: (relay_public, nonce),
            out: out_tx,
            events: ev_rx,
            next_id: 1,
            task: Some(task),
        })
    }

    /// Our DeviceId.
    pub fn device_id(&self) -> DeviceId {
        self.device
    }

    async fn push(&self, frame: Frame) -> Result<(), RelayClientError> {
        self.out
            .send(frame.encode())
            .await
            .map_err(|_| RelayClientError::Closed)
    }

    /// Sends raw bytes as one binary frame (tests use this for malformed input).
    pub async fn send_raw(&self, bytes: Vec<u8>) -> Result<(), RelayClientError> {
        self.out
            .send(bytes)
            .await
            .map_err(|_| RelayClientError::Closed)
    }

    /// Sends `payload` to `to`; returns the message id (echoed if undeliverable).
    pub async fn send(&mut self, to: DeviceId, payload: Vec<u8>) -> Result<u64, RelayClientError> {
        let msg_id = self.next_id;
        self.next_id += 1;
        self.push(Frame::Send {
            msg_id,
            to,
            payload,
        })
        .await?;
        Ok(msg_id)
    }

    /// Watches the presence of `ids` (replacing the previous set).
    pub async fn subscribe(&self, ids: Vec<DeviceId>) -> Result<(), RelayClientError> {
        self.push(Frame::Subscribe(ids)).await
    }

    /// Only these devices may send to us from now on (replaces the previous
    /// list; until the first call, anyone may). Others' sends are refused at
    /// their end with `Undeliverable` reason `NotAllowed`.
    pub async fn allow(&self, ids: Vec<DeviceId>) -> Result<(), RelayClientError> {
        self.push(Frame::Allow(ids)).await
    }

    /// Joins the rendezvous slot of `slot_secret` (an X25519 secret, from
    /// `crypto::pairing::slot_secret` of an invite secret): the slot id is
    /// the hash of its public half, and the relay admits us only with a proof
    /// of the secret over this connection's challenge.
    pub async fn join_rendezvous(&self, slot_secret: [u8; 32]) -> Result<(), RelayClientError> {
        let secret = x25519_dalek::StaticSecret::from(slot_secret);
        let slot_public = *PublicKey::from(&secret).as_bytes();
        let (relay_public, nonce) = self.challenge;
        let dh = masq_core::crypto::contributory_dh(&secret, &PublicKey::from(relay_public))
            .map_err(|e| RelayClientError::Protocol(format!("relay challenge: {e}")))?;
        let proof = slot_proof(&dh, &nonce, &relay_public, &slot_public);
        self.push(Frame::RendezvousJoin { slot_public, proof })
            .await
    }

    /// Sends to the other member of the rendezvous slot.
    pub async fn send_rendezvous(&self, payload: Vec<u8>) -> Result<(), RelayClientError> {
        self.push(Frame::RendezvousSend(payload)).await
    }

    /// The next event; `None` after the connection ended and all events were read.
    pub async fn next_event(&mut self) -> Option<RelayEvent> {
        self.events.recv().await
    }

    /// Closes the connection gracefully.
    pub async fn close(mut self) {
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.out, tx));
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), t).await;
        }
    }
}
