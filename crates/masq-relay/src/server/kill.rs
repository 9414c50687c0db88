//! [`Kill`]: how anything in the relay stops one connection (a full queue,
//! a newer connection of the device, a timeout, shutdown) with a close code
//! and a reason that the connection's writer then sends.
//!
//! Knows nothing of sockets, queues or the relay's tables.

use std::sync::Mutex;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// The kill code of an ordinary end (the device closed or went away): not
/// one of the relay's `codes`, it is written as a normal WebSocket close.
pub(super) const NORMAL_END: u16 = 0;

/// Asks a connection's tasks to stop, with a close code and reason.
#[derive(Default)]
pub(super) struct Kill {
    /// Wakes the connection's reader and writer.
    notify: Notify,
    /// The first (code, reason) asked for; later ones are ignored.
    reason: Mutex<Option<(u16, String)>>,
}

impl Kill {
    /// Stops the connection with `code` and `reason`, unless it was already
    /// told to stop (then the first reason stays).
    pub(super) fn kill(&self, code: u16, reason: &str) {
        if let Ok(mut r) = self.reason.lock() {
            if r.is_none() {
                *r = Some((code, reason.to_string()));
            }
        }
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// The (code, reason) the connection was stopped with, if it was.
    pub(super) fn reason(&self) -> Option<(u16, String)> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    /// Resolves when the connection is told to stop.
    pub(super) fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}
