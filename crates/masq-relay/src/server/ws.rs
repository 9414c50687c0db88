//! The WebSocket under a connection: its stream types, one write bounded
//! by [`WRITE_TIMEOUT`], and close frames carrying the relay's codes.
//!
//! Knows nothing of what the frames say, nor of the relay's tables.

use futures::stream::{SplitSink, SplitStream};
use futures::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::kill::{Kill, NORMAL_END};
use crate::config::WRITE_TIMEOUT;
use crate::http_head::Prefixed;
use masq_core::wire::relay_frame::codes;

/// A device's WebSocket, over the socket `S` after the request head the
/// relay read (replayed to tungstenite by [`Prefixed`]).
pub(super) type Ws<S> = tokio_tungstenite::WebSocketStream<Prefixed<S>>;
/// The writing half of a [`Ws`].
pub(super) type WsSink<S> = SplitSink<Ws<S>, Message>;
/// The reading half of a [`Ws`].
pub(super) type WsStream<S> = SplitStream<Ws<S>>;

/// The WebSocket close code of a normal closure (RFC 6455, 7.4.1).
const WS_NORMAL_CLOSURE: u16 = 1000;
/// RFC 6455 leaves close codes 4000 to 4999 to applications: the relay's
/// code N ([`codes`]) is close code 4000 + N (docs/protocol.md).
const WS_RELAY_CODES_BASE: u16 = 4000;

/// Writes one message within [`WRITE_TIMEOUT`]; false if the connection is
/// done (a timeout also kills it as too slow).
pub(super) async fn write_frame<K>(sink: &mut K, msg: Message, kill: &Kill) -> bool
where
    K: futures::Sink<Message> + Unpin,
{
    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            kill.kill(codes::TOO_SLOW, "write timed out");
            false
        }
    }
}

/// A close frame: [`NORMAL_END`] is a normal close (1000), others are
/// 4000 + [`codes`] value.
pub(super) fn close_msg(code: u16, reason: &str) -> Message {
    let code = if code == NORMAL_END {
        WS_NORMAL_CLOSURE
    } else {
        WS_RELAY_CODES_BASE + code
    };
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    }))
}

/// A relay frame's bytes as a binary WebSocket message.
pub(super) fn binary(frame: Vec<u8>) -> Message {
    Message::Binary(frame.into())
}
