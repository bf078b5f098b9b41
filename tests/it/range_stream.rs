//! `KV.RangeStream` (etcd 3.7's streaming Range) through a raw gRPC client:
//! chunks in key order that merge into what Range answers at the same
//! revision, the revision pinned when the stream starts, the header, `more`
//! and `count` only in the last chunk, chunk sizes bounded by
//! `--max-request-bytes`, the options etcd refuses refused with its texts, a
//! compacted or future revision, and authorization before any chunk.

use etcd_rs::pb::etcdserverpb::auth_client::AuthClient;
use etcd_rs::pb::etcdserverpb::kv_client::KvClient;
use etcd_rs::pb::etcdserverpb::range_request::SortOrder;
use etcd_rs::pb::etcdserverpb::*;
use prost::Message;
use tonic::transport::Channel;

use crate::harness::Server;

const MAX_REQUEST: usize = 64 * 1024;

async fn channel(srv: &Server) -> Channel {
    crate::harness::grpc_channel(&srv.endpoint()).await
}

fn key(i: usize) -> Vec<u8> {
    format!("/stream/{i:05}").into_bytes()
}

fn prefix_end() -> Vec<u8> {
    b"/stream0".to_vec()
}

/// A put; returns the revision it made.
pub(crate) async fn put(kv: &mut KvClient<Channel>, k: Vec<u8>, v: Vec<u8>) -> i64 {
    kv.put(PutRequest {
        key: k,
        value: v,
        ..Default::default()
    })
    .await
    .expect("put")
    .into_inner()
    .header
    .expect("header")
    .revision
}

/// Every chunk of one stream, or the status the call (or the stream) ended with.
async fn stream_all(
    kv: &mut KvClient<Channel>,
    r: RangeRequest,
) -> Result<Vec<RangeResponse>, tonic::Status> {
    let mut s = kv.range_stream(r).await?.into_inner();
    let mut out = Vec::new();
    while let Some(c) = s.message().await? {
        out.push(c.range_response.expect("range_response in every chunk"));
    }
    Ok(out)
}

/// Checks the chunk shape etcd promises and returns the merged response.
fn merge(chunks: &[RangeResponse]) -> RangeResponse {
    let (last, rest) = chunks.split_last().expect("at least one chunk");
    for c in rest {
        assert!(c.header.is_none(), "a header before the last chunk");
        assert_eq!(
            (c.more, c.count),
            (false, 0),
            "more/count before the last chunk"
        );
        assert!(!c.kvs.is_empty(), "an empty chunk before the last one");
    }
    let header = last.header.expect("the last chunk has the header");
    assert_ne!(header.cluster_id, 0);
    assert_ne!(header.member_id, 0);
    assert_ne!(header.raft_term, 0);
    RangeResponse {
        header: Some(header),
        kvs: chunks.iter().flat_map(|c| c.kvs.clone()).collect(),
        more: last.more,
        count: last.count,
    }
}

#[test]
fn range_stream_chunks_at_one_revision() {
    let max = MAX_REQUEST.to_string();
    let srv = Server::start(&["--max-request-bytes", &max]);
    crate::harness::runtime().block_on(async {
        let mut kv = KvClient::new(channel(&srv).await);
        let n = 600;
        for i in 0..n {
            put(&mut kv, key(i), vec![b'v'; 1000 + i]).await;
        }
        let all = RangeRequest {
            key: key(0),
            range_end: prefix_end(),
            ..Default::default()
        };

        // The revision is pinned when the stream starts: writes made after
        // the first chunk are not seen by later chunks.
        let mut s = kv
            .range_stream(all.clone())
            .await
            .expect("stream")
            .into_inner();
        let first = s
            .message()
            .await
            .expect("first chunk")
            .and_then(|c| c.range_response)
            .expect("a chunk");
        let rev_at_start = kv
            .range(RangeRequest {
                key: key(0),
                serializable: true,
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner()
            .header
            .expect("header")
            .revision;
        put(&mut kv, key(n - 1), b"changed".to_vec()).await;
        put(&mut kv, key(n + 5), b"new".to_vec()).await;
        let mut chunks = vec![first];
        while let Some(c) = s.message().await.expect("chunk") {
            chunks.push(c.range_response.expect("range_response"));
        }
        assert!(chunks.len() > 4, "{} chunks", chunks.len());
        for c in &chunks {
            assert!(
                c.encoded_len() <= 4 * MAX_REQUEST,
                "a chunk of {} bytes",
                c.encoded_len()
            );
        }
        let merged = merge(&chunks);
        assert_eq!(
            merged.header.as_ref().map(|h| h.revision),
            Some(rev_at_start)
        );
        let unary = kv
            .range(RangeRequest {
                revision: rev_at_start,
                ..all.clone()
            })
            .await
            .expect("range")
            .into_inner();
        assert_eq!(merged.kvs.len(), n);
        assert_eq!(merged.kvs, unary.kvs);
        assert_eq!((merged.more, merged.count), (false, n as i64));
        assert_ne!(merged.kvs[n - 1].value, b"changed");

        // A limit: the keys up to it, `more`, and the count of the whole range.
        let limited = merge(
            &stream_all(
                &mut kv,
                RangeRequest {
                    limit: 35,
                    ..all.clone()
                },
            )
            .await
            .expect("limited stream"),
        );
        assert_eq!(limited.kvs.len(), 35);
        assert_eq!(limited.kvs[..], merged.kvs[..35]);
        assert_eq!((limited.more, limited.count), (true, n as i64 + 1));

        // An explicit revision, keys only.
        let keys_only = merge(
            &stream_all(
                &mut kv,
                RangeRequest {
                    revision: rev_at_start,
                    keys_only: true,
                    ..all.clone()
                },
            )
            .await
            .expect("keys-only stream"),
        );
        assert_eq!(keys_only.kvs.len(), n);
        assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));
        assert_eq!(keys_only.kvs[7].key, key(7));

        // Count only: one chunk.
        let counted = stream_all(
            &mut kv,
            RangeRequest {
                count_only: true,
                ..all.clone()
            },
        )
        .await
        .expect("count-only stream");
        assert_eq!(counted.len(), 1);
        assert_eq!(counted[0].count, n as i64 + 1);
        assert!(counted[0].kvs.is_empty());

        // Nothing in range: one chunk with the header and a zero count.
        let none = stream_all(
            &mut kv,
            RangeRequest {
                key: b"/nothing/".to_vec(),
                range_end: b"/nothing0".to_vec(),
                ..Default::default()
            },
        )
        .await
        .expect("empty stream");
        assert_eq!(none.len(), 1);
        assert!(none[0].header.is_some() && none[0].kvs.is_empty() && none[0].count == 0);

        // A single key.
        let one = merge(
            &stream_all(
                &mut kv,
                RangeRequest {
                    key: key(3),
                    ..Default::default()
                },
            )
            .await
            .expect("single-key stream"),
        );
        assert_eq!((one.kvs.len(), one.count), (1, 1));
    });
}

#[test]
fn range_stream_refusals() {
    let srv = Server::start(&[]);
    crate::harness::runtime().block_on(async {
        let mut kv = KvClient::new(channel(&srv).await);
        let mut last = 0;
        for i in 0..5 {
            last = put(&mut kv, key(i), b"v".to_vec()).await;
        }
        let all = RangeRequest {
            key: key(0),
            range_end: prefix_end(),
            ..Default::default()
        };
        let refused = |r: Result<Vec<RangeResponse>, tonic::Status>| {
            let e = r.expect_err("refused");
            (e.code(), e.message().to_string())
        };
        let cases = [
            (
                RangeRequest {
                    sort_order: SortOrder::Descend as i32,
                    ..all.clone()
                },
                tonic::Code::Unimplemented,
                "RangeStream does not support custom sort orders",
            ),
            (
                RangeRequest {
                    max_create_revision: 3,
                    ..all.clone()
                },
                tonic::Code::Unimplemented,
                "RangeStream does not support revision filters",
            ),
            (
                RangeRequest::default(),
                tonic::Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                RangeRequest {
                    revision: last + 100,
                    ..all.clone()
                },
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
        ];
        for (r, code, text) in cases {
            assert_eq!(
                refused(stream_all(&mut kv, r).await),
                (code, text.to_string())
            );
        }
        kv.compact(CompactionRequest {
            revision: last,
            physical: true,
        })
        .await
        .expect("compact");
        assert_eq!(
            refused(
                stream_all(
                    &mut kv,
                    RangeRequest {
                        revision: last - 2,
                        ..all.clone()
                    }
                )
                .await
            ),
            (
                tonic::Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted".to_string()
            )
        );

        // Authorization comes first: a user with no permission on the range
        // gets etcd's refusal and no chunk.
        crate::security::setup_users(&srv);
        let token = AuthClient::new(channel(&srv).await)
            .authenticate(AuthenticateRequest {
                name: "alice".into(),
                password: "pw".into(),
            })
            .await
            .expect("authenticate")
            .into_inner()
            .token;
        let mut r = tonic::Request::new(all.clone());
        r.metadata_mut()
            .insert("token", token.parse().expect("token metadata"));
        let e = kv.range_stream(r).await.expect_err("permission denied");
        assert_eq!(
            (e.code(), e.message()),
            (
                tonic::Code::PermissionDenied,
                "etcdserver: permission denied"
            )
        );
    });
}
