//! The Redis link of a clustered relay node (the `cluster` feature): the
//! channel layout is described in [`super`].
//!
//! Architecture invariant: this module knows Redis and the channel layout; it
//! never touches the relay's connection table. It hands frames for local
//! devices to the server as [`Inbound`] events.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use masq_core::crypto::DeviceId;
use masq_core::wire::relay_frame::{codes, Frame};

use super::{Inbound, RemoteSend};

/// How long a node's claim that a device is online lives without a refresh.
pub const PRESENCE_TTL: Duration = Duration::from_secs(30);
/// How often a node refreshes the presence keys of its devices.
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(10);
/// How long a starting node keeps retrying an unreachable Redis before it
/// gives up: a relay started together with its Redis (a service manager, a
/// compose file) must not die because Redis took a second longer to listen.
pub const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// Pause between two attempts to reach Redis at start.
pub const CONNECT_RETRY_EVERY: Duration = Duration::from_millis(250);
/// Most publishes sent to Redis in one pipeline.
pub const PUBLISH_BATCH: usize = 256;
/// Publishes waiting for Redis.
pub const PUBLISH_QUEUE: usize = 65_536;
/// Events from Redis (deliveries, presence, rendezvous) waiting for this
/// node's server to apply them. Applying one is a non-blocking queue push
/// per connection, so the queue only fills if the server task stalls; then
/// further events are dropped with a warning rather than held without
/// bound. Pub/sub is at-most-once anyway (Redis drops a subscriber that
/// falls behind), and devices recover by the sync protocol's resends.
pub const INBOUND_QUEUE: usize = 65_536;
/// (Un)subscribe commands waiting for the Redis subscription connection.
/// A connection adds at most two (subscribe when it authenticates,
/// unsubscribe when it closes) plus two per rendezvous slot it opens, so a
/// relay within its connection limit never reaches this bound; past it a
/// command is dropped with a warning.
pub const SUBSCRIPTION_QUEUE: usize = 4 * crate::config::MAX_CONNECTIONS;
/// Device payload bytes waiting for Redis; past this, the connections that
/// send stop being read until Redis catches up (backpressure, no drops), so a
/// node's memory stays bounded when Redis is slower than its devices.
pub const MAX_PUBLISH_QUEUE_BYTES: usize = 64 * 1024 * 1024;

const KIND_FRAME: u8 = 0;
const KIND_CLAIM: u8 = 1;
const KIND_SEND: u8 = 2;
const SLOT_JOINED: u8 = 0;
const SLOT_DATA: u8 = 1;
const SLOT_LEFT: u8 = 2;

enum SubCmd {
    /// Subscribe; the sender (if any) hears when Redis has confirmed it.
    Subscribe(String, Option<tokio::sync::oneshot::Sender<()>>),
    Unsubscribe(String),
}

struct Publish {
    channel: String,
    payload: Vec<u8>,
    /// Sent to the server if nobody received the message.
    if_nobody: Option<Inbound>,
    /// Bytes counted in `Cluster::queued` for it (0: small control messages
    /// sent from background tasks, not counted).
    counted: usize,
}

/// A rendezvous member on this node: (device, connection).
type Member = (DeviceId, u64);

/// This node's link to the cluster.
pub struct Cluster {
    /// Random id of this node (hex), in claims, presence and member tags.
    node: String,
    /// For commands other than publish (presence keys, slot counters).
    conn: MultiplexedConnection,
    /// To the publisher task (in order).
    publish: mpsc::Sender<Publish>,
    /// Room for device payload bytes in `publish` (see [`MAX_PUBLISH_QUEUE_BYTES`]).
    room: Arc<tokio::sync::Semaphore>,
    /// To the subscription task (in order).
    subs: mpsc::Sender<SubCmd>,
    /// To the server.
    inbound: mpsc::Sender<Inbound>,
    /// Devices connected here (their presence keys are refreshed).
    local: Arc<Mutex<HashSet<DeviceId>>>,
    /// Rendezvous slots with members on this node.
    slots: Arc<Mutex<HashMap<[u8; 32], Vec<Member>>>>,
    /// Every task of this node's link: publisher, subscriber, refresher,
    /// and the short per-device ones (claims, presence queries).
    tasks: TaskTracker,
    /// Ends them all (when the link is dropped).
    stop: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
        self.tasks.close();
    }
}

/// Spawns a task of the link: owned by `tasks`, ended by `stop`.
fn spawn_owned(
    tasks: &TaskTracker,
    stop: &CancellationToken,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let stop = stop.clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = task => {}
        }
    });
}

fn dev_channel(d: &DeviceId) -> String {
    format!("masq:dev:{d}")
}
fn presence_key(d: &DeviceId) -> String {
    format!("masq:presence:{d}")
}
fn slot_name(s: &[u8; 32]) -> String {
    format!("masq:slot:{}", hex::encode(s))
}
const PRESENCE_CHANNEL: &str = "masq:presence";

/// A member tag: node id (16 bytes) and connection id (8 bytes).
fn tag(node: &str, conn_id: u64) -> [u8; 24] {
    let mut t = [0u8; 24];
    if let Ok(n) = hex::decode(node) {
        let len = n.len().min(16);
        t[..len].copy_from_slice(&n[..len]);
    }
    t[16..].copy_from_slice(&conn_id.to_be_bytes());
    t
}

impl Cluster {
    /// Like [`Cluster::connect`], but retries an unreachable Redis every
    /// [`CONNECT_RETRY_EVERY`] for up to [`CONNECT_WAIT`], warning each time.
    /// A bad URL fails at once.
    pub async fn connect_retrying(
        url: &str,
    ) -> redis::RedisResult<(Self, mpsc::Receiver<Inbound>)> {
        let started = tokio::time::Instant::now();
        loop {
            match Self::connect(url).await {
                Ok(c) => return Ok(c),
                Err(e)
                    if e.kind() != redis::ErrorKind::InvalidClientConfig
                        && started.elapsed() < CONNECT_WAIT =>
                {
                    tracing::warn!("cluster: cannot reach Redis at {url} yet ({e}); retrying");
                    tokio::time::sleep(CONNECT_RETRY_EVERY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Connects to Redis at `url` (one attempt); returns the link and the
    /// events for the server.
    pub async fn connect(url: &str) -> redis::RedisResult<(Self, mpsc::Receiver<Inbound>)> {
        let client = redis::Client::open(url)?;
        let conn = client.get_multiplexed_async_connection().await?;
        let (mut sink, mut stream) = client.get_async_pubsub().await?.split();
        sink.subscribe(PRESENCE_CHANNEL).await?;
        let node = hex::encode(*masq_core::crypto::random_bytes::<16>());
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (publish, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (subs, mut subs_rx) = mpsc::channel::<SubCmd>(SUBSCRIPTION_QUEUE);
        let local: Arc<Mutex<HashSet<DeviceId>>> = Arc::default();
        let slots: Arc<Mutex<HashMap<[u8; 32], Vec<Member>>>> = Arc::default();
        let room = Arc::new(tokio::sync::Semaphore::new(MAX_PUBLISH_QUEUE_BYTES));
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        spawn_owned(
            &tasks,
            &stop,
            publisher(conn.clone(), publish_rx, inbound.clone(), room.clone()),
        );
        spawn_owned(&tasks, &stop, async move {
            while let Some(cmd) = subs_rx.recv().await {
                let r = match cmd {
                    SubCmd::Subscribe(c, done) => {
                        let r = sink.subscribe(c).await;
                        if let (Ok(()), Some(done)) = (&r, done) {
                            let _ = done.send(());
                        }
                        r
                    }
                    SubCmd::Unsubscribe(c) => sink.unsubscribe(c).await,
                };
                if let Err(e) = r {
                    tracing::warn!("cluster: (un)subscribe failed: {e}");
                }
            }
        });
        {
            let (inbound, node, slots) = (inbound.clone(), node.clone(), slots.clone());
            spawn_owned(&tasks, &stop, async move {
                while let Some(msg) = stream.next().await {
                    let channel = msg.get_channel_name().to_string();
                    on_message(&channel, msg.get_payload_bytes(), &node, &slots, &inbound);
                }
                tracing::error!("cluster: the Redis subscription ended");
            });
        }
        {
            let (mut conn, local, node) = (conn.clone(), local.clone(), node.clone());
            spawn_owned(&tasks, &stop, async move {
                let mut tick = tokio::time::interval(PRESENCE_REFRESH);
                loop {
                    tick.tick().await;
                    let devices: Vec<DeviceId> = match local.lock() {
                        Ok(l) => l.iter().copied().collect(),
                        Err(_) => return,
                    };
                    if devices.is_empty() {
                        continue;
                    }
                    let mut pipe = redis::pipe();
                    for d in &devices {
                        pipe.cmd("SET")
                            .arg(presence_key(d))
                            .arg(&node)
                            .arg("EX")
                            .arg(PRESENCE_TTL.as_secs())
                            .ignore();
                    }
                    let r: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
                    if let Err(e) = r {
                        tracing::warn!("cluster: presence refresh failed: {e}");
                    }
                }
            });
        }
        Ok((
            Self {
                node,
                conn,
                publish,
                room,
                subs,
                inbound,
                local,
                slots,
                tasks,
                stop,
            },
            inbound_rx,
        ))
    }

    /// Queues a small control publish (claims, presence, rendezvous).
    fn publish(&self, channel: String, payload: Vec<u8>, if_nobody: Option<Inbound>) {
        let p = Publish {
            channel,
            payload,
            if_nobody,
            counted: 0,
        };
        if self.publish.try_send(p).is_err() {
            tracing::warn!("cluster: publish queue full; control message dropped");
        }
    }

    /// A device connected here: take its channel, claim it from other nodes,
    /// mark it online. The returned receiver fires once Redis has confirmed
    /// the subscription to the device's channel, i.e. once other nodes can
    /// reach the device (the "online" event goes out after that too); it is
    /// dropped unfired if the subscription failed.
    pub fn device_connected(&self, device: DeviceId) -> tokio::sync::oneshot::Receiver<()> {
        let (subscribed, subscribed_rx) = tokio::sync::oneshot::channel();
        let (reachable, reachable_rx) = tokio::sync::oneshot::channel();
        if let Ok(mut l) = self.local.lock() {
            l.insert(device);
        }
        let mut claim = vec![KIND_CLAIM];
        claim.extend_from_slice(self.node.as_bytes());
        self.publish(dev_channel(&device), claim, None);
        push_sub(
            &self.subs,
            SubCmd::Subscribe(dev_channel(&device), Some(subscribed)),
        );
        let mut conn = self.conn.clone();
        let node = self.node.clone();
        let publish = self.publish.clone();
        spawn_owned(&self.tasks, &self.stop, async move {
            // The key first, then the event: whoever hears "online" and asks
            // finds the key.
            let r: redis::RedisResult<()> = redis::cmd("SET")
                .arg(presence_key(&device))
                .arg(&node)
                .arg("EX")
                .arg(PRESENCE_TTL.as_secs())
                .query_async(&mut conn)
                .await;
            if let Err(e) = r {
                tracing::warn!("cluster: presence set failed: {e}");
            }
            let subscribed = subscribed_rx.await.is_ok();
            let _ = publish
                .send(Publish {
                    channel: PRESENCE_CHANNEL.into(),
                    payload: presence_payload(&device, true, &node),
                    if_nobody: None,
                    counted: 0,
                })
                .await;
            if subscribed {
                let _ = reachable.send(());
            }
        });
        reachable_rx
    }

    /// The device's connection here ended (and was not replaced here).
    /// `moved`: a newer connection on another node replaced it, so the
    /// device is still online (no presence change).
    pub fn device_disconnected(&self, device: DeviceId, moved: bool) {
        if let Ok(mut l) = self.local.lock() {
            l.remove(&device);
        }
        push_sub(&self.subs, SubCmd::Unsubscribe(dev_channel(&device)));
        if moved {
            return;
        }
        let mut conn = self.conn.clone();
        let node = self.node.clone();
        let publish = self.publish.clone();
        spawn_owned(&self.tasks, &self.stop, async move {
            // Only if the key is still ours: the device may be on another node now.
            let deleted: redis::RedisResult<i64> = redis::Script::new(
                "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end",
            )
            .key(presence_key(&device))
            .arg(&node)
            .invoke_async(&mut conn)
            .await;
            if let Ok(1) = deleted {
                let _ = publish.try_send(Publish {
                    channel: PRESENCE_CHANNEL.into(),
                    payload: presence_payload(&device, false, &node),
                    if_nobody: None,
                    counted: 0,
                });
            }
        });
    }

    /// Sends `frame` to `to`, held by some other node; `if_offline` goes back
    /// to the server if no node holds it.
    /// Waits for room in the queue to Redis (backpressure on the sender).
    pub async fn send_to_device(&self, send: RemoteSend) {
        let mut payload = Vec::with_capacity(send.frame.len() + 9);
        payload.push(KIND_SEND);
        payload.extend_from_slice(&send.msg_id.to_be_bytes());
        payload.extend_from_slice(&send.frame);
        let len = payload.len().min(MAX_PUBLISH_QUEUE_BYTES);
        let Ok(permit) = self.room.acquire_many(len as u32).await else {
            return;
        };
        permit.forget(); // given back by the publisher once sent
        let p = Publish {
            channel: dev_channel(&send.to),
            payload,
            if_nobody: Some(send.if_offline),
            counted: len,
        };
        if self.publish.send(p).await.is_err() {
            self.room.add_permits(len);
        }
    }

    /// Answers a refused message to its sender, on whatever node holds it.
    pub fn refuse(&self, sender: DeviceId, frame: Vec<u8>) {
        let mut payload = Vec::with_capacity(frame.len() + 1);
        payload.push(KIND_FRAME);
        payload.extend_from_slice(&frame);
        self.publish(dev_channel(&sender), payload, None);
    }

    /// Answers a presence subscription for devices not connected here.
    pub fn query_presence(&self, device: DeviceId, conn_id: u64, ids: Vec<DeviceId>) {
        if ids.is_empty() {
            return;
        }
        let mut conn = self.conn.clone();
        let inbound = self.inbound.clone();
        spawn_owned(&self.tasks, &self.stop, async move {
            let keys: Vec<String> = ids.iter().map(presence_key).collect();
            let vals: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap_or_else(|_| vec![None; keys.len()]);
            for (id, v) in ids.into_iter().zip(vals) {
                push_inbound(
                    &inbound,
                    Inbound::PresenceTo {
                        device,
                        conn_id,
                        id,
                        online: v.is_some(),
                    },
                );
            }
        });
    }

    /// A connection joins rendezvous slot `s` (at most two members in the
    /// whole cluster; a Redis counter decides).
    pub fn rendezvous_join(&self, device: DeviceId, conn_id: u64, s: [u8; 32], ttl: Duration) {
        let mut conn = self.conn.clone();
        let (inbound, slots, node) = (self.inbound.clone(), self.slots.clone(), self.node.clone());
        let (subs, publish) = (self.subs.clone(), self.publish.clone());
        spawn_owned(&self.tasks, &self.stop, async move {
            let name = slot_name(&s);
            let n: redis::RedisResult<(i64, i64)> = redis::pipe()
                .cmd("INCR")
                .arg(&name)
                .cmd("EXPIRE")
                .arg(&name)
                .arg(ttl.as_secs().max(1))
                .query_async(&mut conn)
                .await;
            let n = match n {
                Ok((n, _)) => n,
                Err(e) => {
                    tracing::warn!("cluster: rendezvous counter failed: {e}");
                    i64::MAX
                }
            };
            if n > 2 {
                push_inbound(
                    &inbound,
                    Inbound::ToConn {
                        device,
                        conn_id,
                        frame: Frame::Error {
                            code: codes::RENDEZVOUS_REFUSED,
                            message: "rendezvous slot is full or already used".into(),
                        }
                        .encode(),
                    },
                );
                return;
            }
            let first_here = match slots.lock() {
                Ok(mut sl) => {
                    let m = sl.entry(s).or_default();
                    m.push((device, conn_id));
                    m.len() == 1
                }
                Err(_) => return,
            };
            if first_here {
                push_sub(&subs, SubCmd::Subscribe(name.clone(), None));
            }
            if n == 2 {
                // Give the subscription a moment to be in place on both sides.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut payload = vec![SLOT_JOINED];
                payload.extend_from_slice(&tag(&node, conn_id));
                let _ = publish
                    .send(Publish {
                        channel: name,
                        payload,
                        if_nobody: None,
                        counted: 0,
                    })
                    .await;
                push_inbound(
                    &inbound,
                    Inbound::ToConn {
                        device,
                        conn_id,
                        frame: Frame::RendezvousPeer { joined: true }.encode(),
                    },
                );
            }
        });
    }

    /// Whether this connection is in a rendezvous slot (on this node).
    pub fn in_slot(&self, device: DeviceId, conn_id: u64) -> Option<[u8; 32]> {
        let slots = self.slots.lock().ok()?;
        slots
            .iter()
            .find(|(_, m)| m.contains(&(device, conn_id)))
            .map(|(s, _)| *s)
    }

    /// Data for the other member of the connection's slot.
    pub fn rendezvous_send(&self, conn_id: u64, s: [u8; 32], data: Vec<u8>) {
        let mut payload = vec![SLOT_DATA];
        payload.extend_from_slice(&tag(&self.node, conn_id));
        payload.extend_from_slice(&data);
        self.publish(slot_name(&s), payload, None);
    }

    /// The connection left (or closed); the other member is told.
    pub fn rendezvous_leave(&self, device: DeviceId, conn_id: u64) {
        let Some(s) = self.in_slot(device, conn_id) else {
            return;
        };
        let last = match self.slots.lock() {
            Ok(mut sl) => {
                let m = sl.entry(s).or_default();
                m.retain(|x| *x != (device, conn_id));
                let empty = m.is_empty();
                if empty {
                    sl.remove(&s);
                }
                empty
            }
            Err(_) => return,
        };
        let mut payload = vec![SLOT_LEFT];
        payload.extend_from_slice(&tag(&self.node, conn_id));
        self.publish(slot_name(&s), payload, None);
        if last {
            push_sub(&self.subs, SubCmd::Unsubscribe(slot_name(&s)));
        }
    }
}

fn presence_payload(device: &DeviceId, online: bool, node: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(33 + node.len());
    p.extend_from_slice(device.as_bytes());
    p.push(online as u8);
    p.extend_from_slice(node.as_bytes());
    p
}

/// One message from Redis, turned into events for the server.
fn on_message(
    channel: &str,
    payload: &[u8],
    node: &str,
    slots: &Mutex<HashMap<[u8; 32], Vec<Member>>>,
    inbound: &mpsc::Sender<Inbound>,
) {
    if channel == PRESENCE_CHANNEL {
        if payload.len() < 33 || &payload[33..] == node.as_bytes() {
            return;
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&payload[..32]);
        push_inbound(
            inbound,
            Inbound::Presence {
                device: DeviceId(id),
                online: payload[32] != 0,
            },
        );
    } else if let Some(hex_id) = channel.strip_prefix("masq:dev:") {
        let Some(device) = hex::decode(hex_id)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(DeviceId)
        else {
            return;
        };
        match payload.split_first() {
            Some((&KIND_FRAME, frame)) => {
                push_inbound(
                    inbound,
                    Inbound::ToDevice {
                        device,
                        frame: frame.to_vec(),
                    },
                );
            }
            Some((&KIND_SEND, rest)) if rest.len() >= 8 + 34 => {
                let mut id = [0u8; 8];
                id.copy_from_slice(&rest[..8]);
                let frame = &rest[8..];
                // A Deliver frame: version, type, sender (32), payload.
                let mut from = [0u8; 32];
                from.copy_from_slice(&frame[2..34]);
                push_inbound(
                    inbound,
                    Inbound::Deliver {
                        device,
                        from: DeviceId(from),
                        msg_id: u64::from_be_bytes(id),
                        frame: frame.to_vec(),
                    },
                );
            }
            Some((&KIND_CLAIM, claimer)) if claimer != node.as_bytes() => {
                push_inbound(inbound, Inbound::Claimed(device));
            }
            _ => {}
        }
    } else if let Some(hex_slot) = channel.strip_prefix("masq:slot:") {
        let Some(s) = hex::decode(hex_slot)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            return;
        };
        if payload.len() < 25 {
            return;
        }
        let (kind, from, data) = (payload[0], &payload[1..25], &payload[25..]);
        let members: Vec<Member> = match slots.lock() {
            Ok(sl) => sl.get(&s).cloned().unwrap_or_default(),
            Err(_) => return,
        };
        for (device, conn_id) in members {
            if tag(node, conn_id).as_slice() == from {
                continue; // its own message
            }
            let frame = match kind {
                SLOT_JOINED => Frame::RendezvousPeer { joined: true },
                SLOT_LEFT => Frame::RendezvousPeer { joined: false },
                SLOT_DATA => Frame::RendezvousData(data.to_vec()),
                _ => continue,
            };
            push_inbound(
                inbound,
                Inbound::ToConn {
                    device,
                    conn_id,
                    frame: frame.encode(),
                },
            );
        }
    }
}

/// Hands an event to the server without waiting (see [`INBOUND_QUEUE`]).
fn push_inbound(inbound: &mpsc::Sender<Inbound>, event: Inbound) {
    if let Err(mpsc::error::TrySendError::Full(_)) = inbound.try_send(event) {
        tracing::warn!(
            "cluster: inbound queue full ({INBOUND_QUEUE}); an event from Redis was dropped"
        );
    }
}

/// Queues a (un)subscribe without waiting (see [`SUBSCRIPTION_QUEUE`]).
fn push_sub(subs: &mpsc::Sender<SubCmd>, cmd: SubCmd) {
    if let Err(mpsc::error::TrySendError::Full(_)) = subs.try_send(cmd) {
        tracing::warn!(
            "cluster: subscription queue full ({SUBSCRIPTION_QUEUE}); a (un)subscribe was dropped"
        );
    }
}

/// Sends publishes in order, many per round trip.
async fn publisher(
    mut conn: MultiplexedConnection,
    mut rx: mpsc::Receiver<Publish>,
    inbound: mpsc::Sender<Inbound>,
    room: Arc<tokio::sync::Semaphore>,
) {
    let mut batch: Vec<Publish> = Vec::with_capacity(PUBLISH_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < PUBLISH_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        for p in &batch {
            pipe.cmd("PUBLISH").arg(&p.channel).arg(&p.payload);
        }
        let counts: redis::RedisResult<Vec<i64>> = pipe.query_async(&mut conn).await;
        let counts = counts.unwrap_or_else(|e| {
            tracing::warn!("cluster: publish failed: {e}");
            vec![0; batch.len()]
        });
        let bytes: usize = batch.iter().map(|p| p.counted).sum();
        room.add_permits(bytes);
        for (p, n) in batch.drain(..).zip(counts) {
            if n == 0 {
                if let Some(i) = p.if_nobody {
                    push_inbound(&inbound, i);
                }
            }
        }
    }
}
