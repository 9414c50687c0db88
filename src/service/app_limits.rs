//! Fairness between the apps of one device: each app (a native app name, an
//! approved origin's namespace, or a pending origin) may hold at most
//! [`MAX_CONNECTIONS_PER_APP`] connections, and all its connections together
//! get at most `rate` requests per second (a token bucket shared by them).
//! Requests over the rate are not refused: the connection stops reading until
//! its turn comes, so a flooding app slows itself down (TCP backpressure) while
//! the other apps' connections, each read by its own task, go on.
//!
//! Architecture invariant: knows app names and counts, nothing of what a
//! request does; the admin connection (the user) is never limited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::rate_limit::TokenBucket;

/// Most simultaneous connections one app may hold (past this: 503).
pub const MAX_CONNECTIONS_PER_APP: usize = 64;
/// Default requests per second for one app, over all its connections (also
/// its burst). Above the app protocol's 30k/s target, below what one store
/// serves on a 2-core machine (~64k/s), so one app can never take it all.
pub const APP_REQUESTS_PER_SEC: u32 = 40_000;

/// Every app's connections and request budget.
#[derive(Debug)]
pub struct AppLimits {
    /// Requests per second per app (and burst).
    rate: u32,
    /// Per app key: open connections and the shared bucket.
    apps: Mutex<HashMap<String, AppUse>>,
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
        }
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

#[cfg(test)]
mod tests {
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
}
