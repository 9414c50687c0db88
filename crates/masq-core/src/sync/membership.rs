//! The user's device group, and the log of who joined and who left it.
//!
//! Invariant: a device removed anywhere is removed everywhere, for good. A
//! removal is an entry of a replicated log ([`Removal`]: who, by whom, and
//! which devices the remover still held); every device that learns an entry
//! first stores it and passes it on to every device it holds (as queued notes,
//! so devices that are offline get it when they are next seen), and every
//! device also sends its whole removal log when a session starts
//! ([`Group::removal_log`]: a note lost on the way is made good the next
//! time), so it reaches every remaining device through any one of them. The
//! removal mark it leaves keeps the device out of every later introduction.
//! Removals only ever add to the set of removed devices and every entry from
//! a member is accepted, so all devices that hear the same entries, in any
//! order, end with the same group.
//!
//! Who may do what (the user owns every device, so every member in good
//! standing speaks for the user):
//! - A member adds devices by pairing with them or by introducing them
//!   ([`Group::introduce`]); each record says who brought it in
//!   ([`PeerRecord::added_by`]). Only a member in good standing is heard:
//!   a removed device has no session left anywhere it is known removed.
//! - A member removes any device ([`Group::remove`]). A stolen device that
//!   removes its remover first does not cancel its own removal: removals
//!   only add, so both go. (Refusing removals whose author was removed made
//!   devices that heard the entries in another order disagree for good.)
//! - Devices that a removed device brought in and that its remover did not
//!   hold when it removed it are removed with it: they may have been brought
//!   in after the removal, by a thief on its way out ([`Removal::vouched`]).
//!
//! Entries are authenticated hop by hop (each arrives inside a ratchet
//! session with a member), not signed: a member that passes an entry on
//! could forge one, but could as well do what the entry says itself.
//!
//! Architecture invariant: decisions only. The shell reads the group from
//! its `peer/` and `removed/` records ([`Group::from_records`]), stages the
//! returned [`WriteSet`] (record changes and the notes that pass entries on)
//! atomically with the session that carried the entry, then reloads its
//! peers.

use std::collections::{BTreeMap, BTreeSet};

use x25519_dalek::PublicKey;

use crate::crypto::{check_public_key, DeviceId};
use crate::layout::meta::{
    self, peer_of_key, removed_of_key, PeerRecord, RemovalMark, PEER, REMOVED,
};
use crate::records::WriteSet;
use crate::wire::device::{PeerInfo, Removal, SyncPayload, MAX_GROUP_DEVICES};

/// Why a membership change was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    /// The sender is not a member in good standing here.
    #[error("{} is not a member of this device's group", .0.fingerprint())]
    SenderNotMember(DeviceId),
    /// An introduction would take the group past [`MAX_GROUP_DEVICES`].
    #[error("the group is full ({} devices)", MAX_GROUP_DEVICES)]
    GroupFull,
    /// The device to remove is not a member here.
    #[error("no paired device {}", .0.fingerprint())]
    NotMember(DeviceId),
    /// A record could not be encoded.
    #[error("peer record: {0}")]
    Record(String),
}

/// What a membership entry changes here.
#[derive(Debug, Default)]
pub struct Change {
    /// Records to stage (peers added or removed, removal marks) and notes
    /// that pass the entry on.
    pub writes: WriteSet,
    /// Devices that joined the group here.
    pub added: Vec<DeviceId>,
    /// Devices that left it here.
    pub removed: Vec<DeviceId>,
    /// The entry was refused (set by a shell that commits a refusal as an
    /// empty change, to count it).
    pub refused: bool,
}

impl Change {
    /// Whether anything changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// A removal as shown to the user.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RemovedEntry {
    /// The removed device's id (hex).
    pub device: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// When this device learned of it (seconds since the epoch).
    pub at: i64,
    /// The fingerprint of the device where it was removed (`None`: removed
    /// before the membership log).
    pub by: Option<String>,
}

/// This device's view of the group: its members and its removal marks.
#[derive(Debug, Clone)]
pub struct Group {
    me: DeviceId,
    members: BTreeMap<DeviceId, PeerRecord>,
    removed: BTreeMap<DeviceId, RemovalMark>,
}

impl Group {
    /// The group as the `meta` table records it: pass every entry under the
    /// `peer/` and `removed/` prefixes (other keys are ignored, and so are
    /// records that do not decode).
    pub fn from_records(
        me: DeviceId,
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Self {
        let mut members = BTreeMap::new();
        let mut removed = BTreeMap::new();
        for (k, v) in records {
            if let Some(id) = peer_of_key(&k) {
                if let Ok(rec) = serde_json::from_slice::<PeerRecord>(&v) {
                    members.insert(id, rec);
                }
            } else if let Some(id) = removed_of_key(&k) {
                if let Ok(mark) = RemovalMark::decode(&v) {
                    removed.insert(id, mark);
                }
            }
        }
        Group {
            me,
            members,
            removed,
        }
    }

    /// The key prefixes [`Group::from_records`] reads.
    pub const PREFIXES: [&'static [u8]; 2] = [PEER, REMOVED];

    /// Whether `id` is a member in good standing.
    pub fn is_member(&self, id: &DeviceId) -> bool {
        self.members.contains_key(id)
    }

    /// The removal mark of `id`, if it was removed.
    pub fn removal(&self, id: &DeviceId) -> Option<&RemovalMark> {
        self.removed.get(id)
    }

    /// The removals this device knows, in id order: the log's removal
    /// entries as the CLI and the manager page show them.
    pub fn removed_entries(&self) -> Vec<RemovedEntry> {
        self.removed
            .iter()
            .map(|(id, mark)| RemovedEntry {
                device: id.to_string(),
                fingerprint: id.fingerprint(),
                at: mark.at,
                by: mark.by.map(|b| b.fingerprint()),
            })
            .collect()
    }

    /// The members, in id order.
    pub fn members(&self) -> impl Iterator<Item = (&DeviceId, &PeerRecord)> {
        self.members.iter()
    }

    /// An introduction from `from`: the devices in `list` that are new here
    /// (not this device, not a member, not removed, not a low-order key)
    /// join, recorded as brought in by `from`.
    pub fn introduce(
        &self,
        from: &DeviceId,
        list: &[PeerInfo],
        now: i64,
    ) -> Result<Change, MembershipError> {
        if !self.is_member(from) {
            return Err(MembershipError::SenderNotMember(*from));
        }
        let mut change = Change::default();
        // This device and its members count towards the limit.
        let room = MAX_GROUP_DEVICES.saturating_sub(1 + self.members.len());
        for PeerInfo { public_key, name } in list.iter().take(MAX_GROUP_DEVICES) {
            let public = PublicKey::from(*public_key);
            let id = DeviceId::from_public(&public);
            if check_public_key(&public).is_err()
                || id == self.me
                || self.members.contains_key(&id)
                || self.removed.contains_key(&id)
                || change.added.contains(&id)
            {
                continue;
            }
            if change.added.len() == room {
                return Err(MembershipError::GroupFull);
            }
            meta::stage_peer(&mut change.writes, &public, name, now, from)
                .map_err(|e| MembershipError::Record(e.to_string()))?;
            change.added.push(id);
        }
        Ok(change)
    }

    /// The user removes `device` here: it leaves the group, and every
    /// other member is told (queued notes). Devices it brought in stay:
    /// this device vouches for every device it holds.
    pub fn remove(&self, device: &DeviceId, now: i64) -> Result<Change, MembershipError> {
        if !self.is_member(device) {
            return Err(MembershipError::NotMember(*device));
        }
        let entry = Removal {
            device: device.0,
            by: self.me.0,
            vouched: self.vouched_without(&[*device]),
        };
        let mut change = Change::default();
        self.stage_removal(&mut change, device, Some(self.me), now);
        self.pass_on(&mut change, &[entry], &[]);
        Ok(change)
    }

    /// A removal entry from `from` (the remover, or a member passing it on).
    pub fn on_removal(
        &self,
        from: &DeviceId,
        entry: &Removal,
        now: i64,
    ) -> Result<Change, MembershipError> {
        if !self.is_member(from) {
            return Err(MembershipError::SenderNotMember(*from));
        }
        let device = DeviceId(entry.device);
        let by = DeviceId(entry.by);
        let mut change = Change::default();
        if device == self.me {
            // This device was removed from the group: it forgets the remover
            // and the one who says so (the rest of the group forgets it).
            for id in [from, &by] {
                if self.is_member(id) && !change.removed.contains(id) {
                    self.stage_removal(&mut change, id, Some(self.me), now);
                }
            }
            return Ok(change);
        }
        if self.removed.contains_key(&device) {
            // Known already: nothing changes, nothing is passed on again.
            return Ok(change);
        }
        self.stage_removal(&mut change, &device, Some(by), now);
        // Devices the removed one brought in, that the remover did not hold:
        // removed with it (and, transitively, the ones they brought in).
        let vouched: BTreeSet<DeviceId> = entry
            .vouched
            .iter()
            .map(|b| DeviceId(*b))
            .chain([by])
            .collect();
        let mut gone = vec![device];
        let mut cascade = Vec::new();
        while let Some(introducer) = gone.pop() {
            for (id, rec) in &self.members {
                if rec.added_by() == Some(introducer)
                    && !vouched.contains(id)
                    && !change.removed.contains(id)
                {
                    self.stage_removal(&mut change, id, Some(self.me), now);
                    cascade.push(*id);
                    gone.push(*id);
                }
            }
        }
        // The entry goes on to everyone but who told it and who wrote it;
        // the removals it caused here are news to everyone.
        self.pass_on(&mut change, std::slice::from_ref(entry), &[*from, by]);
        let caused: Vec<Removal> = cascade
            .iter()
            .map(|id| Removal {
                device: id.0,
                by: self.me.0,
                vouched: self.vouched_without(&change.removed),
            })
            .collect();
        self.pass_on(&mut change, &caused, &[]);
        Ok(change)
    }

    /// A removal in the format from before the membership log (kind 4, no
    /// author or vouched list): read as a removal by its sender that
    /// vouches for every device held here, so nothing else goes with it;
    /// passed on in the current format.
    pub fn on_legacy_removed(
        &self,
        from: &DeviceId,
        device: &[u8; 32],
        now: i64,
    ) -> Result<Change, MembershipError> {
        let entry = Removal {
            device: *device,
            by: from.0,
            vouched: self.vouched_without(&[]),
        };
        self.on_removal(from, &entry, now)
    }

    /// Every removal this device knows, as entries to send a peer when a
    /// session starts (the receiver ignores the ones it knows): what makes
    /// up for a note lost on the way. Each is sent as by its remover (this
    /// device for marks from before the log), vouching for every device
    /// held here.
    pub fn removal_log(&self) -> Vec<SyncPayload> {
        let vouched = self.vouched_without(&[]);
        self.removed
            .iter()
            .take(MAX_GROUP_DEVICES)
            .map(|(id, mark)| {
                SyncPayload::Removal(Removal {
                    device: id.0,
                    by: mark.by.unwrap_or(self.me).0,
                    vouched: vouched.clone(),
                })
            })
            .collect()
    }

    /// This device and its members, less `gone`, as a vouched list.
    fn vouched_without(&self, gone: &[DeviceId]) -> Vec<[u8; 32]> {
        std::iter::once(self.me)
            .chain(self.members.keys().copied())
            .filter(|id| !gone.contains(id))
            .take(MAX_GROUP_DEVICES)
            .map(|id| id.0)
            .collect()
    }

    fn stage_removal(&self, change: &mut Change, id: &DeviceId, by: Option<DeviceId>, now: i64) {
        meta::stage_remove_peer(&mut change.writes, id, RemovalMark { at: now, by });
        change.removed.push(*id);
    }

    /// Queues `entries` for every member that stays, except `skip`.
    fn pass_on(&self, change: &mut Change, entries: &[Removal], skip: &[DeviceId]) {
        let notes: Vec<Vec<u8>> = entries
            .iter()
            .map(|e| SyncPayload::Removal(e.clone()).encode())
            .collect();
        for id in self.members.keys() {
            if change.removed.contains(id) || skip.contains(id) {
                continue;
            }
            for note in &notes {
                meta::stage_note(&mut change.writes, id, note);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DeviceKeypair;
    use crate::layout::meta::{note_prefix, peer_key, removed_key};
    use crate::records::{Table, Write};

    /// A device's records, kept as a map, with the notes it queued.
    struct Device {
        id: DeviceId,
        info: PeerInfo,
        meta: BTreeMap<Vec<u8>, Vec<u8>>,
    }

    impl Device {
        fn new(name: &str) -> Self {
            let kp = DeviceKeypair::generate();
            Device {
                id: kp.device_id(),
                info: PeerInfo {
                    public_key: *kp.public().as_bytes(),
                    name: name.into(),
                },
                meta: BTreeMap::new(),
            }
        }
        fn group(&self) -> Group {
            Group::from_records(self.id, self.meta.clone())
        }
        fn apply(&mut self, change: Change) {
            for w in change.writes {
                match w {
                    Write::Put { table, key, value } => {
                        assert_eq!(table, Table::Meta);
                        self.meta.insert(key, value);
                    }
                    Write::Remove { key, .. } => {
                        self.meta.remove(&key);
                    }
                    Write::RemovePrefix { prefix, .. } => {
                        self.meta.retain(|k, _| !k.starts_with(&prefix));
                    }
                }
            }
        }
        /// Pairs with `other` here (as pairing does: brought in by itself).
        fn pair(&mut self, other: &Device) {
            let mut w = WriteSet::new();
            let public = PublicKey::from(other.info.public_key);
            meta::stage_peer(&mut w, &public, &other.info.name, 1, &self.id).unwrap();
            self.apply(Change {
                writes: w,
                ..Change::default()
            });
        }
        fn member(&self, id: &DeviceId) -> bool {
            self.meta.contains_key(&peer_key(id))
        }
        fn removed(&self, id: &DeviceId) -> bool {
            self.meta.contains_key(&removed_key(id))
        }
        /// The removal entries queued for `to` (and takes them off the queue).
        fn take_notes(&mut self, to: &DeviceId) -> Vec<Removal> {
            let prefix = note_prefix(to);
            let keys: Vec<Vec<u8>> = self
                .meta
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            keys.iter()
                .map(
                    |k| match SyncPayload::decode(&self.meta.remove(k).unwrap()) {
                        Ok(SyncPayload::Removal(r)) => r,
                        other => panic!("not a removal: {other:?}"),
                    },
                )
                .collect()
        }
    }

    /// Four devices that all hold each other.
    fn four() -> [Device; 4] {
        let mut d = ["a", "b", "c", "d"].map(Device::new);
        for i in 0..4 {
            for j in 0..4 {
                if i != j {
                    let other = Device {
                        id: d[j].id,
                        info: d[j].info.clone(),
                        meta: BTreeMap::new(),
                    };
                    d[i].pair(&other);
                }
            }
        }
        d
    }

    #[test]
    fn a_removal_reaches_a_device_through_any_other_and_stays() {
        let [mut a, b, mut c, mut d] = four();
        // A removes B; C is offline, so only D hears it (from A's notes).
        let change = a.group().remove(&b.id, 10).unwrap();
        a.apply(change);
        assert!(!a.member(&b.id) && a.removed(&b.id));
        let to_d = a.take_notes(&d.id);
        assert_eq!(to_d.len(), 1);
        let _ = a.take_notes(&c.id); // A goes offline before C comes back.
        let change = d.group().on_removal(&a.id, &to_d[0], 11).unwrap();
        assert_eq!(change.removed, vec![b.id]);
        d.apply(change);
        // D passes it on to C (not back to A, the author).
        assert!(d.take_notes(&a.id).is_empty());
        let to_c = d.take_notes(&c.id);
        assert_eq!(to_c, to_d);
        let change = c.group().on_removal(&d.id, &to_c[0], 12).unwrap();
        c.apply(change);
        assert!(!c.member(&b.id) && c.removed(&b.id));
        // Hearing it again changes nothing and is not passed on again.
        let again = c.group().on_removal(&d.id, &to_c[0], 13).unwrap();
        assert!(again.is_empty() && again.writes.is_empty());
        // B stays out: an introduction of B is ignored now.
        let intro = c
            .group()
            .introduce(&d.id, std::slice::from_ref(&b.info), 14)
            .unwrap();
        assert!(intro.added.is_empty());
    }

    #[test]
    fn a_removed_device_has_no_say() {
        let [mut a, b, mut c, d] = four();
        let entry = {
            let change = a.group().remove(&b.id, 10).unwrap();
            a.apply(change);
            a.take_notes(&c.id).remove(0)
        };
        c.apply(c.group().on_removal(&a.id, &entry, 11).unwrap());
        let before = c.meta.clone();
        // B, now removed here, cannot speak at all...
        let intro = PeerInfo {
            public_key: *DeviceKeypair::generate().public().as_bytes(),
            name: "thief's".into(),
        };
        assert_eq!(
            c.group().introduce(&b.id, &[intro], 12).unwrap_err(),
            MembershipError::SenderNotMember(b.id)
        );
        // ...nor remove anyone.
        let removal = Removal {
            device: d.id.0,
            by: b.id.0,
            vouched: vec![],
        };
        assert_eq!(
            c.group().on_removal(&b.id, &removal, 12).unwrap_err(),
            MembershipError::SenderNotMember(b.id)
        );
        assert_eq!(c.meta, before, "the group is unchanged");
    }

    #[test]
    fn removals_heard_in_any_order_end_in_the_same_group() {
        let [mut a, mut b, mut c, d] = four();
        // The thief on B removes D, and the user on A removes B, at once.
        let by_thief = {
            let ch = b.group().remove(&d.id, 10).unwrap();
            b.apply(ch);
            b.take_notes(&c.id).remove(0)
        };
        let by_user = {
            let ch = a.group().remove(&b.id, 10).unwrap();
            a.apply(ch);
            a.take_notes(&c.id).remove(0)
        };
        // C hears the thief first, then the user; A hears the thief's entry
        // from C after its own removal of B.
        c.apply(c.group().on_removal(&b.id, &by_thief, 11).unwrap());
        let passed = c.take_notes(&a.id);
        assert_eq!(passed, vec![by_thief.clone()]);
        c.apply(c.group().on_removal(&a.id, &by_user, 12).unwrap());
        a.apply(a.group().on_removal(&c.id, &passed[0], 13).unwrap());
        let removed = |x: &Device| [b.id, d.id].map(|id| x.removed(&id));
        assert_eq!(removed(&a), [true, true]);
        assert_eq!(
            removed(&c),
            removed(&a),
            "the two ended in different groups"
        );
        assert!(c.member(&a.id) && a.member(&c.id));
        // Only members are heard: C itself is no member of its own group.
        assert!(c.group().on_removal(&c.id, &by_user, 14).is_err());
    }

    #[test]
    fn the_removal_log_is_sent_whole_and_changes_nothing_where_known() {
        let [mut a, b, mut c, _d] = four();
        let ch = a.group().remove(&b.id, 10).unwrap();
        a.apply(ch);
        // A's note to C is lost; C learns it from A's log at the next session.
        let _ = a.take_notes(&c.id);
        let log = a.group().removal_log();
        assert_eq!(log.len(), 1);
        let SyncPayload::Removal(entry) = &log[0] else {
            panic!("{log:?}")
        };
        assert_eq!((entry.device, entry.by), (b.id.0, a.id.0));
        c.apply(c.group().on_removal(&a.id, entry, 11).unwrap());
        assert!(c.removed(&b.id));
        let again = c.group().on_removal(&a.id, entry, 12).unwrap();
        assert!(again.is_empty() && again.writes.is_empty());
    }

    #[test]
    fn introductions_stop_at_the_group_limit() {
        let [a, b, ..] = four();
        let many: Vec<PeerInfo> = (0..MAX_GROUP_DEVICES)
            .map(|_| PeerInfo {
                public_key: *DeviceKeypair::generate().public().as_bytes(),
                name: "x".into(),
            })
            .collect();
        assert_eq!(
            a.group().introduce(&b.id, &many, 1).unwrap_err(),
            MembershipError::GroupFull
        );
        // A has itself and three members: room for 1020.
        let ch = a.group().introduce(&b.id, &many[..1020], 1).unwrap();
        assert_eq!(ch.added.len(), 1020);
    }

    #[test]
    fn devices_a_removed_device_brought_in_unvouched_go_with_it() {
        let [mut a, b, mut c, d] = four();
        // A removes B while C is away; B, stolen, then introduces a device
        // of the thief's to C, which has not heard of the removal yet.
        let entry = {
            let ch = a.group().remove(&b.id, 10).unwrap();
            a.apply(ch);
            a.take_notes(&c.id).remove(0)
        };
        let stranger = Device::new("thief's");
        let ch = c
            .group()
            .introduce(&b.id, std::slice::from_ref(&stranger.info), 11)
            .unwrap();
        assert_eq!(ch.added, vec![stranger.id]);
        c.apply(ch);
        // The removal arrives (through D): the stranger goes with B, and C
        // tells the others about it too.
        let ch = c.group().on_removal(&d.id, &entry, 12).unwrap();
        assert_eq!(ch.removed, vec![b.id, stranger.id]);
        c.apply(ch);
        assert!(c.removed(&stranger.id) && !c.member(&stranger.id));
        let to_a = c.take_notes(&a.id);
        assert_eq!(
            to_a.len(),
            1,
            "A wrote the removal of B; it learns of the stranger"
        );
        assert_eq!(to_a[0].device, stranger.id.0);
        assert_eq!(to_a[0].by, c.id.0);
        // The others learn both (D told C of B, so only the stranger).
        assert_eq!(c.take_notes(&d.id).len(), 1);
        // A device B brought in while it was still trusted, and that A
        // knew when it removed B, stays.
        let [mut a, b, mut c, _] = four();
        let phone = Device::new("phone");
        c.apply(
            c.group()
                .introduce(&b.id, std::slice::from_ref(&phone.info), 5)
                .unwrap(),
        );
        a.apply(
            a.group()
                .introduce(&b.id, std::slice::from_ref(&phone.info), 5)
                .unwrap(),
        );
        let entry = {
            let ch = a.group().remove(&b.id, 10).unwrap();
            a.apply(ch);
            a.take_notes(&c.id).remove(0)
        };
        let ch = c.group().on_removal(&a.id, &entry, 12).unwrap();
        assert_eq!(ch.removed, vec![b.id]);
        c.apply(ch);
        assert!(c.member(&phone.id));
    }

    #[test]
    fn a_device_told_it_was_removed_forgets_the_remover() {
        let [mut a, b, _c, _d] = four();
        let entry = Removal {
            device: a.id.0,
            by: b.id.0,
            vouched: vec![],
        };
        let ch = a.group().on_removal(&b.id, &entry, 10).unwrap();
        assert_eq!(ch.removed, vec![b.id]);
        a.apply(ch);
        assert!(!a.member(&b.id));
        // The old format reads as a removal by its sender.
        let [mut a, b, c, _d] = four();
        let ch = a.group().on_legacy_removed(&b.id, &c.id.0, 10).unwrap();
        assert_eq!(ch.removed, vec![c.id]);
        a.apply(ch);
        let passed = a.take_notes(&_d.id);
        assert_eq!(passed.len(), 1);
        assert_eq!(passed[0].by, b.id.0);
        assert!(a.take_notes(&b.id).is_empty());
    }
}
