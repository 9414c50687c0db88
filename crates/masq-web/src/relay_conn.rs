//! The opening of one relay connection, sans I/O: the relay's challenge
//! comes in, the proof of a key goes out, and the connection is ready once
//! the relay accepts it. The page's sync engine ([`crate::sync`]) proves the
//! device key; a pairing connection ([`crate::pairing`]) a fresh one, then
//! the rendezvous slot key over the same challenge.
//!
//! The bytes are the native client's (`masq-relay::client`), from the same
//! core functions ([`masq_core::crypto::relay_auth`]).

use masq_core::crypto::relay_auth::{auth_proof, slot_proof};
use masq_core::crypto::{contributory_dh, DeviceKeypair};
use masq_core::wire::relay_frame::Frame;
use x25519_dalek::{PublicKey, StaticSecret};

/// Where the opening of a connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayConn {
    /// Connected; the relay's challenge has not come yet.
    AwaitChallenge,
    /// The proof went out; waiting for the relay's verdict.
    AwaitAuthOk {
        /// The relay's challenge (its key, the nonce): a rendezvous join
        /// proves the slot key over it.
        challenge: ([u8; 32], [u8; 32]),
    },
    /// Authenticated: frames may flow.
    Ready {
        /// The connection's challenge, as above.
        challenge: ([u8; 32], [u8; 32]),
    },
}

/// Why a connection cannot go on (the page closes the socket).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnError {
    /// A frame that does not belong at this point of the opening.
    #[error("relay protocol: {0}")]
    Protocol(&'static str),
    /// The relay's challenge key is of low order (no relay sends one).
    #[error("relay challenge: low-order key")]
    LowOrderKey,
    /// The relay refused the proof.
    #[error("relay refused the connection: {0}")]
    Refused(String),
}

impl RelayConn {
    /// A fresh connection.
    pub fn new() -> Self {
        RelayConn::AwaitChallenge
    }

    /// Whether frames may flow.
    pub fn is_ready(&self) -> bool {
        matches!(self, RelayConn::Ready { .. })
    }

    /// Takes one frame during the opening. Returns the frame to send (the
    /// proof), if any. Once [`Self::is_ready`], frames are the caller's.
    pub fn on_frame(
        &mut self,
        kp: &DeviceKeypair,
        frame: &Frame,
    ) -> Result<Option<Frame>, ConnError> {
        match (&*self, frame) {
            (
                RelayConn::AwaitChallenge,
                Frame::Challenge {
                    relay_public,
                    nonce,
                },
            ) => {
                let dh = kp
                    .contributory_dh(&PublicKey::from(*relay_public))
                    .map_err(|_| ConnError::LowOrderKey)?;
                let public = *kp.public().as_bytes();
                let proof = auth_proof(&dh, nonce, relay_public, &public);
                *self = RelayConn::AwaitAuthOk {
                    challenge: (*relay_public, *nonce),
                };
                Ok(Some(Frame::Auth { public, proof }))
            }
            (RelayConn::AwaitAuthOk { challenge }, Frame::AuthOk(id)) => {
                if *id != kp.device_id() {
                    return Err(ConnError::Protocol("the relay accepted another device"));
                }
                *self = RelayConn::Ready {
                    challenge: *challenge,
                };
                Ok(None)
            }
            (RelayConn::AwaitAuthOk { .. }, Frame::Error { message, .. }) => {
                Err(ConnError::Refused(message.clone()))
            }
            (RelayConn::Ready { .. }, _) => Ok(None),
            _ => Err(ConnError::Protocol("unexpected frame while authenticating")),
        }
    }

    /// The frame that joins the rendezvous slot of `slot_secret` (an X25519
    /// secret) on this connection: the relay admits only a proof of it over
    /// this connection's challenge.
    pub fn rendezvous_join(&self, slot_secret: &[u8; 32]) -> Result<Frame, ConnError> {
        let RelayConn::Ready {
            challenge: (relay_public, nonce),
        } = self
        else {
            return Err(ConnError::Protocol("joining a slot before authenticating"));
        };
        let secret = StaticSecret::from(*slot_secret);
        let slot_public = *PublicKey::from(&secret).as_bytes();
        let dh = contributory_dh(&secret, &PublicKey::from(*relay_public))
            .map_err(|_| ConnError::LowOrderKey)?;
        let proof = slot_proof(&dh, nonce, relay_public, &slot_public);
        Ok(Frame::RendezvousJoin { slot_public, proof })
    }
}

impl Default for RelayConn {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opening_answers_the_challenge_and_waits_for_the_verdict() {
        let kp = DeviceKeypair::generate();
        let relay = DeviceKeypair::generate();
        let mut c = RelayConn::new();
        assert!(c.on_frame(&kp, &Frame::AuthOk(kp.device_id())).is_err());
        let mut c2 = RelayConn::new();
        let challenge = Frame::Challenge {
            relay_public: *relay.public().as_bytes(),
            nonce: [7; 32],
        };
        let Some(Frame::Auth { public, proof }) = c2.on_frame(&kp, &challenge).unwrap() else {
            panic!("no proof");
        };
        // The relay's side of the proof.
        let dh = relay.diffie_hellman(&PublicKey::from(public));
        assert_eq!(
            proof,
            auth_proof(&dh, &[7; 32], relay.public().as_bytes(), &public)
        );
        assert!(c2.rendezvous_join(&[1; 32]).is_err());
        assert!(c2
            .on_frame(&kp, &Frame::AuthOk(DeviceKeypair::generate().device_id()))
            .is_err());
        c.clone_from(&c2);
        c.on_frame(&kp, &Frame::AuthOk(kp.device_id())).unwrap();
        assert!(c.is_ready());
        assert!(matches!(
            c.rendezvous_join(&[1; 32]),
            Ok(Frame::RendezvousJoin { .. })
        ));
        let low = Frame::Challenge {
            relay_public: [0; 32],
            nonce: [0; 32],
        };
        assert_eq!(
            RelayConn::new().on_frame(&kp, &low),
            Err(ConnError::LowOrderKey)
        );
    }
}
