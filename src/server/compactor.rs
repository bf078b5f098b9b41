//! Auto-compaction, as etcd's `--auto-compaction-mode` and
//! `--auto-compaction-retention` define it: keep a window of time (periodic) or a
//! number of revisions (revision), compacting through the log like a client would.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::{EtcdServer, Op};
use crate::config::CompactionRetention;
use crate::error::Error;
use crate::pb::etcdserverpb::CompactionRequest;

/// How often revision mode checks (etcd: five minutes).
const REVISION_INTERVAL: Duration = Duration::from_secs(300);

pub fn spawn(s: Arc<EtcdServer>) {
    match s.cfg.auto_compaction() {
        CompactionRetention::Disabled => {}
        CompactionRetention::Periodic(d) => {
            tokio::spawn(periodic(s, d));
        }
        CompactionRetention::Revisions(n) => {
            tokio::spawn(revisions(s, n));
        }
    }
}

async fn compact(s: &EtcdServer, rev: i64, mode: &str) {
    if rev <= s.store.compact_rev() {
        return;
    }
    let r = s
        .propose(Op::Compaction(CompactionRequest {
            revision: rev,
            physical: true,
        }))
        .await;
    match r {
        Ok(_) => crate::info!(
            "completed auto compaction",
            mode = mode,
            compact_revision = rev
        ),
        Err(Error::Compacted) => {}
        Err(e) => crate::warn!(
            "failed auto compaction",
            mode = mode,
            compact_revision = rev,
            error = e
        ),
    }
}

async fn periodic(s: Arc<EtcdServer>, retention: Duration) {
    let step = (retention / 10).max(Duration::from_millis(100));
    let every = retention.min(Duration::from_secs(3600));
    let mut samples: VecDeque<(tokio::time::Instant, i64)> = VecDeque::new();
    let start = tokio::time::Instant::now();
    let mut last_run = start;
    loop {
        tokio::time::sleep(step).await;
        if s.is_stopped() {
            return;
        }
        let now = tokio::time::Instant::now();
        samples.push_back((now, s.store.current_rev()));
        // The newest sample at least `retention` old is the revision to keep from.
        let mut target = None;
        while let Some(&(t, rev)) = samples.front() {
            if now.duration_since(t) >= retention {
                target = Some(rev);
                samples.pop_front();
            } else {
                break;
            }
        }
        if let Some(rev) = target {
            // Put it back: it stays the floor until a newer sample ages.
            samples.push_front((now - retention, rev));
            if now.duration_since(start) >= retention && now.duration_since(last_run) >= every {
                last_run = now;
                compact(&s, rev, "periodic").await;
            }
        }
    }
}

async fn revisions(s: Arc<EtcdServer>, keep: u64) {
    loop {
        tokio::time::sleep(REVISION_INTERVAL).await;
        if s.is_stopped() {
            return;
        }
        let rev = s.store.current_rev() - keep as i64;
        if rev > 0 {
            compact(&s, rev, "revision").await;
        }
    }
}
