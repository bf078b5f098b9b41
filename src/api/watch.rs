//! etcdserverpb.Watch: many watchers on one bidirectional stream.
//!
//! Each stream runs one task. It subscribes to the store's event broadcast before
//! any watcher exists, replays history from storage for watchers that start in the
//! past, and skips, per watcher, every event below the watcher's next revision, so
//! events are never duplicated or skipped. When the stream falls behind the
//! broadcast buffer it catches every watcher up from storage.

use std::collections::BTreeMap;

/// Most watchers one stream may hold. etcd has no such cap; clients put all of
/// their watches on one stream (Kubernetes' apiserver one per resource type),
/// far below it. A create beyond it is answered created and canceled.
pub const MAX_WATCHERS_PER_STREAM: usize = 100_000;
const TOO_MANY_WATCHERS: &str = "etcdserver: too many watchers on this stream";
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status, Streaming};

use super::watch_out::{Watch, WatchOut};
use super::watch_outbox::{self, Outbox};
use crate::metrics;
use crate::mvcc::Revision;
use crate::mvcc::index::key_bounds;
use crate::pb::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse, watch_request};
use crate::pb::mvccpb::{Event, event::EventType};
use crate::server::EtcdServer;

/// Events per response when replaying history.
const HISTORY_CHUNK: usize = 1000;

pub struct WatchService {
    pub s: Arc<EtcdServer>,
}

struct Watcher {
    key: Vec<u8>,
    end: Vec<u8>,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// The next revision this watcher must deliver.
    next_rev: i64,
    /// Events were sent since the last progress tick.
    active: bool,
}

impl Watcher {
    fn matches(&self, ev: &Event) -> bool {
        let Some(kv) = &ev.kv else { return false };
        if kv.mod_revision < self.next_rev {
            return false;
        }
        let is_put = ev.r#type == EventType::Put as i32;
        if (is_put && self.no_put) || (!is_put && self.no_delete) {
            return false;
        }
        let k = kv.key.as_slice();
        match key_bounds(&self.key, &self.end) {
            (std::ops::Bound::Included(lo), std::ops::Bound::Included(hi)) => k == lo && k == hi,
            (std::ops::Bound::Included(lo), std::ops::Bound::Unbounded) => k >= lo,
            (std::ops::Bound::Included(lo), std::ops::Bound::Excluded(hi)) => k >= lo && k < hi,
            _ => false,
        }
    }
}

struct Stream {
    s: Arc<EtcdServer>,
    out: Outbox,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// Every event up to this revision has been offered to every watcher.
    delivered: i64,
    /// The stream's caller, for permission checks on each watcher.
    who: super::authz::Resolved,
}

impl Stream {
    async fn send(&self, r: WatchResponse) -> bool {
        self.out.send(Ok(WatchOut::Message(r))).await
    }

    /// etcd's limit for a watch response: the request limit plus gRPC overhead.
    fn response_limit(&self) -> usize {
        self.s.cfg.max_request_bytes + super::GRPC_OVERHEAD_BYTES
    }

    fn header(&self, rev: i64) -> Option<crate::pb::etcdserverpb::ResponseHeader> {
        Some(self.s.header(rev))
    }

    /// Answers a create request that makes no watcher: created and canceled.
    async fn refuse_create(&self, reason: &str) -> bool {
        self.send(WatchResponse {
            header: self.header(self.s.store.current_rev()),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.into(),
            ..Default::default()
        })
        .await
    }

    async fn create(&mut self, c: WatchCreateRequest) -> bool {
        if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            return self.refuse_create(TOO_MANY_WATCHERS).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                return self
                    .refuse_create("mvcc: duplicate watch ID provided on the WatchStream")
                    .await;
            }
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        };
        if let Err(reason) = super::authz::watch_create(&self.s, &self.who, &c) {
            return self.refuse_create(&reason).await;
        }
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let (cur, compacted) = self.s.store.revs();
        let mut w = Watcher {
            key,
            end: c.range_end,
            no_put: c.filters.contains(&0),
            no_delete: c.filters.contains(&1),
            prev_kv: c.prev_kv,
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            next_rev: if c.start_revision > 0 {
                c.start_revision
            } else {
                cur + 1
            },
            active: false,
        };
        if !self
            .send(WatchResponse {
                header: self.header(cur),
                watch_id: id,
                created: true,
                ..Default::default()
            })
            .await
        {
            return false;
        }
        if c.start_revision > 0 && c.start_revision < compacted {
            return self
                .send(WatchResponse {
                    header: self.header(cur),
                    watch_id: id,
                    canceled: true,
                    compact_revision: compacted,
                    ..Default::default()
                })
                .await;
        }
        metrics::WATCHERS.add(1);
        if w.next_rev <= cur {
            let (open, alive) = self.catch_up(id, &mut w, cur).await;
            if !open || !alive {
                return open;
            }
        }
        if cur > self.delivered {
            self.delivered = cur;
        }
        self.watchers.insert(id, w);
        true
    }

    /// Replays history from storage for `w` up to `to`. Returns whether the stream
    /// is still open and whether the watcher survives (it is cancelled when the
    /// history it needs was compacted meanwhile).
    async fn catch_up(&self, id: i64, w: &mut Watcher, to: i64) -> (bool, bool) {
        // Behind the broadcast: one of etcd's unsynced ("slow") watchers.
        let _slow = metrics::Held::new(&metrics::SLOW_WATCHERS);
        while w.next_rev <= to {
            let compacted = self.s.store.compact_rev();
            if w.next_rev < compacted {
                metrics::WATCHERS.add(-1);
                let open = self
                    .send(WatchResponse {
                        header: self.header(to),
                        watch_id: id,
                        canceled: true,
                        compact_revision: compacted,
                        ..Default::default()
                    })
                    .await;
                return (open, false);
            }
            let (events, last) = match self.s.store.history(w.next_rev, to, HISTORY_CHUNK) {
                Ok(x) => x,
                Err(e) => {
                    metrics::WATCHERS.add(-1);
                    let open = self
                        .send(WatchResponse {
                            header: self.header(to),
                            watch_id: id,
                            canceled: true,
                            cancel_reason: e.to_string(),
                            ..Default::default()
                        })
                        .await;
                    return (open, false);
                }
            };
            let mine: Vec<Event> = events.into_iter().filter(|e| w.matches(e)).collect();
            w.next_rev = last + 1;
            if !mine.is_empty() && !self.deliver(id, w, mine, last).await {
                return (false, false);
            }
        }
        (true, true)
    }

    async fn deliver(&self, id: i64, w: &mut Watcher, mut events: Vec<Event>, rev: i64) -> bool {
        if w.prev_kv {
            for e in &mut events {
                if let (None, Some(kv)) = (&e.prev_kv, &e.kv) {
                    e.prev_kv = self
                        .s
                        .store
                        .prev_kv(&kv.key, Revision::new(kv.mod_revision, 0))
                        .ok()
                        .flatten();
                }
            }
        }
        w.active = true;
        metrics::EVENTS_TOTAL.add(events.len() as u64);
        let limit = self.response_limit();
        let header = self.header(rev);
        let whole = WatchResponse {
            header,
            watch_id: id,
            events,
            ..Default::default()
        };
        if !w.fragment || whole.events.len() < 2 || prost::Message::encoded_len(&whole) < limit {
            return self.send(whole).await;
        }
        // Split as etcd does: each response takes events while its size stays below
        // `limit` (at least one event each); all but the last are fragments.
        let base = prost::Message::encoded_len(&WatchResponse {
            header,
            watch_id: id,
            fragment: true,
            ..Default::default()
        });
        let mut events = whole.events.into_iter().peekable();
        while events.peek().is_some() {
            let mut chunk = Vec::new();
            let mut size = base;
            while let Some(e) = events.peek() {
                let n = prost::Message::encoded_len(e);
                let add = 1 + prost::length_delimiter_len(n) + n;
                if !chunk.is_empty() && size + add >= limit {
                    break;
                }
                size += add;
                chunk.extend(events.next());
            }
            let fragment = events.peek().is_some();
            if !self
                .send(WatchResponse {
                    header,
                    watch_id: id,
                    events: chunk,
                    fragment,
                    ..Default::default()
                })
                .await
            {
                return false;
            }
        }
        true
    }

    async fn on_batch(&mut self, events: &[Event], rev: i64) -> bool {
        // Out of the stream while they are walked: delivering borrows it.
        let mut watchers = std::mem::take(&mut self.watchers);
        let mut ok = true;
        let mut parts = super::watch_out::BatchParts::new(self.header(rev), events);
        // The batch's shared responses, handed over together (watch_outbox).
        let mut chunk = Vec::new();
        let limit = self.response_limit();
        let store = &self.s.store;
        let prev = |kv: &crate::pb::mvccpb::KeyValue| {
            store
                .prev_kv(&kv.key, Revision::new(kv.mod_revision, 0))
                .ok()
                .flatten()
        };
        for (&id, w) in watchers.iter_mut() {
            // Every watcher shares the batch's encoding, with previous values
            // for those asking for them. A watcher asking for fragments whose
            // response needs split is answered from owned events instead,
            // after the responses queued before it.
            let shared = if w.prev_kv {
                parts.response_with_prev(id, |e| w.matches(e), prev)
            } else {
                parts.response(id, |e| w.matches(e))
            };
            let split = matches!(&shared, Some((out, n))
                if w.fragment && *n >= 2 && prost::Message::encoded_len(out) >= limit);
            let mine = split.then(|| {
                events
                    .iter()
                    .filter(|e| w.matches(e))
                    .cloned()
                    .collect::<Vec<_>>()
            });
            w.next_rev = w.next_rev.max(rev + 1);
            let sent = match (mine, shared) {
                (Some(mine), _) => {
                    self.out.send_all(std::mem::take(&mut chunk)).await
                        && self.deliver(id, w, mine, rev).await
                }
                (None, Some((out, n))) => {
                    w.active = true;
                    metrics::EVENTS_TOTAL.add(n as u64);
                    chunk.push(Ok(out));
                    chunk.len() < watch_outbox::CHUNK
                        || self.out.send_all(std::mem::take(&mut chunk)).await
                }
                (None, None) => true,
            };
            if !sent {
                ok = false;
                break;
            }
        }
        self.watchers = watchers;
        if !ok || !self.out.send_all(chunk).await {
            return false;
        }
        if rev > self.delivered {
            self.delivered = rev;
        }
        true
    }

    async fn resync(&mut self) -> bool {
        let cur = self.s.store.current_rev();
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(mut w) = self.watchers.remove(&id) else {
                continue;
            };
            let (open, alive) = self.catch_up(id, &mut w, cur).await;
            if !open {
                return false;
            }
            if alive {
                self.watchers.insert(id, w);
            }
        }
        if cur > self.delivered {
            self.delivered = cur;
        }
        true
    }

    async fn progress_tick(&mut self) -> bool {
        let rev = self.delivered;
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && !w.active)
            .map(|(id, _)| *id)
            .collect();
        for w in self.watchers.values_mut() {
            w.active = false;
        }
        for id in ids {
            if !self
                .send(WatchResponse {
                    header: self.header(rev),
                    watch_id: id,
                    ..Default::default()
                })
                .await
            {
                return false;
            }
        }
        true
    }

    async fn run(
        mut self,
        mut input: Streaming<WatchRequest>,
        mut sub: broadcast::Receiver<Arc<crate::mvcc::watch::EventBatch>>,
    ) {
        let every = Duration::from_millis(
            self.s
                .cfg
                .experimental_watch_progress_notify_interval_ms
                .max(100),
        );
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // A client that closes its sending side keeps its watchers, as in
        // etcd (the JSON gateway's clients send their requests, then read):
        // the stream then ends when the client stops reading.
        let out = self.out.clone();
        let mut input_open = true;
        loop {
            let ok = tokio::select! {
                msg = input.next(), if input_open => match msg {
                    Some(Ok(req)) => self.on_request(req).await,
                    None => {
                        input_open = false;
                        true
                    }
                    Some(Err(e)) => {
                        // As etcd: a request the stream could not take (over
                        // the message limit, say) ends the call with its status.
                        super::count_stream_failure(&e, &metrics::WATCH_STREAM_RECEIVE_FAILURES);
                        let _ = self.out.send(Err(e)).await;
                        false
                    }
                },
                _ = out.closed(), if !input_open => false,
                b = sub.recv() => match b {
                    Ok(batch) if batch.resync => self.resync().await,
                    Ok(batch) => self.on_batch(&batch.events, batch.rev).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync().await,
                    Err(broadcast::error::RecvError::Closed) => false,
                },
                _ = ticker.tick() => self.progress_tick().await,
            };
            if !ok {
                break;
            }
        }
        metrics::WATCHERS.add(-(self.watchers.len() as i64));
        metrics::WATCH_STREAMS.add(-1);
    }

    async fn on_request(&mut self, req: WatchRequest) -> bool {
        match req.request_union {
            Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(watch_request::RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    metrics::WATCHERS.add(-1);
                    let cur = self.s.store.current_rev();
                    return self
                        .send(WatchResponse {
                            header: self.header(cur),
                            watch_id: c.watch_id,
                            canceled: true,
                            ..Default::default()
                        })
                        .await;
                }
                true
            }
            Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                let rev = self.delivered;
                self.send(WatchResponse {
                    header: self.header(rev),
                    watch_id: -1,
                    ..Default::default()
                })
                .await
            }
            None => true,
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = watch_outbox::Responses;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // The authorization layer resolved the caller; each create request is
        // checked against it. Without it (never the case) nothing is allowed.
        let who = req
            .extensions()
            .get::<super::authz::Resolved>()
            .cloned()
            .unwrap_or(super::authz::Resolved(Err(
                crate::error::Error::PermissionDenied,
            )));
        let input = req.into_inner();
        let sub = self.s.hub.subscribe();
        let (tx, rx) = watch_outbox::outbox();
        metrics::WATCH_STREAMS.add(1);
        let st = Stream {
            s: self.s.clone(),
            out: tx,
            watchers: BTreeMap::new(),
            next_id: 0,
            delivered: self.s.store.current_rev(),
            who,
        };
        tokio::spawn(st.run(input, sub));
        Ok(Response::new(rx))
    }
}
