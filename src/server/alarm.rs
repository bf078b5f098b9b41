//! Active alarms (NOSPACE, CORRUPT), replicated through the log and kept in memory
//! for the request path's checks.

use std::collections::BTreeSet;

use parking_lot::RwLock;

use crate::pb::etcdserverpb::{AlarmMember, AlarmType};

#[derive(Debug, Default)]
pub struct Alarms {
    set: RwLock<BTreeSet<(u64, i32)>>,
}

impl Alarms {
    pub fn activate(&self, member: u64, alarm: i32) -> bool {
        self.set.write().insert((member, alarm))
    }

    pub fn deactivate(&self, member: u64, alarm: i32) -> bool {
        self.set.write().remove(&(member, alarm))
    }

    pub fn list(&self) -> Vec<AlarmMember> {
        self.set
            .read()
            .iter()
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    pub fn has(&self, alarm: AlarmType) -> bool {
        self.set.read().iter().any(|&(_, a)| a == alarm as i32)
    }

    pub fn clear(&self) {
        self.set.write().clear();
    }

    pub fn is_empty(&self) -> bool {
        self.set.read().is_empty()
    }
}
