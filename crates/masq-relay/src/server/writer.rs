//! A connection's writer task ([`Writer`]): drains the connection's bounded
//! queue, then its pending presence states, pings on a timer, and when the
//! connection is killed writes the close frame with the kill's code and
//! reason.
//!
//! Knows nothing of what it writes, nor of the relay's tables: it owns the
//! socket's writing half and the receiving end of one queue.

use std::time::Duration;

use futures::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::routing::{Out, Peer};
use super::ws::{binary, close_msg, write_frame, WsSink};
use crate::config::{CLOSE_FRAME_TIMEOUT, SOCKET_CLOSE_TIMEOUT};

/// The writing side of one connection.
pub(super) struct Writer<S> {
    /// The socket's writing half.
    sink: WsSink<S>,
    /// The receiving end of the connection's queue.
    queue: mpsc::Receiver<Out>,
    /// The connection (its queue accounting, presence states and kill).
    peer: Peer,
    /// How often to ping.
    ping_interval: Duration,
}

impl<S> Writer<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// A writer for `peer`'s queue.
    pub(super) fn new(
        sink: WsSink<S>,
        queue: mpsc::Receiver<Out>,
        peer: Peer,
        ping_interval: Duration,
    ) -> Self {
        Self {
            sink,
            queue,
            peer,
            ping_interval,
        }
    }

    /// Writes until the connection is killed or a write fails, then closes.
    /// Biased: what was queued first (`AuthOk`) is written first.
    pub(super) async fn run(mut self) {
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = self.peer.kill.notified() => break,
                out = self.queue.recv() => {
                    let Some(out) = out else { break };
                    self.peer.dequeued(&out);
                    if !self.write(binary(out.frame)).await {
                        break;
                    }
                }
                _ = self.peer.presence.notified() => {
                    if !self.write_presence().await {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if !self.write(Message::Ping(Vec::new().into())).await {
                        break;
                    }
                }
            }
        }
        self.close().await;
    }

    /// Writes one message; false if the connection is done.
    async fn write(&mut self, msg: Message) -> bool {
        write_frame(&mut self.sink, msg, &self.peer.kill).await
    }

    /// Writes the pending presence states; false if the connection is done.
    async fn write_presence(&mut self) -> bool {
        for frame in self.peer.presence.take_frames() {
            if !self.write(binary(frame)).await {
                return false;
            }
        }
        true
    }

    /// Sends the kill's close frame, if any, and closes the socket, each
    /// within its timeout.
    async fn close(mut self) {
        if let Some((code, reason)) = self.peer.kill.reason() {
            let _ = tokio::time::timeout(
                CLOSE_FRAME_TIMEOUT,
                self.sink.send(close_msg(code, &reason)),
            )
            .await;
        }
        let _ = tokio::time::timeout(SOCKET_CLOSE_TIMEOUT, self.sink.close()).await;
    }
}
