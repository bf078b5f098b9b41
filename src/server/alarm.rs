//! Active alarms (NOSPACE, CORRUPT), replicated through the log and kept in memory
//! for the request path's checks.

use std::collections::BTreeMap;

use parking_lot::RwLock;

use crate::pb::etcdserverpb::{AlarmMember, AlarmType};

/// The value stored in the `alarm` table for a NOSPACE alarm a member raised
/// because its disk was full (it lifts it itself once space is freed); any
/// other alarm is stored with an empty value.
pub const DISK_FULL: &[u8] = b"disk";

#[derive(Debug, Default)]
pub struct Alarms {
    /// (member, alarm) -> raised for a full disk.
    set: RwLock<BTreeMap<(u64, i32), bool>>,
}

impl Alarms {
    pub fn activate(&self, member: u64, alarm: i32) -> bool {
        let mut set = self.set.write();
        if set.contains_key(&(member, alarm)) {
            return false;
        }
        set.insert((member, alarm), false);
        true
    }

    /// Raises NOSPACE for `member`'s full disk; an alarm already raised keeps
    /// its cause.
    pub fn activate_disk_full(&self, member: u64) -> bool {
        let mut set = self.set.write();
        let key = (member, AlarmType::Nospace as i32);
        if set.contains_key(&key) {
            return false;
        }
        set.insert(key, true);
        true
    }

    /// Restores an alarm from its stored value.
    pub fn restore(&self, member: u64, alarm: i32, value: &[u8]) {
        self.set.write().insert((member, alarm), value == DISK_FULL);
    }

    pub fn deactivate(&self, member: u64, alarm: i32) -> bool {
        self.set.write().remove(&(member, alarm)).is_some()
    }

    pub fn list(&self) -> Vec<AlarmMember> {
        self.set
            .read()
            .keys()
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    pub fn has(&self, alarm: AlarmType) -> bool {
        self.set.read().keys().any(|&(_, a)| a == alarm as i32)
    }

    /// Whether `member` has raised `alarm`.
    pub fn has_member(&self, member: u64, alarm: AlarmType) -> bool {
        self.set.read().contains_key(&(member, alarm as i32))
    }

    /// Whether `member`'s NOSPACE alarm was raised for its full disk.
    pub fn disk_full(&self, member: u64) -> bool {
        self.set
            .read()
            .get(&(member, AlarmType::Nospace as i32))
            .copied()
            .unwrap_or(false)
    }

    pub fn clear(&self) {
        self.set.write().clear();
    }

    pub fn is_empty(&self) -> bool {
        self.set.read().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_full_alarm_keeps_its_cause() {
        let a = Alarms::default();
        let nospace = AlarmType::Nospace as i32;
        assert!(a.activate_disk_full(1));
        assert!(a.disk_full(1));
        assert!(a.has_member(1, AlarmType::Nospace));
        // A quota alarm raised first stays a quota alarm.
        assert!(a.activate(2, nospace));
        assert!(!a.activate_disk_full(2));
        assert!(!a.disk_full(2));
        // Restored from the stored values.
        let b = Alarms::default();
        b.restore(1, nospace, DISK_FULL);
        b.restore(2, nospace, &[]);
        assert!(b.disk_full(1));
        assert!(!b.disk_full(2));
        assert_eq!(b.list().len(), 2);
        assert!(b.deactivate(1, nospace));
        assert!(!b.disk_full(1));
    }
}
