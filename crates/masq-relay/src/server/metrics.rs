//! The relay's counters ([`Metrics`]) and their OpenMetrics text for
//! `GET /metrics`, written by prometheus-client.
//!
//! Knows nothing of connections or frames: the other modules count, this
//! one only holds and renders.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Counters exported at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Live authenticated connections.
    pub connections: AtomicUsize,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Payloads forwarded.
    pub messages_forwarded: AtomicU64,
    /// Payload bytes forwarded.
    pub bytes_forwarded: AtomicU64,
    /// Sends to offline devices.
    pub drops_offline: AtomicU64,
    /// Sends to self.
    pub drops_to_self: AtomicU64,
    /// Sends refused by the rate limit.
    pub drops_rate_limited: AtomicU64,
    /// Sends refused because the recipient does not allow the sender.
    pub drops_not_allowed: AtomicU64,
    /// Sends refused because the recipient's queue (or the sender's share
    /// of it) was full.
    pub drops_recipient_busy: AtomicU64,
    /// Receivers disconnected for not reading.
    pub drops_too_slow: AtomicU64,
    /// Frames that did not decode or were not allowed.
    pub drops_bad_frame: AtomicU64,
    /// Failed authentications.
    pub drops_auth_failed: AtomicU64,
    /// Messages handed to the cluster for devices on other nodes.
    pub cluster_sent: AtomicU64,
    /// Messages from other nodes delivered to devices here.
    pub cluster_delivered: AtomicU64,
}

/// A counter family at one scrape: one label, one value per label value.
#[derive(Debug)]
struct CounterFamily {
    /// Name without `_total`.
    name: &'static str,
    /// The family's `# HELP` text.
    help: &'static str,
    /// The one label that tells its counters apart.
    label: &'static str,
    /// (label value, count) of each counter.
    values: Vec<(&'static str, u64)>,
}

/// The counters as read at one scrape, encoded by prometheus-client.
#[derive(Debug)]
struct MetricsSnapshot {
    /// Live authenticated connections (the one gauge).
    connections: u64,
    /// (name without `_total`, help, value) of the plain counters.
    counters: Vec<(&'static str, &'static str, u64)>,
    /// The labelled counters.
    families: Vec<CounterFamily>,
}

impl prometheus_client::collector::Collector for MetricsSnapshot {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let gauge = ConstGauge::new(self.connections);
        gauge.encode(encoder.encode_descriptor(
            "masq_relay_connections",
            "Live authenticated connections.",
            None,
            gauge.metric_type(),
        )?)?;
        for (name, help, value) in &self.counters {
            let counter = ConstCounter::new(*value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        for f in &self.families {
            let mut family = encoder.encode_descriptor(
                f.name,
                f.help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (label_value, value) in &f.values {
                let labels = [(f.label, *label_value)];
                ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// The OpenMetrics text format ([`METRICS_CONTENT_TYPE`]), as
    /// prometheus-client writes it.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let snapshot = MetricsSnapshot {
            connections: self.connections.load(Ordering::Relaxed) as u64,
            counters: vec![
                (
                    "masq_relay_connections_accepted",
                    "Connections accepted since start.",
                    g(&self.connections_total),
                ),
                ("masq_relay_messages", "Payloads forwarded.", g(&self.messages_forwarded)),
                ("masq_relay_bytes", "Payload bytes forwarded.", g(&self.bytes_forwarded)),
            ],
            families: vec![
                CounterFamily {
                    name: "masq_relay_cluster_messages",
                    help: "Messages handed to other nodes (sent) and from them to devices here (delivered).",
                    label: "direction",
                    values: vec![("sent", g(&self.cluster_sent)), ("delivered", g(&self.cluster_delivered))],
                },
                CounterFamily {
                    name: "masq_relay_drops",
                    help: "Messages and connections refused, by reason.",
                    label: "reason",
                    values: vec![
                        ("offline", g(&self.drops_offline)),
                        ("to_self", g(&self.drops_to_self)),
                        ("rate_limited", g(&self.drops_rate_limited)),
                        ("not_allowed", g(&self.drops_not_allowed)),
                        ("recipient_busy", g(&self.drops_recipient_busy)),
                        ("too_slow", g(&self.drops_too_slow)),
                        ("bad_frame", g(&self.drops_bad_frame)),
                        ("auth_failed", g(&self.drops_auth_failed)),
                    ],
                },
            ],
        };
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(snapshot));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
