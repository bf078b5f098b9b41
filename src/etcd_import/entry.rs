//! etcd's log entries as ours: the same index and term, the request in our
//! entry format (`server::request`), membership changes with our member
//! record as context. Requests without side effects become empty entries;
//! anything unknown is an error, never skipped.

use prost::Message;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType};

use super::pb::{self, InternalRaftRequest, V2Request};
use crate::pb::etcdserverpb::Member;
use crate::server::request::{AssignToken, InternalRequest, Op};

/// etcd's member record (`membership.Member`) as JSON, in a membership
/// change's context and in v2 attribute updates.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct JsonMember {
    id: u64,
    #[serde(rename = "peerURLs")]
    peer_urls: Vec<String>,
    name: String,
    #[serde(rename = "clientURLs")]
    client_urls: Vec<String>,
    #[serde(rename = "isLearner")]
    is_learner: bool,
}

/// Converts entries, hashing the plain passwords etcd 3.4 keeps in its log
/// with `bcrypt_cost` (our log holds only hashes).
pub struct Converter {
    pub bcrypt_cost: u32,
    /// v2 requests on etcd's v2 store (not membership): etcd-rs has no v2
    /// store, so they become empty entries; counted for the import's log line.
    pub v2_skipped: u64,
}

fn empty(e: &pb::Entry) -> Entry {
    let mut out = Entry::default();
    out.set_entry_type(EntryType::EntryNormal);
    out.term = e.term;
    out.index = e.index;
    out
}

impl Converter {
    pub fn new(bcrypt_cost: u32) -> Converter {
        Converter {
            bcrypt_cost,
            v2_skipped: 0,
        }
    }

    /// One entry of etcd's log as an entry of ours.
    pub fn convert(&mut self, e: &pb::Entry) -> Result<Entry, String> {
        match e.r#type {
            pb::ENTRY_NORMAL => {
                let mut out = empty(e);
                if e.data.is_empty() {
                    return Ok(out);
                }
                if let Some(op) = self.request(&e.data)? {
                    out.data = InternalRequest {
                        id: 0,
                        op: Some(op),
                    }
                    .encode_to_vec()
                    .into();
                }
                Ok(out)
            }
            pb::ENTRY_CONF_CHANGE => {
                let cc = pb::ConfChange::decode(&e.data[..])
                    .map_err(|err| format!("membership change does not decode: {err}"))?;
                let ctx = || -> Result<JsonMember, String> {
                    if cc.context.is_empty() {
                        return Ok(JsonMember::default());
                    }
                    serde_json::from_slice(&cc.context)
                        .map_err(|err| format!("membership change context is not a member: {err}"))
                };
                let member = |m: JsonMember| Member {
                    id: cc.node_id,
                    name: m.name,
                    peer_ur_ls: m.peer_urls,
                    client_ur_ls: m.client_urls,
                    is_learner: m.is_learner,
                };
                let mut ours = ConfChange {
                    node_id: cc.node_id,
                    ..Default::default()
                };
                match cc.r#type {
                    pb::CC_ADD_NODE | pb::CC_ADD_LEARNER_NODE => {
                        ours.set_change_type(if cc.r#type == pb::CC_ADD_NODE {
                            ConfChangeType::AddNode
                        } else {
                            ConfChangeType::AddLearnerNode
                        });
                        ours.context = member(ctx()?).encode_to_vec().into();
                    }
                    pb::CC_REMOVE_NODE => ours.set_change_type(ConfChangeType::RemoveNode),
                    pb::CC_UPDATE_NODE => {
                        // New peer URLs: no change to Raft's configuration,
                        // so an ordinary request here.
                        let mut out = empty(e);
                        let m = member(ctx()?);
                        out.data = InternalRequest {
                            id: 0,
                            op: Some(Op::MemberUpdate(Member {
                                id: m.id,
                                peer_ur_ls: m.peer_ur_ls,
                                ..Default::default()
                            })),
                        }
                        .encode_to_vec()
                        .into();
                        return Ok(out);
                    }
                    other => return Err(format!("unknown membership change type {other}")),
                }
                let mut out = empty(e);
                out.set_entry_type(EntryType::EntryConfChange);
                out.data = protobuf::Message::write_to_bytes(&ours)
                    .map_err(|err| err.to_string())?
                    .into();
                Ok(out)
            }
            pb::ENTRY_CONF_CHANGE_V2 => {
                Err("joint-consensus membership changes (ConfChangeV2) are not supported".into())
            }
            other => Err(format!("unknown entry type {other}")),
        }
    }

    fn hash(&self, password: &str) -> Result<String, String> {
        bcrypt::hash(password, self.bcrypt_cost).map_err(|e| format!("bcrypt: {e}"))
    }

    /// A normal entry's request; None for one without effect on the state.
    fn request(&mut self, data: &[u8]) -> Result<Option<Op>, String> {
        let r = match InternalRaftRequest::decode(data) {
            Ok(r) => r,
            // etcd's own test: what is not an InternalRaftRequest is a v2
            // request (etcd 3.4 publishes member attributes that way).
            Err(e) => match V2Request::decode(data) {
                Ok(v2) => return self.v2(v2),
                Err(_) => return Err(format!("request does not decode: {e}")),
            },
        };
        if let Some(v2) = r.v2 {
            return self.v2(v2);
        }
        let op = if let Some(p) = r.put {
            Op::Put(p)
        } else if let Some(d) = r.delete_range {
            Op::DeleteRange(d)
        } else if let Some(t) = r.txn {
            Op::Txn(t)
        } else if let Some(c) = r.compaction {
            Op::Compaction(c)
        } else if let Some(g) = r.lease_grant {
            Op::LeaseGrant(g)
        } else if let Some(l) = r.lease_revoke {
            Op::LeaseRevoke(l)
        } else if let Some(a) = r.alarm {
            Op::Alarm(a)
        } else if let Some(a) = r.auth_enable {
            Op::AuthEnable(a)
        } else if let Some(a) = r.auth_disable {
            Op::AuthDisable(a)
        } else if let Some(a) = r.authenticate {
            if a.simple_token.is_empty() {
                return Ok(None);
            }
            Op::AssignToken(AssignToken {
                user: a.name,
                token: a.simple_token,
            })
        } else if let Some(mut u) = r.auth_user_add {
            let no_password = u.options.as_ref().is_some_and(|o| o.no_password);
            if u.hashed_password.is_empty() && !no_password && !u.password.is_empty() {
                u.hashed_password = self.hash(&u.password)?;
            }
            u.password.clear();
            Op::UserAdd(u)
        } else if let Some(u) = r.auth_user_delete {
            Op::UserDelete(u)
        } else if let Some(mut u) = r.auth_user_change_password {
            if u.hashed_password.is_empty() && !u.password.is_empty() {
                u.hashed_password = self.hash(&u.password)?;
            }
            u.password.clear();
            Op::UserChangePassword(u)
        } else if let Some(u) = r.auth_user_grant_role {
            Op::UserGrantRole(u)
        } else if let Some(u) = r.auth_user_revoke_role {
            Op::UserRevokeRole(u)
        } else if let Some(x) = r.auth_role_add {
            Op::RoleAdd(x)
        } else if let Some(x) = r.auth_role_delete {
            Op::RoleDelete(x)
        } else if let Some(x) = r.auth_role_grant_permission {
            Op::RoleGrantPermission(x)
        } else if let Some(x) = r.auth_role_revoke_permission {
            Op::RoleRevokePermission(x)
        } else if let Some(m) = r.cluster_member_attr_set {
            let a = m.member_attributes.unwrap_or_default();
            Op::Publish(Member {
                id: m.member_id,
                name: a.name,
                client_ur_ls: a.client_urls,
                ..Default::default()
            })
        } else if r.range.is_some()
            || r.lease_checkpoint.is_some()
            || r.auth_user_get.is_some()
            || r.auth_user_list.is_some()
            || r.auth_role_get.is_some()
            || r.auth_role_list.is_some()
            || r.cluster_version_set.is_some()
            || r.downgrade_info_set.is_some()
        {
            return Ok(None);
        } else {
            // Decoded, but nothing this reader knows: perhaps a v2 request
            // whose bytes also parse as a raft request, else a newer etcd's.
            match V2Request::decode(data) {
                Ok(v2) if v2.path.starts_with('/') && !v2.method.is_empty() => return self.v2(v2),
                _ => return Err("request of a kind etcd-rs does not know".into()),
            }
        };
        Ok(Some(op))
    }

    /// A v2 request: member attributes become a publish; the cluster version
    /// has no record here; anything else concerns etcd's v2 store.
    fn v2(&mut self, r: V2Request) -> Result<Option<Op>, String> {
        let attrs = r
            .path
            .strip_prefix("/0/members/")
            .and_then(|p| p.strip_suffix("/attributes"));
        match (r.method.as_str(), attrs) {
            ("PUT", Some(id)) => {
                let id = u64::from_str_radix(id, 16)
                    .map_err(|_| format!("v2 member path {:?} has no member ID", r.path))?;
                let m: JsonMember = serde_json::from_str(&r.val)
                    .map_err(|e| format!("v2 member attributes do not decode: {e}"))?;
                Ok(Some(Op::Publish(Member {
                    id,
                    name: m.name,
                    client_ur_ls: m.client_urls,
                    ..Default::default()
                })))
            }
            _ if r.path == "/0/version" => Ok(None),
            _ => {
                self.v2_skipped += 1;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::PutRequest;

    fn normal(data: Vec<u8>) -> pb::Entry {
        pb::Entry {
            r#type: pb::ENTRY_NORMAL,
            term: 3,
            index: 9,
            data,
        }
    }

    fn op(e: &Entry) -> Option<Op> {
        InternalRequest::decode(&e.data[..]).expect("ours").op
    }

    #[test]
    fn put_keeps_index_term_and_request() {
        let req = InternalRaftRequest {
            id: 5,
            put: Some(PutRequest {
                key: vec![0, 0xff],
                value: b"v".to_vec(),
                lease: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = Converter::new(4);
        let e = c.convert(&normal(req.encode_to_vec())).expect("convert");
        assert_eq!((e.index, e.term), (9, 3));
        match op(&e) {
            Some(Op::Put(p)) => {
                assert_eq!(p.key, vec![0, 0xff]);
                assert_eq!(p.lease, 7);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v2_attributes_become_a_publish() {
        let v2 = V2Request {
            id: 1,
            method: "PUT".into(),
            path: "/0/members/8e9e05c52164694d/attributes".into(),
            val: r#"{"name":"default","clientURLs":["http://127.0.0.1:2379"]}"#.into(),
        };
        let mut c = Converter::new(4);
        let e = c.convert(&normal(v2.encode_to_vec())).expect("convert");
        match op(&e) {
            Some(Op::Publish(m)) => {
                assert_eq!(m.id, 0x8e9e05c52164694d);
                assert_eq!(m.name, "default");
                assert_eq!(m.client_ur_ls, vec!["http://127.0.0.1:2379".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        let v = V2Request {
            id: 2,
            method: "PUT".into(),
            path: "/0/version".into(),
            val: "3.4.0".into(),
        };
        let e = c.convert(&normal(v.encode_to_vec())).expect("convert");
        assert!(e.data.is_empty());
    }

    #[test]
    fn plain_passwords_are_hashed() {
        let req = InternalRaftRequest {
            auth_user_add: Some(crate::pb::etcdserverpb::AuthUserAddRequest {
                name: "u".into(),
                password: "secret".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = Converter::new(4);
        let e = c.convert(&normal(req.encode_to_vec())).expect("convert");
        match op(&e) {
            Some(Op::UserAdd(u)) => {
                assert!(u.password.is_empty());
                assert!(bcrypt::verify("secret", &u.hashed_password).expect("verify"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn membership_changes() {
        let cc = pb::ConfChange {
            id: 1,
            r#type: pb::CC_ADD_LEARNER_NODE,
            node_id: 42,
            context: br#"{"id":42,"peerURLs":["http://127.0.0.1:2380"],"isLearner":true}"#.to_vec(),
        };
        let mut c = Converter::new(4);
        let e = c
            .convert(&pb::Entry {
                r#type: pb::ENTRY_CONF_CHANGE,
                term: 2,
                index: 4,
                data: cc.encode_to_vec(),
            })
            .expect("convert");
        assert_eq!(e.get_entry_type(), EntryType::EntryConfChange);
        let ours: ConfChange = protobuf::Message::parse_from_bytes(&e.data).expect("ours");
        assert_eq!(ours.get_change_type(), ConfChangeType::AddLearnerNode);
        let m = Member::decode(&ours.context[..]).expect("member");
        assert_eq!(m.peer_ur_ls, vec!["http://127.0.0.1:2380".to_string()]);
        assert!(m.is_learner);
        // Unknown requests are errors, not skipped.
        let unknown = {
            let mut b = Vec::new();
            prost::encoding::uint64::encode(9900, &1u64, &mut b);
            b
        };
        assert!(c.convert(&normal(unknown)).is_err());
        let v2cc = pb::Entry {
            r#type: pb::ENTRY_CONF_CHANGE_V2,
            term: 1,
            index: 1,
            data: vec![],
        };
        assert!(c.convert(&v2cc).is_err());
    }
}
