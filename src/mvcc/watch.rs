//! The watchable side of the store: every applied batch's events are published
//! once; each watch stream filters them for its watchers. A stream that falls behind
//! the broadcast buffer catches up from storage, so a slow watcher never blocks a
//! write.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::pb::mvccpb::Event;

/// The events of one applied batch; `rev` is the store revision after it.
#[derive(Debug)]
pub struct EventBatch {
    pub events: Vec<Event>,
    pub rev: i64,
    /// The store was replaced (a snapshot from the leader): every watcher catches
    /// up from storage instead of expecting events.
    pub resync: bool,
}

pub struct WatchHub {
    tx: broadcast::Sender<Arc<EventBatch>>,
}

impl Default for WatchHub {
    fn default() -> Self {
        Self::new()
    }
}

impl WatchHub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        WatchHub { tx }
    }

    pub fn publish(&self, events: Vec<Event>, rev: i64) {
        if events.is_empty() || self.tx.receiver_count() == 0 {
            return;
        }
        let _ = self.tx.send(Arc::new(EventBatch {
            events,
            rev,
            resync: false,
        }));
    }

    /// Tells every stream that the store jumped to `rev` without events.
    pub fn resync(&self, rev: i64) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let _ = self.tx.send(Arc::new(EventBatch {
            events: Vec::new(),
            rev,
            resync: true,
        }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventBatch>> {
        self.tx.subscribe()
    }
}
