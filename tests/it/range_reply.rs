//! Unary Ranges answered from the store straight into the reply, through a
//! raw gRPC client that keeps the reply's bytes: side by side with Debian's
//! etcd on the same writes, every reply (whole or streamed, with a limit,
//! keys only, count only, at an older revision, refused) is etcd's, byte for
//! byte but for the header's member fields; and a reply of 40 MB costs the
//! member a small part of its size in memory.

use etcd_rs::pb::etcdserverpb::kv_client::KvClient;
use etcd_rs::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_rs::pb::etcdserverpb::*;
use prost::Message;
use prost::bytes::{Buf, BufMut};
use tonic::transport::Channel;

use crate::harness::Server;
use crate::range_stream::put;

/// A codec that hands over messages as their bytes.
#[derive(Default, Clone, Copy)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// The reply's message bytes, or its status.
async fn raw_range(ch: &Channel, r: &RangeRequest) -> Result<Vec<u8>, tonic::Status> {
    let mut g = tonic::client::Grpc::new(ch.clone()).max_decoding_message_size(usize::MAX);
    g.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Range");
    g.unary(tonic::Request::new(r.encode_to_vec()), path, Raw)
        .await
        .map(tonic::Response::into_inner)
}

/// Splits a reply into its header's revision and the bytes after the header
/// (the keys, `more` and `count`), which must be etcd's exactly.
fn split_header(msg: &[u8]) -> (i64, Vec<u8>) {
    assert_eq!(msg.first(), Some(&0x0a), "the reply starts with its header");
    let mut rest = &msg[1..];
    let len = prost::encoding::decode_varint(&mut rest).expect("header length") as usize;
    let header = ResponseHeader::decode(&rest[..len]).expect("header");
    (header.revision, rest[len..].to_vec())
}

fn key(i: usize) -> Vec<u8> {
    format!("/big/{i:05}").into_bytes()
}

/// A value of about 1,000 bytes that differs from key to key.
fn value(i: usize, round: usize) -> Vec<u8> {
    format!("{i}:{round}:")
        .repeat(1000 / (i.to_string().len() + 4))
        .into_bytes()
}

/// The same writes on one server: 1,500 keys of about 1,000 bytes, ten of
/// them written again and one deleted. Returns the revision after the
/// first 1,500 puts.
async fn load(ch: Channel) -> i64 {
    let mut kv = KvClient::new(ch);
    let mut rev = 0;
    for i in 0..1500 {
        rev = put(&mut kv, key(i), value(i, 0)).await;
    }
    for i in 0..10 {
        put(&mut kv, key(i * 100), value(i, 1)).await;
    }
    kv.delete_range(DeleteRangeRequest {
        key: key(20),
        ..Default::default()
    })
    .await
    .expect("delete");
    rev
}

#[test]
fn unary_ranges_are_etcds_replies_byte_for_byte() {
    let ours = Server::start(&[]);
    let etcd = Server::start_reference(&[]);
    crate::harness::runtime().block_on(async {
        let a = crate::harness::grpc_channel(&ours.endpoint()).await;
        let b = crate::harness::grpc_channel(&etcd.endpoint()).await;
        let (loaded, loaded_ref) = tokio::join!(load(a.clone()), load(b.clone()));
        assert_eq!(
            loaded, loaded_ref,
            "the same writes make the same revisions"
        );

        let all = RangeRequest {
            key: b"/big/".to_vec(),
            range_end: b"/big0".to_vec(),
            ..Default::default()
        };
        let cases = [
            ("every key (streamed)", all.clone()),
            (
                "a limit under the keys built whole",
                RangeRequest {
                    limit: 10,
                    ..all.clone()
                },
            ),
            (
                "a limit over them",
                RangeRequest {
                    limit: 1200,
                    ..all.clone()
                },
            ),
            (
                "keys only",
                RangeRequest {
                    keys_only: true,
                    ..all.clone()
                },
            ),
            (
                "count only",
                RangeRequest {
                    count_only: true,
                    ..all.clone()
                },
            ),
            (
                "an older revision",
                RangeRequest {
                    revision: loaded,
                    ..all.clone()
                },
            ),
            (
                "serializable, from a key on",
                RangeRequest {
                    key: key(1400),
                    range_end: vec![0],
                    serializable: true,
                    ..Default::default()
                },
            ),
            (
                "sorted by key",
                RangeRequest {
                    sort_order: SortOrder::Ascend as i32,
                    sort_target: SortTarget::Key as i32,
                    ..all.clone()
                },
            ),
            (
                "sorted otherwise (answered by the message path)",
                RangeRequest {
                    sort_order: SortOrder::Descend as i32,
                    sort_target: SortTarget::Mod as i32,
                    limit: 50,
                    ..all.clone()
                },
            ),
            (
                "one key",
                RangeRequest {
                    key: key(7),
                    ..Default::default()
                },
            ),
            (
                "a deleted key",
                RangeRequest {
                    key: key(20),
                    ..Default::default()
                },
            ),
            (
                "a future revision",
                RangeRequest {
                    revision: loaded + 1000,
                    ..all.clone()
                },
            ),
            ("an empty key", RangeRequest::default()),
        ];
        let mut streamed = 0;
        for (what, r) in &cases {
            let (got, want) = (raw_range(&a, r).await, raw_range(&b, r).await);
            match (got, want) {
                (Ok(got), Ok(want)) => {
                    let (got_rev, got_rest) = split_header(&got);
                    let (want_rev, want_rest) = split_header(&want);
                    assert_eq!(got_rev, want_rev, "{what}: header revision");
                    assert!(
                        got_rest == want_rest,
                        "{what}: the reply differs from etcd's"
                    );
                    if got.len() > 1 << 20 {
                        streamed += 1;
                    }
                }
                (Err(got), Err(want)) => {
                    assert_eq!(
                        (got.code(), got.message()),
                        (want.code(), want.message()),
                        "{what}"
                    );
                }
                (got, want) => panic!(
                    "{what}: ours {:?}, etcd {:?}",
                    got.map(|m| m.len()),
                    want.map(|m| m.len())
                ),
            }
        }
        assert!(streamed >= 3, "only {streamed} replies over 1 MiB");

        // A compacted revision, refused as etcd refuses it.
        for ch in [&a, &b] {
            KvClient::new(ch.clone())
                .compact(CompactionRequest {
                    revision: loaded,
                    physical: true,
                })
                .await
                .expect("compact");
        }
        let old = RangeRequest {
            revision: loaded - 1,
            ..all.clone()
        };
        let got = raw_range(&a, &old).await.expect_err("compacted");
        let want = raw_range(&b, &old).await.expect_err("compacted");
        assert_eq!((got.code(), got.message()), (want.code(), want.message()));
    });
}

/// The peak of the member's resident memory since it was reset, and the
/// resident memory now, in bytes.
fn reset_peak(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
    status_kib(pid, "VmRSS:") * 1024
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in /proc/<pid>/status")
}

#[test]
fn a_large_reply_is_not_held_whole_in_memory() {
    let srv = Server::start(&[]);
    let pid = srv.pid().expect("pid");
    crate::harness::runtime().block_on(async {
        let ch = crate::harness::grpc_channel(&srv.endpoint()).await;
        let mut kv = KvClient::new(ch.clone());
        // 20,000 keys of 2,000 bytes: a reply of about 40 MB.
        let n = 20_000;
        for batch in 0..n / 100 {
            let success = (0..100)
                .map(|j| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key(batch * 100 + j),
                        value: vec![b'a' + (j % 26) as u8; 2000],
                        ..Default::default()
                    })),
                })
                .collect();
            kv.txn(TxnRequest {
                success,
                ..Default::default()
            })
            .await
            .expect("txn");
        }
        let before = reset_peak(pid);
        let reply = raw_range(
            &ch,
            &RangeRequest {
                key: b"/big/".to_vec(),
                range_end: b"/big0".to_vec(),
                ..Default::default()
            },
        )
        .await
        .expect("range");
        let peak = status_kib(pid, "VmHWM:") * 1024;
        let resp = RangeResponse::decode(&reply[..]).expect("reply");
        assert_eq!((resp.kvs.len(), resp.count), (n, n as i64));
        assert_eq!(resp.kvs[n - 1].key, key(n - 1));
        assert!(resp.kvs.iter().all(|kv| kv.value.len() == 2000));
        let growth = peak.saturating_sub(before);
        assert!(
            growth < reply.len() as u64 / 2,
            "a reply of {} bytes took the member's memory from {before} to {peak} bytes",
            reply.len()
        );
    });
}
