//! Decoding of Raft messages received from peers.
//!
//! raft-rs's message types (`eraftpb`) are generated for the `protobuf` 2 crate,
//! which RUSTSEC-2024-0437 flags (uncontrolled recursion on crafted input) and
//! which is no longer maintained. Bytes that come from a peer are therefore
//! decoded here with prost (which bounds nesting) into mirror structs holding
//! only `eraftpb`'s known fields, then moved into raft-rs's types. Payloads are
//! not copied: byte fields are slices of the received buffer.
//!
//! The payload of a membership-change entry (`ConfChange`, `ConfChangeV2`) is
//! parsed later with protobuf 2, by raft-rs (a proposal on the leader) and by
//! the apply loop; such payloads are decoded here as well and replaced by their
//! re-encoding, which holds known fields only. So the bytes protobuf 2 parses are
//! never a peer's, only ones this member encoded.

use prost::Message as _;
use prost::bytes::Bytes;
use protobuf::ProtobufEnum;
use raft::eraftpb::{
    ConfChangeTransition, ConfChangeType, ConfState, Entry, EntryType, Message, MessageType,
    Snapshot, SnapshotMetadata,
};

/// Why a peer's bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("undecodable raft message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("unknown {what} {value}")]
    UnknownEnum { what: &'static str, value: i32 },
    #[error("undecodable membership change in entry {index}: {detail}")]
    ConfChange { index: u64, detail: String },
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireEntry {
    #[prost(int32, tag = "1")]
    entry_type: i32,
    #[prost(uint64, tag = "2")]
    term: u64,
    #[prost(uint64, tag = "3")]
    index: u64,
    #[prost(bytes = "bytes", tag = "4")]
    data: Bytes,
    #[prost(bytes = "bytes", tag = "6")]
    context: Bytes,
    #[prost(bool, tag = "5")]
    sync_log: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireConfState {
    #[prost(uint64, repeated, tag = "1")]
    voters: Vec<u64>,
    #[prost(uint64, repeated, tag = "2")]
    learners: Vec<u64>,
    #[prost(uint64, repeated, tag = "3")]
    voters_outgoing: Vec<u64>,
    #[prost(uint64, repeated, tag = "4")]
    learners_next: Vec<u64>,
    #[prost(bool, tag = "5")]
    auto_leave: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireSnapshotMetadata {
    #[prost(message, optional, tag = "1")]
    conf_state: Option<WireConfState>,
    #[prost(uint64, tag = "2")]
    index: u64,
    #[prost(uint64, tag = "3")]
    term: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireSnapshot {
    #[prost(bytes = "bytes", tag = "1")]
    data: Bytes,
    #[prost(message, optional, tag = "2")]
    metadata: Option<WireSnapshotMetadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireMessage {
    #[prost(int32, tag = "1")]
    msg_type: i32,
    #[prost(uint64, tag = "2")]
    to: u64,
    #[prost(uint64, tag = "3")]
    from: u64,
    #[prost(uint64, tag = "4")]
    term: u64,
    #[prost(uint64, tag = "5")]
    log_term: u64,
    #[prost(uint64, tag = "6")]
    index: u64,
    #[prost(message, repeated, tag = "7")]
    entries: Vec<WireEntry>,
    #[prost(uint64, tag = "8")]
    commit: u64,
    #[prost(uint64, tag = "15")]
    commit_term: u64,
    #[prost(message, optional, tag = "9")]
    snapshot: Option<WireSnapshot>,
    #[prost(uint64, tag = "13")]
    request_snapshot: u64,
    #[prost(bool, tag = "10")]
    reject: bool,
    #[prost(uint64, tag = "11")]
    reject_hint: u64,
    #[prost(bytes = "bytes", tag = "12")]
    context: Bytes,
    #[prost(uint64, tag = "14")]
    deprecated_priority: u64,
    #[prost(int64, tag = "16")]
    priority: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireConfChange {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int32, tag = "2")]
    change_type: i32,
    #[prost(uint64, tag = "3")]
    node_id: u64,
    #[prost(bytes = "bytes", tag = "4")]
    context: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireConfChangeSingle {
    #[prost(int32, tag = "1")]
    change_type: i32,
    #[prost(uint64, tag = "2")]
    node_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireConfChangeV2 {
    #[prost(int32, tag = "1")]
    transition: i32,
    #[prost(message, repeated, tag = "2")]
    changes: Vec<WireConfChangeSingle>,
    #[prost(bytes = "bytes", tag = "3")]
    context: Bytes,
}

fn known<E: ProtobufEnum>(what: &'static str, value: i32) -> Result<E, WireError> {
    E::from_i32(value).ok_or(WireError::UnknownEnum { what, value })
}

/// The message type of an encoded message, read from its first field, as
/// [`encode`] writes it (`msg_type` first, omitted when 0). `None` when the
/// bytes do not start with that field.
pub fn leading_msg_type(mut b: &[u8]) -> Option<u64> {
    let (tag, wire_type) = prost::encoding::decode_key(&mut b).ok()?;
    if tag != 1 || wire_type != prost::encoding::WireType::Varint {
        return None;
    }
    prost::encoding::decode_varint(&mut b).ok()
}

/// Checks that `data`, the payload of entry `index`, is a membership change of
/// the entry's kind, and returns it re-encoded from its known fields.
fn canonical_conf_change(kind: EntryType, index: u64, data: Bytes) -> Result<Bytes, WireError> {
    let bad = |detail: String| WireError::ConfChange { index, detail };
    let out = match kind {
        EntryType::EntryConfChange => {
            let cc = WireConfChange::decode(data).map_err(|e| bad(e.to_string()))?;
            known::<ConfChangeType>("conf change type", cc.change_type)
                .map_err(|e| bad(e.to_string()))?;
            cc.encode_to_vec()
        }
        EntryType::EntryConfChangeV2 => {
            let cc = WireConfChangeV2::decode(data).map_err(|e| bad(e.to_string()))?;
            known::<ConfChangeTransition>("conf change transition", cc.transition)
                .map_err(|e| bad(e.to_string()))?;
            for c in &cc.changes {
                known::<ConfChangeType>("conf change type", c.change_type)
                    .map_err(|e| bad(e.to_string()))?;
            }
            cc.encode_to_vec()
        }
        EntryType::EntryNormal => return Ok(data),
    };
    Ok(out.into())
}

fn entry(w: WireEntry) -> Result<Entry, WireError> {
    let kind: EntryType = known("entry type", w.entry_type)?;
    let mut e = Entry::default();
    e.set_entry_type(kind);
    e.term = w.term;
    e.index = w.index;
    e.data = canonical_conf_change(kind, w.index, w.data)?;
    e.context = w.context;
    e.sync_log = w.sync_log;
    Ok(e)
}

fn snapshot(w: WireSnapshot) -> Snapshot {
    let mut s = Snapshot {
        data: w.data,
        ..Default::default()
    };
    if let Some(m) = w.metadata {
        let mut meta = SnapshotMetadata {
            index: m.index,
            term: m.term,
            ..Default::default()
        };
        if let Some(c) = m.conf_state {
            meta.set_conf_state(ConfState {
                voters: c.voters,
                learners: c.learners,
                voters_outgoing: c.voters_outgoing,
                learners_next: c.learners_next,
                auto_leave: c.auto_leave,
                ..Default::default()
            });
        }
        s.set_metadata(meta);
    }
    s
}

/// Decodes a Raft message a peer sent. `buf` is borrowed by the message's byte
/// fields (entry payloads, snapshot data) rather than copied.
pub fn decode(buf: Bytes) -> Result<Message, WireError> {
    let w = WireMessage::decode(buf)?;
    let mut m = Message::default();
    m.set_msg_type(known::<MessageType>("message type", w.msg_type)?);
    m.to = w.to;
    m.from = w.from;
    m.term = w.term;
    m.log_term = w.log_term;
    m.index = w.index;
    m.commit = w.commit;
    m.commit_term = w.commit_term;
    m.request_snapshot = w.request_snapshot;
    m.reject = w.reject;
    m.reject_hint = w.reject_hint;
    m.context = w.context;
    m.deprecated_priority = w.deprecated_priority;
    m.priority = w.priority;
    let entries = w
        .entries
        .into_iter()
        .map(entry)
        .collect::<Result<Vec<_>, _>>()?;
    m.set_entries(entries.into());
    if let Some(s) = w.snapshot {
        m.set_snapshot(snapshot(s));
    }
    Ok(m)
}

/// Encodes a message of this member for a peer (protobuf 2's encoder writes
/// fields in the order `eraftpb.proto` declares them: `msg_type` comes first).
pub fn encode(m: &Message) -> protobuf::ProtobufResult<Vec<u8>> {
    protobuf::Message::write_to_bytes(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message as _;
    use raft::eraftpb::{ConfChange, ConfChangeSingle, ConfChangeV2};

    fn sample() -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 7;
        m.log_term = 6;
        m.index = 41;
        m.commit = 40;
        m.commit_term = 6;
        m.request_snapshot = 3;
        m.reject = true;
        m.reject_hint = 9;
        m.context = Bytes::from_static(b"ctx");
        m.deprecated_priority = 4;
        m.priority = -5;
        let mut entries = Vec::new();
        for i in 0..3u64 {
            entries.push(Entry {
                term: 7,
                index: 42 + i,
                data: Bytes::from(vec![i as u8; 100]),
                context: Bytes::from_static(b"c"),
                sync_log: i == 1,
                ..Default::default()
            });
        }
        let mut cc = ConfChange {
            id: 5,
            node_id: 77,
            context: Bytes::from_static(b"member"),
            ..Default::default()
        };
        cc.set_change_type(ConfChangeType::AddLearnerNode);
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.index = 45;
        e.data = cc.write_to_bytes().expect("encode").into();
        entries.push(e);
        let mut v2 = ConfChangeV2::default();
        v2.set_transition(ConfChangeTransition::Explicit);
        let mut single = ConfChangeSingle::default();
        single.set_change_type(ConfChangeType::RemoveNode);
        single.node_id = 3;
        v2.mut_changes().push(single);
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e.index = 46;
        e.data = v2.write_to_bytes().expect("encode").into();
        entries.push(e);
        m.set_entries(entries.into());
        let mut s = Snapshot {
            data: Bytes::from(vec![0xAB; 1000]),
            ..Default::default()
        };
        s.mut_metadata().index = 40;
        s.mut_metadata().term = 6;
        s.mut_metadata().set_conf_state(ConfState {
            voters: vec![1, 2],
            learners: vec![3],
            voters_outgoing: vec![4],
            learners_next: vec![5],
            auto_leave: true,
            ..Default::default()
        });
        m.set_snapshot(s);
        m
    }

    #[test]
    fn every_field_survives_the_round_trip() {
        let m = sample();
        let bytes = encode(&m).expect("encode");
        assert_eq!(m, Message::parse_from_bytes(&bytes).expect("protobuf"));
        let mut got = decode(Bytes::from(bytes.clone())).expect("decode");
        // Membership changes are re-encoded: equal as messages, not as bytes.
        let (cc, v2) = (&got.entries[3].data, &got.entries[4].data);
        assert_eq!(
            ConfChange::parse_from_bytes(cc).expect("conf change"),
            ConfChange::parse_from_bytes(&m.entries[3].data).expect("conf change")
        );
        assert_eq!(
            ConfChangeV2::parse_from_bytes(v2).expect("conf change v2"),
            ConfChangeV2::parse_from_bytes(&m.entries[4].data).expect("conf change v2")
        );
        got.mut_entries()[3].data = m.entries[3].data.clone();
        got.mut_entries()[4].data = m.entries[4].data.clone();
        assert_eq!(got, m);
        assert_eq!(
            leading_msg_type(&bytes),
            Some(MessageType::MsgAppend as u64)
        );
        let hup = Message {
            from: 1,
            ..Default::default()
        };
        assert_eq!(leading_msg_type(&encode(&hup).expect("encode")), None);
    }

    /// A million groups nested in an unknown field (the pattern of
    /// RUSTSEC-2024-0437): refused, without recursing once per level.
    #[test]
    fn deeply_nested_groups_are_refused_without_recursion() {
        let mut b = vec![0x08, 0x03];
        let depth = 1_000_000;
        for _ in 0..depth {
            b.extend_from_slice(&[0xA3, 0x01]); // field 20, start group
        }
        for _ in 0..depth {
            b.extend_from_slice(&[0xA4, 0x01]); // field 20, end group
        }
        assert!(decode(Bytes::from(b)).is_err());
    }

    #[test]
    fn membership_payloads_are_reencoded_and_checked() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        // A known field, then an unknown group holding an unknown varint.
        e.data = Bytes::from_static(&[0x18, 0x07, 0xA3, 0x01, 0xA8, 0x01, 0x01, 0xA4, 0x01]);
        m.set_entries(vec![e].into());
        let got = decode(Bytes::from(encode(&m).expect("encode"))).expect("decode");
        assert_eq!(&got.entries[0].data[..], &[0x18, 0x07]);

        let mut bad = m.clone();
        bad.mut_entries()[0].data = Bytes::from_static(&[0x10, 0x09]); // change type 9
        assert!(matches!(
            decode(Bytes::from(encode(&bad).expect("encode"))),
            Err(WireError::ConfChange { .. })
        ));
        let mut bad = m;
        bad.mut_entries()[0].data = Bytes::from_static(&[0xFF]);
        assert!(decode(Bytes::from(encode(&bad).expect("encode"))).is_err());
    }

    #[test]
    fn unknown_message_types_are_refused() {
        let b = vec![0x08, 0x63];
        assert!(matches!(
            decode(Bytes::from(b)),
            Err(WireError::UnknownEnum { .. })
        ));
    }
}
