//! One simulated world: N devices (pages: the core's device over the
//! page's in-memory store, with a disk that keeps only what was committed),
//! a relay that speaks the real frames (challenge and proof, allow lists,
//! presence, forwarding, undeliverable answers), and a network between them
//! that loses, duplicates, delays and reorders, partitions pairs, restarts
//! the relay, cuts a device's connection and the power of a device.
//!
//! Everything is driven by one seed: the world's choices by [`SimRng`], the
//! core's keys, nonces and ids by `crypto::entropy::SeededEntropy`, and
//! time by the world's clock. Nothing here reads the OS's clock or
//! randomness, so a seed replays a run byte for byte
//! ([`Report::digest`] hashes every frame every device sent).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use masq_core::api::execute::{execute, Outcome};
use masq_core::api::{parse_request, ApiError};
use masq_core::crypto::envelope::Envelope;
use masq_core::crypto::{DeviceId, DeviceKeypair};
use masq_core::device::meta;
use masq_core::layout::meta as layout;
use masq_core::records::WriteSet;
use masq_core::wire::device::DevicePacket;
use masq_core::wire::relay_frame::{Frame, UndeliverableReason};
use masq_web::peer_store::PeerStore;
use masq_web::sync::PageSync;
use masq_web::tables::Tables;
use serde_json::{json, Value};

use crate::rng::SimRng;

/// The app every simulated page holds.
pub const APP: &str = "notes";
/// The wall clock at the start of every world (seconds since the epoch).
pub const START_SECS: u64 = 1_800_000_000;
/// How often a page's timer fires (the page's own is about a second).
pub const TICK: Duration = Duration::from_secs(1);
/// Longest healing phase: every fault ends, every device comes back, and
/// the world must converge within this much simulated time (a few resync
/// intervals: a lost message costs at most two of them).
pub const HEAL_LIMIT: Duration = Duration::from_secs(240);
/// Snapshots of its disk kept per device for rollbacks: enough to go back
/// further than the last one, few enough that copies stay cheap.
pub const SNAPSHOTS_KEPT: usize = 3;

/// Which faults a world injects, and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Chance that a forwarded packet is lost.
    pub loss: f64,
    /// Chance that a forwarded packet arrives twice.
    pub duplicate: f64,
    /// Longest delay of a forwarded packet, ms (random delays reorder).
    pub max_delay_ms: u64,
    /// Chance per step that a pair of devices is cut off for a while.
    pub partition: f64,
    /// Chance per step that the relay restarts (every connection drops,
    /// every packet in flight is lost).
    pub relay_restart: f64,
    /// Chance per step that one device's connection drops for a while.
    pub disconnect: f64,
    /// Chance per step that one device loses power: everything not
    /// committed is gone; it comes back later from its disk.
    pub crash: f64,
    /// Chance that a batch's commit is cut by a power loss (its requests
    /// were never acknowledged, its frames never leave).
    pub crash_before_commit: f64,
    /// Largest skew of a device's wall clock, ms, either way.
    pub max_skew_ms: u64,
    /// Whether a member removes another one during the run.
    pub removal: bool,
    /// Chance per step that one device's disk goes back to an older
    /// snapshot of itself (a restored backup, a virtual machine's snapshot):
    /// its power goes, and it boots from what the disk held then.
    pub rollback: f64,
    /// Chance per step that a device changes its sync preferences: turns
    /// the app off or on towards one peer, or pauses or resumes all its
    /// sync. Everything is turned back on when the world heals.
    pub prefs: f64,
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Self {
        Faults {
            loss: 0.0,
            duplicate: 0.0,
            max_delay_ms: 0,
            partition: 0.0,
            relay_restart: 0.0,
            disconnect: 0.0,
            crash: 0.0,
            crash_before_commit: 0.0,
            max_skew_ms: 0,
            removal: false,
            rollback: 0.0,
            prefs: 0.0,
        }
    }
}

/// What a world is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Devices (2 to 8).
    pub devices: usize,
    /// Workload and fault steps before the world heals.
    pub steps: usize,
    /// The faults.
    pub faults: Faults,
    /// A deliberate bug, to show the checks catch it (tests of the
    /// simulator itself); `None` in every real run.
    pub sabotage: Option<Sabotage>,
}

/// A deliberate bug the simulator plants in its own harness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    /// Device 0 answers its writes without committing them, and loses its
    /// power before anything leaves: acknowledged writes are lost.
    AcknowledgeWithoutCommit,
}

impl Config {
    /// The world a seed makes: 2 to 5 devices, a few hundred steps, and
    /// faults of every kind at rates the seed picks.
    pub fn for_seed(seed: u64) -> Self {
        let mut r = SimRng::new(seed ^ 0xc0f1_6000);
        let devices = r.range(2, 6) as usize;
        let steps = r.range(60, 300) as usize;
        let faults = Faults {
            loss: [0.0, 0.02, 0.1][r.index(3)],
            duplicate: [0.0, 0.02, 0.1][r.index(3)],
            max_delay_ms: [5, 50, 500][r.index(3)],
            partition: [0.0, 0.01][r.index(2)],
            relay_restart: [0.0, 0.005][r.index(2)],
            disconnect: [0.0, 0.01][r.index(2)],
            crash: [0.0, 0.01][r.index(2)],
            crash_before_commit: [0.0, 0.01][r.index(2)],
            max_skew_ms: [0, 600_000][r.index(2)],
            removal: devices > 2 && r.chance(0.3),
            rollback: 0.0,
            prefs: 0.0,
        };
        // Drawn last, so the faults above stay what each seed drew before
        // rollbacks existed.
        let faults = Faults {
            rollback: [0.0, 0.005][r.index(2)],
            prefs: [0.0, 0.01][r.index(2)],
            ..faults
        };
        Config {
            devices,
            steps,
            faults,
            sabotage: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Frames the devices sent.
    pub frames: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Requests acknowledged (committed, then answered).
    pub acknowledged: u64,
    /// Faults injected.
    pub faults: u64,
    /// Writes the removed device made after every member knew, checked
    /// to be absent everywhere.
    pub after_removal_writes: u64,
    /// Disks taken back to an older snapshot.
    pub rollbacks: u64,
    /// Simulated time until the world converged.
    pub sim_time: Duration,
    /// BLAKE3 of every frame every device sent, in order: equal for two
    /// runs of one seed.
    pub digest: [u8; 32],
}

/// Why a run failed: which check, on what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// What went wrong.
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed {}: {}", self.seed, self.what)
    }
}

/// A page's memory: lost when its power is.
struct Live {
    store: PeerStore,
    sync: PageSync,
}

/// One simulated device.
struct Node {
    /// Its id (stable across crashes: the identity is on its disk).
    id: DeviceId,
    /// What it committed (its IndexedDB).
    disk: Tables,
    /// Its memory, `None` while its power is off.
    live: Option<Live>,
    /// Its relay connection's number, `None` while it has none. A packet
    /// addressed to an older connection is never delivered.
    conn: Option<u64>,
    /// Its wall clock's skew.
    skew_ms: i64,
    /// When its timer fires next.
    next_tick: Duration,
    /// When it comes back (power or connection), if it is away.
    back_at: Option<Duration>,
    /// Removed from the group by another member.
    removed: bool,
    /// Requests it made (for unique keys).
    counter: u64,
    /// Older copies of its disk, and when each was taken, for rollbacks.
    snapshots: Vec<(Duration, Tables)>,
}

/// A frame on its way to a device.
struct Flight {
    /// When it arrives.
    at: Duration,
    /// Tie-breaker: the order it was sent in.
    seq: u64,
    /// The device.
    to: usize,
    /// The connection it was sent on.
    conn: u64,
    /// The frame.
    frame: Vec<u8>,
}

/// The relay's view of one connection.
#[derive(Default)]
struct RelayConn {
    /// Who may reach this device.
    allow: BTreeSet<DeviceId>,
    /// Whose presence it watches.
    watch: BTreeSet<DeviceId>,
}

/// The expected state of a key only its owner writes.
#[derive(Debug, Clone, PartialEq)]
struct Expect {
    /// Its owner.
    owner: usize,
    /// The last acknowledged value (`None`: deleted).
    value: Option<Value>,
    /// When it was acknowledged.
    at: Duration,
    /// Its owner's disk went back to before `at`: the write may be lost
    /// with it (if it had not left the device yet), so only convergence is
    /// checked for this key, not its value.
    uncertain: bool,
}

/// The world.
struct World {
    seed: u64,
    cfg: Config,
    rng: SimRng,
    now: Duration,
    nodes: Vec<Node>,
    relay_key: DeviceKeypair,
    relay_conns: BTreeMap<usize, RelayConn>,
    next_conn: u64,
    flights: Vec<Flight>,
    next_seq: u64,
    /// Pairs cut off until a time.
    partitions: BTreeMap<(usize, usize), Duration>,
    /// Keys each owner wrote and the last acknowledged value.
    expect: BTreeMap<String, Expect>,
    /// Sync turned off: (device, peer) pairs whose app is off, and
    /// devices that paused all their sync.
    sync_off: BTreeSet<(usize, usize)>,
    paused: BTreeSet<usize>,
    /// A removal: (who was removed, who removed it, when).
    removal: Option<(usize, usize, Duration)>,
    /// When every remaining member had recorded the removal.
    removal_known_at: Option<Duration>,
    /// Keys the removed device wrote after that.
    written_after_removal: Vec<String>,
    /// Every nonce sealed, and every (sender, recipient, ratchet key, n):
    /// with the envelope's hash.
    nonces: BTreeMap<[u8; 24], [u8; 32]>,
    message_keys: BTreeMap<(DeviceId, DeviceId, [u8; 32], u32), [u8; 32]>,
    report: Report,
    hasher: blake3::Hasher,
}

/// Runs the world of `seed` as `cfg` says, heals it, and checks it.
pub fn run(seed: u64, cfg: &Config) -> Result<Report, Failure> {
    let cfg = cfg.clone();
    let outcome = std::panic::catch_unwind(move || {
        masq_core::crypto::entropy::with_source(
            Box::new(masq_core::crypto::entropy::SeededEntropy::new(seed)),
            || World::new(seed, cfg).and_then(World::run),
        )
    });
    match outcome {
        Ok(r) => r,
        Err(panic) => Err(Failure {
            seed,
            what: format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ),
        }),
    }
}

impl World {
    fn new(seed: u64, cfg: Config) -> Result<Self, Failure> {
        let mut rng = SimRng::new(seed);
        let relay_key = DeviceKeypair::generate();
        let mut world = World {
            seed,
            nodes: Vec::new(),
            relay_key,
            relay_conns: BTreeMap::new(),
            next_conn: 1,
            flights: Vec::new(),
            next_seq: 0,
            partitions: BTreeMap::new(),
            expect: BTreeMap::new(),
            sync_off: BTreeSet::new(),
            paused: BTreeSet::new(),
            removal: None,
            removal_known_at: None,
            written_after_removal: Vec::new(),
            nonces: BTreeMap::new(),
            message_keys: BTreeMap::new(),
            report: Report {
                seed,
                frames: 0,
                bytes: 0,
                acknowledged: 0,
                faults: 0,
                after_removal_writes: 0,
                rollbacks: 0,
                sim_time: Duration::ZERO,
                digest: [0; 32],
            },
            hasher: blake3::Hasher::new(),
            now: Duration::ZERO,
            rng: SimRng::new(0),
            cfg,
        };
        for _ in 0..world.cfg.devices.clamp(2, 8) {
            let skew = world.cfg.faults.max_skew_ms;
            let skew_ms = rng.range(0, 2 * skew + 1) as i64 - skew as i64;
            let node = world.boot(Tables::new(), skew_ms)?;
            world.nodes.push(node);
        }
        world.rng = rng;
        world.pair_everyone()?;
        for i in 0..world.nodes.len() {
            world.connect(i)?;
        }
        Ok(world)
    }

    fn fail(&self, what: impl Into<String>) -> Failure {
        Failure {
            seed: self.seed,
            what: what.into(),
        }
    }

    /// The wall clock of a device with `skew_ms`.
    fn clock(now: Duration, skew_ms: i64) -> Duration {
        let ms = (START_SECS * 1000 + now.as_millis() as u64) as i64 + skew_ms;
        Duration::from_millis(ms.max(0) as u64)
    }

    fn node_clock(&self, i: usize) -> Duration {
        Self::clock(self.now, self.nodes[i].skew_ms)
    }

    /// A page opened from `disk`, with its first commit done.
    fn boot(&self, disk: Tables, skew_ms: i64) -> Result<Node, Failure> {
        let store =
            PeerStore::open(APP, disk.clone()).map_err(|e| self.fail(format!("open: {e}")))?;
        store.set_time(Self::clock(self.now, skew_ms).as_secs() as i64);
        let sync = PageSync::open(&store).map_err(|e| self.fail(format!("device open: {e}")))?;
        let mut node = Node {
            id: sync.device_id(),
            disk,
            live: Some(Live { store, sync }),
            conn: None,
            skew_ms,
            next_tick: self.now + TICK,
            back_at: None,
            removed: false,
            counter: 0,
            snapshots: Vec::new(),
        };
        // The identity a new device made is committed before anything.
        if let Some(live) = &node.live {
            let w = live
                .store
                .take_writes()
                .map_err(|e| self.fail(format!("{e}")))?;
            node.disk.apply(&w);
        }
        Ok(node)
    }

    /// Every device paired with every other (each as if it paired here).
    fn pair_everyone(&mut self) -> Result<(), Failure> {
        let publics: Vec<_> = self
            .nodes
            .iter()
            .map(|n| n.live.as_ref().map(|l| l.sync.keypair().public()))
            .collect();
        for i in 0..self.nodes.len() {
            let me = self.nodes[i].id;
            let mut w = WriteSet::new();
            for (j, public) in publics.iter().enumerate() {
                if i == j {
                    continue;
                }
                let public =
                    public.ok_or_else(|| self.fail("a device without power at pairing"))?;
                layout::stage_peer(
                    &mut w,
                    &public,
                    &format!("device {j}"),
                    START_SECS as i64,
                    &me,
                )
                .map_err(|e| self.fail(e.to_string()))?;
            }
            let seed = self.seed;
            let live = self.nodes[i].live.as_mut().ok_or_else(|| no_power(seed))?;
            live.store.put_records(w);
            live.sync.peers_changed(&live.store).map_err(|e| Failure {
                seed: self.seed,
                what: format!("peers_changed: {e}"),
            })?;
            self.end_batch(i, false)?; // pairing is set up, not a fault
        }
        Ok(())
    }

    /// The end of a batch on device `i`: offer what changed, commit the
    /// outbox (unless the power goes first), then hand the frames to the
    /// relay. Returns whether the commit happened.
    fn end_batch(&mut self, i: usize, may_crash: bool) -> Result<bool, Failure> {
        let seed = self.seed;
        let err = |what: String| Failure { seed, what };
        let Some(live) = self.nodes[i].live.as_mut() else {
            return Ok(false);
        };
        live.sync
            .flush(&live.store)
            .map_err(|e| err(format!("device {i}: flush: {e}")))?;
        let writes = live
            .store
            .take_writes()
            .map_err(|e| err(format!("device {i}: commit: {e}")))?;
        if may_crash && self.rng.chance(self.cfg.faults.crash_before_commit) {
            self.power_off(i);
            return Ok(false);
        }
        self.nodes[i].disk.apply(&writes);
        let frames = match self.nodes[i].live.as_mut() {
            Some(live) => live.sync.take_frames(),
            None => Vec::new(),
        };
        for f in frames {
            self.relay_receives(i, f)?;
        }
        Ok(true)
    }

    /// One request of the app protocol on device `i`; `Some(answer)` once
    /// acknowledged (committed, then answered).
    fn request(&mut self, i: usize, req: Value) -> Result<Option<Value>, Failure> {
        let clock = self.node_clock(i);
        let mut req = req;
        req["id"] = json!(1);
        let env = parse_request(&req.to_string()).map_err(|e| self.fail(format!("{e:?}")))?;
        let Some(live) = self.nodes[i].live.as_mut() else {
            return Ok(None);
        };
        live.store.set_time(clock.as_secs() as i64);
        let answer: Result<Outcome<_>, ApiError> = execute(&live.store, env.request);
        let answer = match answer {
            Ok(Outcome::Value(v)) => v,
            Ok(Outcome::Subscribe(_)) => Value::Null,
            Err(e) => return Err(self.fail(format!("device {i}: {req} failed: {e}"))),
        };
        if i == 0 && self.cfg.sabotage == Some(Sabotage::AcknowledgeWithoutCommit) {
            self.power_off(i);
            return Ok(Some(answer));
        }
        Ok(self.end_batch(i, true)?.then_some(answer))
    }

    /// Device `i`'s power goes: its memory and connection are gone.
    fn power_off(&mut self, i: usize) {
        self.disconnect(i);
        self.nodes[i].live = None;
        self.nodes[i].back_at =
            Some(self.now + Duration::from_millis(self.rng.range(1000, 20_000)));
    }

    /// Device `i`'s connection drops (the relay tells its watchers).
    fn disconnect(&mut self, i: usize) {
        if self.nodes[i].conn.take().is_none() {
            return;
        }
        self.relay_conns.remove(&i);
        if let Some(live) = self.nodes[i].live.as_mut() {
            live.sync.on_relay_closed();
        }
        self.presence(i, false);
    }

    /// Tells every device watching `i` that it came or went.
    fn presence(&mut self, i: usize, online: bool) {
        let id = self.nodes[i].id;
        let watchers: Vec<usize> = self
            .relay_conns
            .iter()
            .filter(|(j, c)| **j != i && c.watch.contains(&id))
            .map(|(j, _)| *j)
            .collect();
        for j in watchers {
            self.schedule_to(j, Frame::Presence { id, online }.encode(), 1);
        }
    }

    /// Device `i` connects to the relay: challenge, proof, verdict.
    fn connect(&mut self, i: usize) -> Result<(), Failure> {
        if self.nodes[i].conn.is_some() || self.nodes[i].live.is_none() {
            return Ok(());
        }
        let clock = self.node_clock(i);
        let challenge = Frame::Challenge {
            relay_public: *self.relay_key.public().as_bytes(),
            nonce: [7; 32],
        };
        let seed = self.seed;
        let live = self.nodes[i].live.as_mut().ok_or_else(|| no_power(seed))?;
        live.sync.on_relay_open();
        let r = live
            .sync
            .on_relay_frame(&live.store, &challenge.encode(), clock)
            .map_err(|e| Failure {
                seed,
                what: format!("device {i}: {e}"),
            })?;
        if let Err(e) = r {
            return Err(self.fail(format!("device {i}: challenge refused: {e}")));
        }
        let frames = live.sync.take_frames();
        let proves = frames
            .first()
            .and_then(|f| Frame::decode(f).ok())
            .is_some_and(|f| matches!(f, Frame::Auth { public, .. } if DeviceId::from_public(&x25519_dalek::PublicKey::from(public)) == self.nodes[i].id));
        if !proves {
            return Err(self.fail(format!("device {i} did not prove its key")));
        }
        let id = self.nodes[i].id;
        let live = self.nodes[i].live.as_mut().ok_or_else(|| no_power(seed))?;
        live.sync
            .on_relay_frame(&live.store, &Frame::AuthOk(id).encode(), clock)
            .map_err(|e| Failure {
                seed,
                what: format!("device {i}: {e}"),
            })?
            .map_err(|e| Failure {
                seed,
                what: format!("device {i}: {e}"),
            })?;
        self.nodes[i].conn = Some(self.next_conn);
        self.next_conn += 1;
        self.relay_conns.insert(i, RelayConn::default());
        self.end_batch(i, false)?;
        self.presence(i, true);
        Ok(())
    }

    /// Schedules `frame` to device `i` on its current connection.
    fn schedule_to(&mut self, i: usize, frame: Vec<u8>, delay_ms: u64) {
        let Some(conn) = self.nodes[i].conn else {
            return;
        };
        self.next_seq += 1;
        self.flights.push(Flight {
            at: self.now + Duration::from_millis(delay_ms),
            seq: self.next_seq,
            to: i,
            conn,
            frame,
        });
    }

    fn index_of(&self, id: &DeviceId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == *id)
    }

    /// The relay's handling of a frame device `i` sent.
    fn relay_receives(&mut self, i: usize, bytes: Vec<u8>) -> Result<(), Failure> {
        self.report.frames += 1;
        self.report.bytes += bytes.len() as u64;
        self.hasher.update(&(i as u32).to_le_bytes());
        self.hasher.update(&(bytes.len() as u32).to_le_bytes());
        self.hasher.update(&bytes);
        if self.nodes[i].conn.is_none() {
            return Ok(());
        }
        let me = self.nodes[i].id;
        let frame = Frame::decode(&bytes)
            .map_err(|e| self.fail(format!("device {i} sent a bad frame: {e}")))?;
        match frame {
            Frame::Allow(ids) => {
                if let Some(c) = self.relay_conns.get_mut(&i) {
                    c.allow = ids.into_iter().collect();
                }
            }
            Frame::Subscribe(ids) => {
                if let Some(c) = self.relay_conns.get_mut(&i) {
                    c.watch = ids.iter().copied().collect();
                }
                for id in ids {
                    if let Some(j) = self.index_of(&id) {
                        let online = self.nodes[j].conn.is_some();
                        self.schedule_to(i, Frame::Presence { id, online }.encode(), 1);
                    }
                }
            }
            Frame::Send {
                msg_id,
                to,
                payload,
            } => {
                self.check_seal(me, to, &payload)?;
                let reason = match self.index_of(&to) {
                    None => Some(UndeliverableReason::Offline),
                    Some(j) if self.nodes[j].conn.is_none() => Some(UndeliverableReason::Offline),
                    Some(j)
                        if !self
                            .relay_conns
                            .get(&j)
                            .is_some_and(|c| c.allow.contains(&me)) =>
                    {
                        Some(UndeliverableReason::NotAllowed)
                    }
                    Some(_) => None,
                };
                if let Some(reason) = reason {
                    self.schedule_to(i, Frame::Undeliverable { msg_id, to, reason }.encode(), 1);
                    return Ok(());
                }
                let j = self.index_of(&to).ok_or_else(|| self.fail("vanished"))?;
                let cut = self
                    .partitions
                    .get(&(i.min(j), i.max(j)))
                    .is_some_and(|until| *until > self.now);
                let f = self.cfg.faults.clone();
                if cut || self.rng.chance(f.loss) {
                    return Ok(());
                }
                let copies = if self.rng.chance(f.duplicate) { 2 } else { 1 };
                for _ in 0..copies {
                    let delay = self.rng.range(1, f.max_delay_ms.max(1) + 1);
                    let frame = Frame::Deliver {
                        from: me,
                        payload: payload.clone(),
                    };
                    self.schedule_to(j, frame.encode(), delay);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// No nonce is ever sealed twice, and no message key (sender,
    /// recipient, ratchet key, message number) seals two different
    /// envelopes.
    fn check_seal(&mut self, from: DeviceId, to: DeviceId, payload: &[u8]) -> Result<(), Failure> {
        let Ok(DevicePacket::Sealed(bytes)) = DevicePacket::decode(payload) else {
            return Ok(());
        };
        let env = Envelope::decode(&bytes)
            .map_err(|e| self.fail(format!("an envelope that does not decode: {e}")))?;
        let hash = *blake3::hash(&bytes).as_bytes();
        if let Some(nonce) = env.nonce {
            if let Some(h) = self.nonces.insert(nonce, hash) {
                if h != hash {
                    return Err(self.fail("a nonce was sealed twice"));
                }
            }
        }
        let key = (from, to, env.header.dh, env.header.n);
        if let Some(h) = self.message_keys.insert(key, hash) {
            if h != hash {
                return Err(self.fail(format!(
                    "a message key sealed two envelopes ({} to {}, n {})",
                    from.fingerprint(),
                    to.fingerprint(),
                    env.header.n
                )));
            }
        }
        Ok(())
    }

    /// Delivers every frame due by now, in order.
    fn deliver_due(&mut self) -> Result<(), Failure> {
        loop {
            let next = self
                .flights
                .iter()
                .enumerate()
                .filter(|(_, f)| f.at <= self.now)
                .min_by_key(|(_, f)| (f.at, f.seq))
                .map(|(k, _)| k);
            let Some(k) = next else { return Ok(()) };
            let f = self.flights.swap_remove(k);
            if self.nodes[f.to].conn != Some(f.conn) {
                continue; // its connection is gone
            }
            let clock = self.node_clock(f.to);
            let seed = self.seed;
            let i = f.to;
            let Some(live) = self.nodes[i].live.as_mut() else {
                continue;
            };
            let r = live
                .sync
                .on_relay_frame(&live.store, &f.frame, clock)
                .map_err(|e| Failure {
                    seed,
                    what: format!("device {i}: storage failed on a frame: {e}"),
                })?;
            if let Err(e) = r {
                return Err(self.fail(format!("device {i}: the relay connection broke: {e}")));
            }
            self.end_batch(i, true)?;
        }
    }

    /// Timers, and devices whose time away is over.
    fn timers(&mut self) -> Result<(), Failure> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].back_at.is_some_and(|t| t <= self.now) {
                self.nodes[i].back_at = None;
                if self.nodes[i].live.is_none() {
                    let disk = self.nodes[i].disk.clone();
                    let skew = self.nodes[i].skew_ms;
                    let mut node = self.boot(disk, skew)?;
                    node.removed = self.nodes[i].removed;
                    node.counter = self.nodes[i].counter;
                    node.snapshots = std::mem::take(&mut self.nodes[i].snapshots);
                    if node.id != self.nodes[i].id {
                        return Err(
                            self.fail(format!("device {i} came back with another identity"))
                        );
                    }
                    self.nodes[i] = node;
                }
                self.connect(i)?;
            }
            if self.nodes[i].next_tick <= self.now {
                self.nodes[i].next_tick = self.now + TICK;
                let clock = self.node_clock(i);
                let seed = self.seed;
                if let Some(live) = self.nodes[i].live.as_mut() {
                    live.store.set_time(clock.as_secs() as i64);
                    live.sync.on_tick(&live.store, clock).map_err(|e| Failure {
                        seed,
                        what: format!("device {i}: tick: {e}"),
                    })?;
                    self.end_batch(i, true)?;
                }
            }
        }
        Ok(())
    }

    /// One random thing the app does on a random device.
    fn workload(&mut self) -> Result<(), Failure> {
        let i = self.rng.index(self.nodes.len());
        if self.nodes[i].live.is_none() {
            return Ok(());
        }
        self.nodes[i].counter += 1;
        let n = self.nodes[i].counter;
        let roll = self.rng.index(100);
        if roll < 45 {
            let key = format!("u{i}.{n}");
            if self.removal_known_at.is_some() && self.removal.is_some_and(|(r, _, _)| r == i) {
                self.written_after_removal.push(key.clone());
            }
            let value = json!(n);
            if self
                .request(i, json!({"op": "kv.put", "key": key, "value": value}))?
                .is_some()
            {
                self.report.acknowledged += 1;
                self.expect.insert(
                    key,
                    Expect {
                        owner: i,
                        value: Some(value),
                        at: self.now,
                        uncertain: false,
                    },
                );
            }
        } else if roll < 55 {
            // Delete one of its own keys.
            let own: Vec<String> = self
                .expect
                .iter()
                .filter(|(_, e)| e.owner == i && e.value.is_some())
                .map(|(k, _)| k.clone())
                .collect();
            if own.is_empty() {
                return Ok(());
            }
            let key = own[self.rng.index(own.len())].clone();
            if self
                .request(i, json!({"op": "kv.delete", "key": key}))?
                .is_some()
            {
                self.report.acknowledged += 1;
                // A delete removes only the value the device sees: if its
                // disk went back to before its put (and the put has not
                // come back from a peer yet), the put survives it.
                let uncertain = self.expect.get(&key).is_some_and(|e| e.uncertain);
                self.expect.insert(
                    key,
                    Expect {
                        owner: i,
                        value: None,
                        at: self.now,
                        uncertain,
                    },
                );
            }
        } else if roll < 75 {
            let key = format!("shared{}", self.rng.index(4));
            if self
                .request(i, json!({"op": "kv.put", "key": key, "value": [i, n]}))?
                .is_some()
            {
                self.report.acknowledged += 1;
            }
        } else if roll < 85 {
            let ops = json!([{"op": "put", "path": "/t", "value": format!("{i}.{n}")}]);
            if self
                .request(i, json!({"op": "doc.create", "ops": ops}))?
                .is_some()
            {
                self.report.acknowledged += 1;
            }
        } else {
            let Some(list) = self.request(i, json!({"op": "doc.list"}))? else {
                return Ok(());
            };
            let docs: Vec<String> = list
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| {
                            d.get("doc")
                                .or(Some(d))
                                .and_then(Value::as_str)
                                .map(str::to_string)
                        })
                        .collect()
                })
                .unwrap_or_default();
            if docs.is_empty() {
                return Ok(());
            }
            let doc = docs[self.rng.index(docs.len())].clone();
            let ops =
                json!([{"op": "put", "path": format!("/k{}", self.rng.index(3)), "value": n}]);
            if self
                .request(i, json!({"op": "doc.change", "doc": doc, "ops": ops}))?
                .is_some()
            {
                self.report.acknowledged += 1;
            }
        }
        Ok(())
    }

    /// One fault, perhaps.
    fn fault(&mut self) -> Result<(), Failure> {
        let f = self.cfg.faults.clone();
        let n = self.nodes.len();
        if self.rng.chance(f.crash) {
            let i = self.rng.index(n);
            if self.nodes[i].live.is_some() {
                self.report.faults += 1;
                self.power_off(i);
            }
        }
        if self.rng.chance(f.disconnect) {
            let i = self.rng.index(n);
            if self.nodes[i].conn.is_some() {
                self.report.faults += 1;
                self.disconnect(i);
                self.nodes[i].back_at =
                    Some(self.now + Duration::from_millis(self.rng.range(100, 10_000)));
            }
        }
        if self.rng.chance(f.partition) {
            let (a, b) = (self.rng.index(n), self.rng.index(n));
            if a != b {
                self.report.faults += 1;
                let until = self.now + Duration::from_millis(self.rng.range(1000, 30_000));
                self.partitions.insert((a.min(b), a.max(b)), until);
            }
        }
        if self.rng.chance(f.relay_restart) {
            self.report.faults += 1;
            self.flights.clear();
            for i in 0..n {
                if self.nodes[i].conn.is_some() {
                    self.disconnect(i);
                    self.nodes[i].back_at =
                        Some(self.now + Duration::from_millis(self.rng.range(100, 5000)));
                }
            }
        }
        if self.rng.chance(f.rollback * 4.0) {
            self.take_snapshot();
        }
        if self.rng.chance(f.rollback) {
            let i = self.rng.index(n);
            self.roll_back(i);
        }
        if self.rng.chance(f.prefs) {
            let i = self.rng.index(n);
            if self.rng.chance(0.2) {
                let pause = !self.paused.contains(&i);
                self.set_prefs(i, |w| layout::stage_paused(w, pause))?;
            } else {
                let j = self.rng.index(n);
                if i != j {
                    let on = self.sync_off.contains(&(i, j));
                    let peer = self.nodes[j].id;
                    self.set_prefs(i, |w| layout::stage_app_sync(w, &peer, APP, on))?;
                }
            }
        }
        if f.removal && self.removal.is_none() && self.rng.chance(0.02) {
            let by = self.rng.index(n);
            let gone = self.rng.index(n);
            if by != gone && self.nodes[by].live.is_some() {
                self.remove(by, gone)?;
            }
        }
        Ok(())
    }

    /// Copies a random device's disk, for a later rollback (the last
    /// [`SNAPSHOTS_KEPT`] of each device are kept).
    fn take_snapshot(&mut self) {
        let i = self.rng.index(self.nodes.len());
        let disk = self.nodes[i].disk.clone();
        let snapshots = &mut self.nodes[i].snapshots;
        snapshots.push((self.now, disk));
        if snapshots.len() > SNAPSHOTS_KEPT {
            snapshots.remove(0);
        }
    }

    /// Device `i`'s disk goes back to one of its snapshots, and its power
    /// goes with it: it boots from that disk later. Whatever it committed
    /// since is gone, its ratchets and init stamps included; the write it
    /// acknowledged since may be gone too (if it never left the device),
    /// so those keys are checked for convergence only.
    ///
    /// Not done (a limit the signed membership log of M16 lifts): taking
    /// the remover back to before its removal (the removal is simply lost),
    /// or any member back to before it knew of the removal once every
    /// member knew (it would take the removed device's writes again).
    fn roll_back(&mut self, i: usize) {
        let oldest_allowed = match self.removal {
            Some((_, by, at)) if by == i => at,
            Some((gone, _, _)) if gone != i => self.removal_known_at.unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let usable: Vec<usize> = (0..self.nodes[i].snapshots.len())
            .filter(|&k| self.nodes[i].snapshots[k].0 >= oldest_allowed)
            .collect();
        if usable.is_empty() {
            return;
        }
        let k = usable[self.rng.index(usable.len())];
        let (taken_at, disk) = self.nodes[i].snapshots[k].clone();
        self.report.faults += 1;
        self.report.rollbacks += 1;
        if self.nodes[i].live.is_some() {
            self.power_off(i);
        } else if self.nodes[i].back_at.is_none() {
            self.nodes[i].back_at = Some(self.now + Duration::from_secs(1));
        }
        if std::env::var_os("MASQ_SIM_TRACE").is_some() {
            eprintln!("{:?}: device {i} rolls back to {taken_at:?}", self.now);
        }
        self.nodes[i].disk = disk;
        self.nodes[i].snapshots.truncate(k + 1);
        self.read_prefs(i);
        for e in self.expect.values_mut() {
            if e.owner == i && e.at >= taken_at {
                e.uncertain = true;
            }
        }
        // Its ratchets went back: it seals under message keys it used
        // before (with fresh nonces, which the nonce check still holds).
        let id = self.nodes[i].id;
        self.message_keys.retain(|(from, _, _, _), _| *from != id);
    }

    /// Device `i` commits a change of its sync preferences (staged by
    /// `stage`) and tells its device; the world's record of what is off
    /// follows what its disk now says. Nothing if its power is off.
    fn set_prefs(&mut self, i: usize, stage: impl FnOnce(&mut WriteSet)) -> Result<(), Failure> {
        let seed = self.seed;
        let Some(live) = self.nodes[i].live.as_mut() else {
            return Ok(());
        };
        self.report.faults += 1;
        let mut w = WriteSet::new();
        stage(&mut w);
        live.store.put_records(w);
        live.sync.prefs_changed(&live.store).map_err(|e| Failure {
            seed,
            what: format!("device {i}: prefs_changed: {e}"),
        })?;
        self.end_batch(i, false)?;
        self.read_prefs(i);
        Ok(())
    }

    /// What device `i`'s disk says is off (after a commit, a rollback or a
    /// boot).
    fn read_prefs(&mut self, i: usize) {
        let disk = &self.nodes[i].disk;
        let paused = disk
            .get(masq_core::records::Table::Meta, layout::SYNC_PAUSED)
            .is_some();
        let off: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| {
                disk.get(
                    masq_core::records::Table::Meta,
                    &layout::sync_off_key(&self.nodes[j].id, APP),
                )
                .is_some()
            })
            .collect();
        if paused {
            self.paused.insert(i);
        } else {
            self.paused.remove(&i);
        }
        self.sync_off.retain(|(a, _)| *a != i);
        self.sync_off.extend(off.into_iter().map(|j| (i, j)));
    }

    /// Every device with power turns all its sync back on (the world
    /// heals); whether any is still off.
    fn all_sync_on(&mut self) -> Result<bool, Failure> {
        for i in 0..self.nodes.len() {
            let off: Vec<DeviceId> = self
                .sync_off
                .iter()
                .filter(|(a, _)| *a == i)
                .map(|(_, j)| self.nodes[*j].id)
                .collect();
            if off.is_empty() && !self.paused.contains(&i) {
                continue;
            }
            self.set_prefs(i, |w| {
                layout::stage_paused(w, false);
                for peer in &off {
                    layout::stage_app_sync(w, peer, APP, true);
                }
            })?;
        }
        Ok(!self.sync_off.is_empty() || !self.paused.is_empty())
    }

    /// Member `by` removes `gone` from the group.
    fn remove(&mut self, by: usize, gone: usize) -> Result<(), Failure> {
        self.report.faults += 1;
        let clock = self.node_clock(by);
        let gone_id = self.nodes[gone].id;
        let me = self.nodes[by].id;
        let seed = self.seed;
        let live = self.nodes[by].live.as_mut().ok_or_else(|| no_power(seed))?;
        let group = meta::group(&live.store, me).map_err(|e| Failure {
            seed,
            what: e.to_string(),
        })?;
        let change = group
            .remove(&gone_id, clock.as_secs() as i64)
            .map_err(|e| Failure {
                seed,
                what: format!("remove: {e}"),
            })?;
        live.store.put_records(change.writes);
        live.sync.peers_changed(&live.store).map_err(|e| Failure {
            seed,
            what: format!("peers_changed: {e}"),
        })?;
        if self.end_batch(by, false)? {
            self.removal = Some((gone, by, self.now));
            self.nodes[gone].removed = true;
        }
        Ok(())
    }

    /// Once every member recorded the removal, the removed device (a
    /// stolen one, say) writes on: none of it may reach a member.
    fn removed_device_writes(&mut self) -> Result<(), Failure> {
        let (Some(_), Some((gone, _, _))) = (self.removal_known_at, self.removal) else {
            return Ok(());
        };
        if self.written_after_removal.len() >= 3 || self.nodes[gone].live.is_none() {
            return Ok(());
        }
        self.nodes[gone].counter += 1;
        let key = format!("x{gone}.{}", self.nodes[gone].counter);
        self.written_after_removal.push(key.clone());
        self.request(gone, json!({"op": "kv.put", "key": key, "value": 1}))?;
        Ok(())
    }

    /// Whether every remaining member's disk records the removal.
    fn note_removal_known(&mut self) {
        let Some((gone, _, _)) = self.removal else {
            return;
        };
        if self.removal_known_at.is_some() {
            return;
        }
        let id = self.nodes[gone].id;
        let known = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != gone)
            .all(|(_, n)| {
                n.disk
                    .get(masq_core::records::Table::Meta, &layout::removed_key(&id))
                    .is_some()
            });
        if known {
            self.removal_known_at = Some(self.now);
        }
    }

    fn step(&mut self, max_ms: u64) -> Result<(), Failure> {
        self.now += Duration::from_millis(self.rng.range(1, max_ms));
        self.deliver_due()?;
        self.timers()?;
        self.note_removal_known();
        Ok(())
    }

    fn run(mut self) -> Result<Report, Failure> {
        for _ in 0..self.cfg.steps {
            self.step(300)?;
            if self.rng.chance(0.6) {
                self.workload()?;
            }
            self.fault()?;
        }
        // Heal: no more faults; every device comes back and connects.
        self.cfg.faults = Faults::none();
        self.partitions.clear();
        let heal_start = self.now;
        for i in 0..self.nodes.len() {
            if self.nodes[i].back_at.is_none()
                && (self.nodes[i].live.is_none() || self.nodes[i].conn.is_none())
            {
                self.nodes[i].back_at = Some(self.now);
            }
        }
        let mut sync_off = true;
        loop {
            self.step(1000)?;
            if sync_off {
                sync_off = self.all_sync_on()?;
            }
            self.removed_device_writes()?;
            let removal_checked = self.removal.is_none() || self.written_after_removal.len() >= 3;
            let check_now = (self.now - heal_start).as_millis() % 5000 < 1000;
            if check_now && removal_checked && !sync_off && self.check().is_ok() {
                break;
            }
            if self.now - heal_start > HEAL_LIMIT {
                let why = self.check().err().unwrap_or_default();
                return Err(self.fail(format!(
                    "did not converge in {HEAL_LIMIT:?} of healing: {why}{}",
                    self.describe()
                )));
            }
        }
        self.report.after_removal_writes = self.written_after_removal.len() as u64;
        self.report.sim_time = self.now;
        self.report.digest = *self.hasher.finalize().as_bytes();
        Ok(self.report)
    }

    /// Each device's view of its links, when `MASQ_SIM_TRACE` is set.
    fn describe(&self) -> String {
        if std::env::var_os("MASQ_SIM_TRACE").is_none() {
            return String::new();
        }
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(live) = &n.live else {
                out += &format!("\n device {i}: no power");
                continue;
            };
            let peers: Vec<String> = self
                .nodes
                .iter()
                .filter(|m| m.id != n.id)
                .map(|m| {
                    format!(
                        "{}: online {} ready {}",
                        short(&m.id),
                        live.sync.is_online(&m.id),
                        live.sync.is_ready(&m.id)
                    )
                })
                .collect();
            let mut conflicts = Vec::new();
            for k in 0..4 {
                let req = json!({"id": 1, "op": "kv.conflicts", "key": format!("shared{k}")});
                if let Ok(env) = parse_request(&req.to_string()) {
                    if let Ok(Outcome::Value(v)) = execute(&live.store, env.request) {
                        conflicts.push(format!("shared{k}: {v}"));
                    }
                }
            }
            out += &format!("\n device {i} conflicts: {}", conflicts.join("; "));
            let st = live.sync.stats();
            out += &format!(
                "\n device {i} ({}) conn {:?}: {}; rejected {}, last error {:?}\n   recent: {}",
                short(&n.id),
                n.conn,
                peers.join(", "),
                st.rejected,
                st.last_error,
                st.recent
                    .iter()
                    .rev()
                    .take(12)
                    .rev()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n           ")
            );
        }
        out
    }

    /// What a member holds: its KV bucket and its documents as JSON.
    fn snapshot(&mut self, i: usize) -> Result<Value, String> {
        let run = |w: &mut World, req: Value| -> Result<Value, String> {
            let Some(live) = w.nodes[i].live.as_ref() else {
                return Err(format!("device {i} has no power"));
            };
            let mut req = req;
            req["id"] = json!(1);
            let env = parse_request(&req.to_string()).map_err(|e| format!("{e:?}"))?;
            match execute(&live.store, env.request) {
                Ok(Outcome::Value(v)) => Ok(v),
                Ok(_) => Ok(Value::Null),
                Err(e) => Err(format!("device {i}: {e}")),
            }
        };
        let kv = run(self, json!({"op": "kv.list", "limit": 10000}))?;
        let list = run(self, json!({"op": "doc.list"}))?;
        let mut docs = BTreeMap::new();
        for d in list.as_array().cloned().unwrap_or_default() {
            let Some(id) = d
                .get("doc")
                .or(Some(&d))
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                continue;
            };
            let body = run(self, json!({"op": "doc.get", "doc": id}))?;
            docs.insert(id, body);
        }
        Ok(json!({"kv": kv, "docs": docs}))
    }

    /// The checks once healed: every member holds every acknowledged write
    /// of every member, all members hold the same, and nothing the removed
    /// device wrote after every member knew reached any member.
    fn check(&mut self) -> Result<(), String> {
        if self.removal.is_some() && self.removal_known_at.is_none() {
            return Err("a removal has not reached every member".into());
        }
        let members: Vec<usize> = (0..self.nodes.len())
            .filter(|i| !self.nodes[*i].removed)
            .collect();
        let mut first: Option<Value> = None;
        for &i in &members {
            let snap = self.snapshot(i)?;
            for (key, e) in &self.expect {
                if self.nodes[e.owner].removed || e.uncertain {
                    continue;
                }
                let got = kv_value(&snap, key);
                if got != e.value {
                    return Err(format!(
                        "device {i}: {key} is {got:?}, acknowledged {:?}",
                        e.value
                    ));
                }
            }
            for key in &self.written_after_removal {
                if kv_value(&snap, key).is_some() {
                    return Err(format!(
                        "device {i} accepted {key}, written by a removed device"
                    ));
                }
            }
            match &first {
                None => first = Some(snap),
                Some(f) if *f != snap => {
                    return Err(format!(
                        "device {i} differs from device {}: {}",
                        members[0],
                        first_difference(f, &snap)
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// Where two snapshots differ, briefly.
fn first_difference(a: &Value, b: &Value) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) if p == q => {}
                    (Some(p), Some(q)) => return format!("{k}: {}", first_difference(p, q)),
                    (p, q) => return format!("{k}: {p:?} / {q:?}"),
                }
            }
            "same".into()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (p, q) in x.iter().zip(y) {
                if p != q {
                    return format!("{p} / {q}");
                }
            }
            "same".into()
        }
        _ => format!("{a} / {b}"),
    }
}

fn short(id: &DeviceId) -> String {
    id.fingerprint().chars().take(9).collect()
}

/// A device needed its memory, and its power was off.
fn no_power(seed: u64) -> Failure {
    Failure {
        seed,
        what: "a device without power was asked to act".into(),
    }
}

/// The value of `key` in a snapshot's KV listing.
fn kv_value(snap: &Value, key: &str) -> Option<Value> {
    let kv = &snap["kv"];
    let items = kv.get("items").or(Some(kv)).and_then(Value::as_array)?;
    items
        .iter()
        .find(|it| it.get("key").and_then(Value::as_str) == Some(key))
        .and_then(|it| it.get("value").cloned())
}
