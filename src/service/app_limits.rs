//! Fairness between the apps of one device: each app (a native app name or an
//! approved origin's namespace) may hold at most [`MAX_CONNECTIONS_PER_APP`]
//! connections, and all its connections together get at most `rate` requests
//! per second (a token bucket shared by them).
//! Requests over the rate are not refused: the connection stops reading until
//! its turn comes, so a flooding app slows itself down (TCP backpressure) while
//! the other apps' connections, each read by its own task, go on.
//!
//! Browser origins nobody has approved yet have a pool of their own
//! ([`MAX_PENDING_PER_ORIGIN`] each, [`MAX_PENDING_CONNECTIONS`] in all), so
//! however many origins a hostile page cycles through, they never take the
//! places of approved apps or of the admin (whose connections are counted
//! apart, see `service::MAX_ADMIN_CONNECTIONS`).
//!
//! Architecture invariant: knows app names and counts, nothing of what a
//! request does; the admin connection (the user) is never rate-limited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::rate_limit::TokenBucket;

/// Most simultaneous connections one app may hold (past this: 503).
pub const MAX_CONNECTIONS_PER_APP: usize = 64;
/// Default requests per second for one app, over all its connections (also
/// its burst). Above the app protocol's 30k/s target, below what one store
/// serves on a 2-core machine (~64k/s), so one app can never take it all.
pub const APP_REQUESTS_PER_SEC: u32 = 40_000;

/// Most simultaneous connections of one origin waiting for approval. A page
/// waiting for the user needs one per open tab; a handful is plenty, and it
/// keeps one origin from taking the whole pending pool.
pub const MAX_PENDING_PER_ORIGIN: usize = 4;
/// Most simultaneous connections waiting for approval (or being told they were
/// refused), all origins together. They do nothing but wait, so a small pool
/// suffices; it is separate from the approved apps' pool, so a page cycling
/// through origins (issue 16: 20 origins x 64 connections) can fill only this
/// one, and its memory stays bounded (each pending connection also gets only a
/// small read buffer, `service::PENDING_READ_BUFFER`).
pub const MAX_PENDING_CONNECTIONS: usize = 64;

/// Every app's connections and request budget.
#[derive(Debug)]
pub struct AppLimits {
    /// Requests per second per app (and burst).
    rate: u32,
    /// Per app key: open connections and the shared bucket.
    apps: Mutex<HashMap<String, AppUse>>,
    /// Connections waiting for approval: in all, and per origin.
    pending: Mutex<PendingUse>,
}

#[derive(Debug, Default)]
struct PendingUse {
    /// All pending connections.
    total: usize,
    /// Per origin (entries removed when they reach 0).
    per_origin: HashMap<String, usize>,
}

/// One admitted connection of an origin waiting for approval; gives its place
/// back when dropped.
#[derive(Debug)]
pub struct PendingSlot {
    /// Where to give the place back.
    limits: Arc<AppLimits>,
    /// The origin.
    origin: String,
}

/// Why a pending connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingRefusal {
    /// This origin already holds [`MAX_PENDING_PER_ORIGIN`].
    Origin,
    /// All origins together hold [`MAX_PENDING_CONNECTIONS`].
    Total,
}

#[derive(Debug)]
struct AppUse {
    /// Open connections of the app.
    connections: usize,
    /// The app's request budget, shared by its connections.
    bucket: Arc<Mutex<TokenBucket>>,
}

/// One admitted connection of an app; gives its place back when dropped.
#[derive(Debug)]
pub struct AppSlot {
    /// Where to give the place back.
    limits: Arc<AppLimits>,
    /// The app key.
    key: String,
    /// The app's bucket.
    bucket: Arc<Mutex<TokenBucket>>,
}

impl AppLimits {
    /// Limits with `rate` requests per second per app.
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            apps: Mutex::new(HashMap::new()),
            pending: Mutex::new(PendingUse::default()),
        }
    }

    /// A place for one more connection of `origin` waiting for approval.
    pub fn admit_pending(self: &Arc<Self>, origin: &str) -> Result<PendingSlot, PendingRefusal> {
        let mut p = self.pending.lock().map_err(|_| PendingRefusal::Total)?;
        if p.total >= MAX_PENDING_CONNECTIONS {
            return Err(PendingRefusal::Total);
        }
        let n = p.per_origin.entry(origin.to_string()).or_insert(0);
        if *n >= MAX_PENDING_PER_ORIGIN {
            return Err(PendingRefusal::Origin);
        }
        *n += 1;
        p.total += 1;
        Ok(PendingSlot {
            limits: self.clone(),
            origin: origin.to_string(),
        })
    }

    /// Pending connections now open (all origins).
    #[cfg(test)]
    pub fn pending_connections(&self) -> usize {
        self.pending.lock().map(|p| p.total).unwrap_or(0)
    }

    /// A place for one more connection of `key`, or None if it holds the maximum.
    pub fn admit(self: &Arc<Self>, key: &str) -> Option<AppSlot> {
        let mut apps = self.apps.lock().ok()?;
        let rate = self.rate;
        let used = apps.entry(key.to_string()).or_insert_with(|| AppUse {
            connections: 0,
            bucket: Arc::new(Mutex::new(TokenBucket::new(rate, rate))),
        });
        if used.connections >= MAX_CONNECTIONS_PER_APP {
            return None;
        }
        used.connections += 1;
        Some(AppSlot {
            limits: self.clone(),
            key: key.to_string(),
            bucket: used.bucket.clone(),
        })
    }
}

impl AppSlot {
    /// Waits for this app's turn to send one more request.
    pub async fn pace(&self) {
        let wait = match self.bucket.lock() {
            Ok(mut b) => b.reserve(),
            Err(_) => None,
        };
        if let Some(d) = wait {
            tokio::time::sleep(d).await;
        }
    }
}

impl Drop for AppSlot {
    fn drop(&mut self) {
        if let Ok(mut apps) = self.limits.apps.lock() {
            if let Some(used) = apps.get_mut(&self.key) {
                used.connections = used.connections.saturating_sub(1);
                if used.connections == 0 {
                    apps.remove(&self.key);
                }
            }
        }
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        if let Ok(mut p) = self.limits.pending.lock() {
            p.total = p.total.saturating_sub(1);
            if let Some(n) = p.per_origin.get_mut(&self.origin) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    p.per_origin.remove(&self.origin);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn connections_per_app_are_capped_and_given_back() {
        let limits = Arc::new(AppLimits::new(100));
        let slots: Vec<AppSlot> = (0..MAX_CONNECTIONS_PER_APP)
            .map(|_| limits.admit("flood").expect("under the cap"))
            .collect();
        assert!(limits.admit("flood").is_none(), "one too many");
        assert!(limits.admit("polite").is_some(), "other apps unaffected");
        drop(slots);
        assert!(limits.admit("flood").is_some(), "places come back");
        assert!(
            limits.apps.lock().unwrap().len() <= 1,
            "idle apps are forgotten"
        );
    }

    #[test]
    fn pending_connections_have_their_own_small_pool() {
        let limits = Arc::new(AppLimits::new(100));
        let mut slots = Vec::new();
        for _ in 0..MAX_PENDING_PER_ORIGIN {
            slots.push(
                limits
                    .admit_pending("http://a.example")
                    .expect("under the cap"),
            );
        }
        assert_eq!(
            limits.admit_pending("http://a.example").unwrap_err(),
            PendingRefusal::Origin
        );
        let mut i = 0;
        while limits.pending_connections() < MAX_PENDING_CONNECTIONS {
            if let Ok(s) = limits.admit_pending(&format!("http://o{i}.example")) {
                slots.push(s);
            }
            i += 1;
        }
        assert_eq!(
            limits.admit_pending("http://new.example").unwrap_err(),
            PendingRefusal::Total
        );
        // Approved apps are counted apart.
        assert!(limits.admit("app notes").is_some());
        drop(slots);
        assert_eq!(limits.pending_connections(), 0);
        assert!(limits.pending.lock().unwrap().per_origin.is_empty());
        assert!(limits.admit_pending("http://a.example").is_ok());
    }
}
