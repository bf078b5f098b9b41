//! The Watch service's answers as they are sent, and the gRPC service that
//! sends them.
//!
//! A batch of events goes to every watcher that takes it, each in a
//! response of its own that differs from the others only in its watch ID.
//! The batch's header and events are encoded once ([`BatchParts`]); each
//! response ([`WatchOut::Shared`]) refers to those bytes and writes them
//! out with its ID between, byte for byte what encoding a `WatchResponse`
//! of the same fields gives. Watchers asking for previous values (as
//! Kubernetes' API server does) share a second encoding of the events, with
//! each event's previous key-value read once for the batch
//! ([`BatchParts::response_with_prev`]). Other responses (creation,
//! cancellation, progress, history, a batch split into fragments) are
//! `WatchResponse` messages as they are.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::{Request, Response, Status, Streaming};

use crate::pb::etcdserverpb::{ResponseHeader, WatchRequest, WatchResponse};
use crate::pb::mvccpb::{Event, KeyValue};

/// `WatchResponse.header`.
const HEADER_FIELD: u32 = 1;
/// `WatchResponse.watch_id`.
const WATCH_ID_FIELD: u32 = 2;
/// `WatchResponse.events`.
const EVENTS_FIELD: u32 = 11;

/// One response of a watch stream.
#[derive(Debug)]
pub enum WatchOut {
    Message(WatchResponse),
    /// A header and events encoded once for a batch, with this watch ID.
    Shared {
        /// The header field, encoded (tag, length, message).
        header: Bytes,
        watch_id: i64,
        /// The events fields, encoded one after the other.
        events: Bytes,
    },
}

impl prost::Message for WatchOut {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            WatchOut::Message(m) => m.encode_raw(buf),
            WatchOut::Shared {
                header,
                watch_id,
                events,
            } => {
                // Fields in the order a WatchResponse writes them; a zero ID
                // is left out, as proto3 leaves out every default.
                buf.put_slice(header);
                if *watch_id != 0 {
                    prost::encoding::int64::encode(WATCH_ID_FIELD, watch_id, buf);
                }
                buf.put_slice(events);
            }
        }
    }

    /// Never decoded: the stream only sends these.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            WatchOut::Message(m) => m.encoded_len(),
            WatchOut::Shared {
                header,
                watch_id,
                events,
            } => {
                let id = if *watch_id != 0 {
                    prost::encoding::int64::encoded_len(WATCH_ID_FIELD, watch_id)
                } else {
                    0
                };
                header.len() + id + events.len()
            }
        }
    }

    fn clear(&mut self) {
        *self = WatchOut::Message(WatchResponse::default());
    }
}

/// A batch's header and events, each encoded once, for the responses that
/// carry them.
pub struct BatchParts<'a> {
    header: Bytes,
    events: &'a [Event],
    /// Each event's field, encoded when a first watcher takes the batch.
    each: Vec<Bytes>,
    /// Every event's field, for the watchers that take them all.
    all: Option<Bytes>,
    /// The events one watcher takes (kept to spare an allocation each).
    picked: Vec<usize>,
    /// Each event's field with its previous key-value, encoded when a first
    /// watcher asking for previous values takes that event.
    each_prev: Vec<Option<Bytes>>,
    /// Every event's field with its previous key-value.
    all_prev: Option<Bytes>,
}

impl<'a> BatchParts<'a> {
    pub fn new(header: Option<ResponseHeader>, events: &'a [Event]) -> Self {
        let mut h = Vec::new();
        if let Some(header) = &header {
            prost::encoding::message::encode(HEADER_FIELD, header, &mut h);
        }
        BatchParts {
            header: Bytes::from(h),
            events,
            each: Vec::new(),
            all: None,
            picked: Vec::new(),
            each_prev: Vec::new(),
            all_prev: None,
        }
    }

    /// The response for watcher `watch_id` with the events `take` accepts,
    /// and their number; None when it accepts none.
    pub fn response(
        &mut self,
        watch_id: i64,
        mut take: impl FnMut(&Event) -> bool,
    ) -> Option<(WatchOut, usize)> {
        let mut picked = std::mem::take(&mut self.picked);
        picked.clear();
        picked.extend((0..self.events.len()).filter(|&i| take(&self.events[i])));
        let out = self.shared(watch_id, &picked);
        self.picked = picked;
        out
    }

    /// The response for watcher `watch_id` with the events `take` accepts,
    /// each with its previous key-value: the one it carries, else what
    /// `prev` reads for its key-value (asked once per event and batch, not
    /// once per watcher). None when it accepts none.
    pub fn response_with_prev(
        &mut self,
        watch_id: i64,
        mut take: impl FnMut(&Event) -> bool,
        mut prev: impl FnMut(&KeyValue) -> Option<KeyValue>,
    ) -> Option<(WatchOut, usize)> {
        let mut picked = std::mem::take(&mut self.picked);
        picked.clear();
        picked.extend((0..self.events.len()).filter(|&i| take(&self.events[i])));
        if self.each_prev.len() != self.events.len() {
            self.each_prev = vec![None; self.events.len()];
        }
        for &i in &picked {
            if self.each_prev[i].is_none() {
                let e = &self.events[i];
                let mut b = Vec::new();
                match (&e.prev_kv, &e.kv) {
                    (None, Some(kv)) => {
                        let with = Event {
                            prev_kv: prev(kv),
                            ..e.clone()
                        };
                        prost::encoding::message::encode(EVENTS_FIELD, &with, &mut b);
                    }
                    _ => prost::encoding::message::encode(EVENTS_FIELD, e, &mut b),
                }
                self.each_prev[i] = Some(Bytes::from(b));
            }
        }
        let n = picked.len();
        let each = &self.each_prev;
        let events = if n == 0 {
            None
        } else if n == self.events.len() {
            let all = self
                .all_prev
                .get_or_insert_with(|| joined(each.iter().flatten()));
            Some(all.clone())
        } else {
            Some(joined(picked.iter().filter_map(|&i| each[i].as_ref())))
        };
        self.picked = picked;
        Some((self.with(watch_id, events?), n))
    }

    /// The response carrying the events at `picked`.
    fn shared(&mut self, watch_id: i64, picked: &[usize]) -> Option<(WatchOut, usize)> {
        if picked.is_empty() {
            return None;
        }
        if self.each.is_empty() {
            self.each = self
                .events
                .iter()
                .map(|e| {
                    let mut b = Vec::new();
                    prost::encoding::message::encode(EVENTS_FIELD, e, &mut b);
                    Bytes::from(b)
                })
                .collect();
        }
        let events = if picked.len() == self.events.len() {
            let each = &self.each;
            self.all
                .get_or_insert_with(|| Bytes::from(each.concat()))
                .clone()
        } else {
            joined(picked.iter().map(|&i| &self.each[i]))
        };
        Some((self.with(watch_id, events), picked.len()))
    }

    /// The response of watcher `watch_id` carrying the encoded `events`.
    fn with(&self, watch_id: i64, events: Bytes) -> WatchOut {
        WatchOut::Shared {
            header: self.header.clone(),
            watch_id,
            events,
        }
    }
}

/// Encoded events one after the other; one alone is shared as it is.
fn joined<'b>(parts: impl Iterator<Item = &'b Bytes> + Clone) -> Bytes {
    let mut it = parts.clone();
    if let (Some(one), None) = (it.next(), it.next()) {
        return one.clone();
    }
    let mut b = Vec::with_capacity(parts.clone().map(|p| p.len()).sum());
    for p in parts {
        b.extend_from_slice(p);
    }
    Bytes::from(b)
}

/// etcd's Watch service, answering with [`WatchOut`] messages.
#[tonic::async_trait]
pub trait Watch: Send + Sync + 'static {
    type WatchStream: tokio_stream::Stream<Item = Result<WatchOut, Status>> + Send + 'static;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status>;
}

/// The gRPC service of `/etcdserverpb.Watch/Watch`.
pub struct WatchServer<T> {
    inner: Arc<T>,
    max_decoding: Option<usize>,
}

impl<T> WatchServer<T> {
    pub fn new(inner: T) -> Self {
        WatchServer {
            inner: Arc::new(inner),
            max_decoding: None,
        }
    }

    /// The largest request message the stream takes.
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding = Some(limit);
        self
    }
}

impl<T> Clone for WatchServer<T> {
    fn clone(&self) -> Self {
        WatchServer {
            inner: self.inner.clone(),
            max_decoding: self.max_decoding,
        }
    }
}

impl<T> tonic::server::NamedService for WatchServer<T> {
    const NAME: &'static str = "etcdserverpb.Watch";
}

/// The one method, as tonic's streaming server calls it.
struct WatchMethod<T>(Arc<T>);

impl<T: Watch> tonic::server::StreamingService<WatchRequest> for WatchMethod<T> {
    type Response = WatchOut;
    type ResponseStream = T::WatchStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<WatchRequest>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.watch(request).await })
    }
}

impl<T, B> Service<http::Request<B>> for WatchServer<T>
where
    T: Watch,
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != "/etcdserverpb.Watch/Watch" {
            return Box::pin(async move {
                Ok(Status::unimplemented("").into_http::<tonic::body::Body>())
            });
        }
        let method = WatchMethod(self.inner.clone());
        let max_decoding = self.max_decoding;
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<WatchOut, WatchRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec)
                .apply_max_message_size_config(max_decoding, Some(usize::MAX));
            Ok(grpc.streaming(method, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::pb::mvccpb::KeyValue;

    fn event(key: &str, rev: i64) -> Event {
        Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: key.into(),
                create_revision: 2,
                mod_revision: rev,
                version: 3,
                value: vec![7; 300],
                lease: 0,
            }),
            prev_kv: None,
        }
    }

    fn header() -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: 0x1234_5678_9abc,
            member_id: 42,
            revision: 9,
            raft_term: 3,
        })
    }

    fn keyed(e: &Event, keys: &[&str]) -> bool {
        keys.contains(&String::from_utf8_lossy(&e.kv.as_ref().unwrap().key).as_ref())
    }

    /// `out`, carrying `n` events, is byte for byte `expected`.
    fn assert_encodes_as(out: &WatchOut, n: usize, expected: &WatchResponse) {
        let id = expected.watch_id;
        assert_eq!(n, expected.events.len(), "watch {id}");
        assert_eq!(out.encoded_len(), expected.encoded_len(), "watch {id}");
        assert_eq!(out.encode_to_vec(), expected.encode_to_vec(), "watch {id}");
    }

    #[test]
    fn a_shared_response_is_the_bytes_of_the_same_watch_response() {
        let events = vec![event("/a", 7), event("/b", 8), event("/c", 9)];
        let mut parts = BatchParts::new(header(), &events);
        for (id, keys) in [
            (0i64, vec!["/a", "/b", "/c"]),
            (5, vec!["/a", "/b", "/c"]),
            (-1, vec!["/b"]),
            (1 << 40, vec!["/a", "/c"]),
        ] {
            let (out, n) = parts.response(id, |e| keyed(e, &keys)).expect("a response");
            let expected = WatchResponse {
                header: header(),
                watch_id: id,
                events: events.iter().filter(|e| keyed(e, &keys)).cloned().collect(),
                ..Default::default()
            };
            assert_encodes_as(&out, n, &expected);
        }
        assert!(parts.response(3, |_| false).is_none());
    }

    #[test]
    fn a_response_with_previous_values_is_the_bytes_of_the_same_watch_response() {
        let mut carried = event("/c", 9);
        carried.prev_kv = Some(KeyValue {
            key: "/c".into(),
            value: b"carried".to_vec(),
            ..Default::default()
        });
        let events = vec![event("/a", 7), event("/b", 8), carried];
        let old = |kv: &KeyValue| KeyValue {
            key: kv.key.clone(),
            mod_revision: kv.mod_revision - 5,
            value: b"old".to_vec(),
            ..Default::default()
        };
        let mut asked = Vec::new();
        let mut parts = BatchParts::new(header(), &events);
        for (id, keys) in [
            (4i64, vec!["/b"]),
            (5, vec!["/a", "/b", "/c"]),
            (6, vec!["/a", "/c"]),
            (7, vec!["/a", "/b", "/c"]),
        ] {
            let (out, n) = parts
                .response_with_prev(
                    id,
                    |e| keyed(e, &keys),
                    |kv| {
                        asked.push(kv.key.clone());
                        // The first key has no previous value.
                        (kv.key != b"/a").then(|| old(kv))
                    },
                )
                .expect("a response");
            let expected = WatchResponse {
                header: header(),
                watch_id: id,
                events: events
                    .iter()
                    .filter(|e| keyed(e, &keys))
                    .map(|e| {
                        let mut e = e.clone();
                        if e.prev_kv.is_none() && e.kv.as_ref().unwrap().key != b"/a" {
                            e.prev_kv = Some(old(e.kv.as_ref().unwrap()));
                        }
                        e
                    })
                    .collect(),
                ..Default::default()
            };
            assert_encodes_as(&out, n, &expected);
        }
        // Read once per event for the whole batch; never for an event that
        // carries its previous value.
        assert_eq!(asked, vec![b"/b".to_vec(), b"/a".to_vec()]);
        // Watchers without previous values still get the events as they are.
        let (plain, _) = parts.response(8, |_| true).expect("a response");
        let expected = WatchResponse {
            header: header(),
            watch_id: 8,
            events: events.clone(),
            ..Default::default()
        };
        assert_eq!(plain.encode_to_vec(), expected.encode_to_vec());
        assert!(parts.response_with_prev(9, |_| false, |_| None).is_none());
    }

    #[test]
    fn a_response_without_a_header_leaves_it_out() {
        let events = vec![event("/a", 7)];
        let (out, _) = BatchParts::new(None, &events)
            .response(2, |_| true)
            .expect("a response");
        let expected = WatchResponse {
            watch_id: 2,
            events,
            ..Default::default()
        };
        assert_eq!(out.encode_to_vec(), expected.encode_to_vec());
    }
}
