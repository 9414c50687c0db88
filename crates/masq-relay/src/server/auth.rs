//! The handshake that opens every connection: the relay sends a fresh
//! challenge (an X25519 key and a nonce), the device answers with `Auth`
//! (its public key and a proof over the Diffie-Hellman of both), and the
//! relay either learns the device's id or refuses with an error and a close.
//! The same [`Challenge`] later checks rendezvous joins' slot-key proofs.
//!
//! Knows nothing of the relay's tables, queues or what comes after `AuthOk`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use x25519_dalek::{PublicKey, StaticSecret};

use super::metrics::Metrics;
use super::ws::{binary, close_msg, WsSink, WsStream};
use crate::config::{auth_proof, slot_proof};
use masq_core::crypto::{random_bytes, DeviceId};
use masq_core::wire::relay_frame::{codes, Frame, FrameError};

/// This connection's challenge: rendezvous joins prove slot keys over it.
pub(super) struct Challenge {
    /// The relay's key for this connection only.
    secret: StaticSecret,
    /// Its public half, as sent in the `Challenge` frame.
    public: [u8; 32],
    /// The fresh nonce sent with it.
    nonce: [u8; 32],
}

impl Challenge {
    /// A fresh key and nonce.
    fn new() -> Self {
        let secret = StaticSecret::from(*random_bytes::<32>());
        let public = *PublicKey::from(&secret).as_bytes();
        let nonce = *random_bytes::<32>();
        Self {
            secret,
            public,
            nonce,
        }
    }

    /// The `Challenge` frame's bytes.
    fn frame(&self) -> Vec<u8> {
        Frame::Challenge {
            relay_public: self.public,
            nonce: self.nonce,
        }
        .encode()
    }

    /// Checks an `Auth` answer; returns the device it authenticates.
    fn verify_auth(&self, public: [u8; 32], proof: [u8; 32]) -> Result<DeviceId, Refusal> {
        let device_public = PublicKey::from(public);
        let shared = self.secret.diffie_hellman(&device_public);
        // A low-order key makes the DH all zero: the proof would be
        // computable from public values alone.
        if !shared.was_contributory() {
            return Err(Refusal::LowOrderKey);
        }
        let expected = blake3::Hash::from(auth_proof(
            shared.as_bytes(),
            &self.nonce,
            &self.public,
            &public,
        ));
        // blake3::Hash equality is constant-time.
        if expected != blake3::Hash::from(proof) {
            return Err(Refusal::WrongProof);
        }
        Ok(DeviceId::from_public(&device_public))
    }

    /// Checks a rendezvous join's proof; returns the slot id it may join.
    pub(super) fn verify_slot(
        &self,
        slot_public: &[u8; 32],
        proof: &[u8; 32],
    ) -> Result<[u8; 32], String> {
        let dh = masq_core::crypto::contributory_dh(&self.secret, &PublicKey::from(*slot_public))
            .map_err(|e| format!("rendezvous refused: {e}"))?;
        let expected = blake3::Hash::from(slot_proof(&dh, &self.nonce, &self.public, slot_public));
        // blake3::Hash equality is constant-time.
        if expected != blake3::Hash::from(*proof) {
            return Err("rendezvous refused: the slot key proof does not verify".into());
        }
        Ok(masq_core::crypto::pairing::slot_id_of_public(slot_public))
    }
}

/// Why a connection's first frame does not authenticate it.
enum Refusal {
    /// `Auth` with a low-order public key.
    LowOrderKey,
    /// `Auth` whose proof does not verify.
    WrongProof,
    /// Some other frame before `Auth`.
    NotAuthenticated,
    /// A frame that did not decode.
    BadFrame(FrameError),
}

impl Refusal {
    /// The counter it adds to.
    fn counter<'m>(&self, m: &'m Metrics) -> &'m AtomicU64 {
        match self {
            Refusal::LowOrderKey | Refusal::WrongProof => &m.drops_auth_failed,
            Refusal::NotAuthenticated | Refusal::BadFrame(_) => &m.drops_bad_frame,
        }
    }

    /// The close code and reason.
    fn close(&self) -> (u16, String) {
        match self {
            Refusal::LowOrderKey => (
                codes::LOW_ORDER_KEY,
                "authentication refused: low-order public key".into(),
            ),
            Refusal::WrongProof => (codes::AUTH_FAILED, "authentication failed".into()),
            Refusal::NotAuthenticated => (codes::NOT_AUTHENTICATED, "authenticate first".into()),
            Refusal::BadFrame(e) => (codes::BAD_FRAME, format!("bad frame: {e}")),
        }
    }

    /// Whether an `Error` frame (the close's code and reason) goes before
    /// the close: not for a frame that did not decode.
    fn sends_error(&self) -> bool {
        !matches!(self, Refusal::BadFrame(_))
    }

    /// Counts it, then tells the device (`Error`, if any, and the close).
    async fn send<S>(self, sink: &mut WsSink<S>, metrics: &Metrics)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.counter(metrics).fetch_add(1, Ordering::Relaxed);
        let (code, message) = self.close();
        if self.sends_error() {
            let error = Frame::Error {
                code,
                message: message.clone(),
            };
            let _ = sink.send(binary(error.encode())).await;
        }
        let _ = sink.send(close_msg(code, &message)).await;
    }
}

/// Challenges the device and waits (at most `timeout`) for its `Auth`:
/// the device it proves to be and the challenge, or None if it did not
/// (after telling it why, when there is a why).
pub(super) async fn authenticate<S>(
    sink: &mut WsSink<S>,
    stream: &mut WsStream<S>,
    timeout: Duration,
    metrics: &Metrics,
) -> Option<(DeviceId, Challenge)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let challenge = Challenge::new();
    if sink.send(binary(challenge.frame())).await.is_err() {
        return None;
    }
    let answer = match tokio::time::timeout(timeout, first_binary(stream)).await {
        Err(_) => {
            let msg = close_msg(codes::HANDSHAKE_TIMEOUT, "authentication timed out");
            let _ = sink.send(msg).await;
            return None;
        }
        Ok(None) => return None,
        Ok(Some(answer)) => answer,
    };
    let verified = match answer {
        Ok(Frame::Auth { public, proof }) => challenge.verify_auth(public, proof),
        Ok(_) => Err(Refusal::NotAuthenticated),
        Err(e) => Err(Refusal::BadFrame(e)),
    };
    match verified {
        Ok(device) => Some((device, challenge)),
        Err(refusal) => {
            refusal.send(sink, metrics).await;
            None
        }
    }
}

/// The first binary message, decoded (pings and pongs are skipped); None
/// if the connection ends or sends anything else first.
async fn first_binary<S>(stream: &mut WsStream<S>) -> Option<Result<Frame, FrameError>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(Message::Binary(b))) => return Some(Frame::decode(&b)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return None,
        }
    }
}
