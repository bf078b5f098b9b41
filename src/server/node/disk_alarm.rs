//! The alarm a member raises for its own disk: NOSPACE while the data
//! directory's filesystem is under its low mark, lifted once there is room.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prost::Message;

use super::Node;
use crate::metrics;
use crate::pb::etcdserverpb::{AlarmRequest, AlarmType, alarm_request};
use crate::server::request::{InternalRequest, Op};

impl Node {
    /// Raises NOSPACE for this member while its disk is full, and lifts the
    /// alarm it raised for its disk once there is room again (at most one
    /// proposal a second; one lost with a leader change is made again).
    pub(super) fn disk_alarm(&mut self) {
        let alarms = &self.applier.alarms;
        let action = if self.disk.is_full() {
            if alarms.has_member(self.local_id, AlarmType::Nospace) {
                return;
            }
            alarm_request::AlarmAction::Activate
        } else {
            if !alarms.disk_full(self.local_id) {
                return;
            }
            alarm_request::AlarmAction::Deactivate
        };
        if self.status.leader.load(Ordering::Relaxed) == 0
            || self
                .last_disk_alarm
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_disk_alarm = Some(Instant::now());
        let a = AlarmRequest {
            action: action as i32,
            member_id: self.local_id,
            alarm: AlarmType::Nospace as i32,
        };
        let op = if action == alarm_request::AlarmAction::Activate {
            crate::warn!(
                "raising NOSPACE alarm: the disk is full",
                available_bytes = self.disk.available()
            );
            Op::DiskFullAlarm(a)
        } else {
            crate::info!("lifting NOSPACE alarm: disk space was freed");
            Op::Alarm(a)
        };
        let req = InternalRequest {
            id: self.ids.next(),
            op: Some(op),
        };
        if self.raw.propose(vec![], req.encode_to_vec()).is_ok() {
            metrics::PROPOSALS_PENDING.add(1);
        }
    }
}
