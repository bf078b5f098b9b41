//! etcd's `etcd_server_apply_duration_seconds{version,op,success}`: how long
//! each request taken from the Raft log took to apply, by etcd's name for
//! the request. A success is an answer without error, or with
//! `ErrCompacted`, as etcd counts it. One histogram per (op, success),
//! resolved by index: observing is a few atomic adds.

use std::fmt::Write as _;

use super::{Histogram, header};

/// etcd 3.5's op names for the requests this member applies.
pub const OPS: [&str; 21] = [
    "Alarm",
    "AuthDisable",
    "AuthEnable",
    "AuthRoleAdd",
    "AuthRoleDelete",
    "AuthRoleGrantPermission",
    "AuthRoleRevokePermission",
    "AuthUserAdd",
    "AuthUserChangePassword",
    "AuthUserDelete",
    "AuthUserGrantRole",
    "AuthUserRevokeRole",
    "Authenticate",
    "ClusterMemberAttrSet",
    "Compaction",
    "DeleteRange",
    "LeaseGrant",
    "LeaseRevoke",
    "Put",
    "Txn",
    "unknown",
];

/// etcd's buckets: 0.1 ms doubling to 52.4 s.
static BUCKETS: [f64; 20] = super::exp2::<20>(0.0001);

static HIST: [[Histogram; 2]; OPS.len()] = [const {
    [
        const { Histogram::new(&BUCKETS) },
        const { Histogram::new(&BUCKETS) },
    ]
}; OPS.len()];

/// The index in [`OPS`] of `name` ("unknown" when absent).
pub fn op(name: &str) -> usize {
    OPS.iter().position(|o| *o == name).unwrap_or(OPS.len() - 1)
}

/// One request applied.
pub fn observe(op: usize, success: bool, d: std::time::Duration) {
    if let Some(h) = HIST.get(op) {
        h[usize::from(success)].observe(d);
    }
}

pub(super) fn render(o: &mut String) {
    let name = "etcd_server_apply_duration_seconds";
    let mut body = String::new();
    for (i, op) in OPS.iter().enumerate() {
        for (j, success) in ["false", "true"].iter().enumerate() {
            let h = &HIST[i][j];
            if h.count() > 0 {
                h.samples(
                    &mut body,
                    name,
                    &format!("op=\"{op}\",success=\"{success}\",version=\"v3\""),
                );
            }
        }
    }
    if !body.is_empty() {
        header(
            o,
            name,
            "The latency distributions of v2 apply called by backend.",
            "histogram",
        );
        let _ = write!(o, "{body}");
    }
}
