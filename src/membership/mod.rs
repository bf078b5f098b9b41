//! Members of the cluster and the IDs that name them, computed as etcd computes
//! them so that tools printing IDs agree: a member ID is the first 8 bytes of the
//! SHA-1 of its sorted peer URLs followed by the cluster token; the cluster ID is the
//! first 8 bytes of the SHA-1 of the sorted member IDs.

use std::collections::BTreeMap;

use parking_lot::RwLock;
use sha1::{Digest, Sha1};

use crate::pb::etcdserverpb::Member;

pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(|s| s.as_str()).collect();
    urls.sort_unstable();
    let mut h = Sha1::new();
    for u in urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8]))
}

pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().unwrap_or([0; 8]))
}

/// Members from `--initial-cluster` (name=url pairs; a name may repeat).
pub fn initial_members(pairs: &[(String, String)], token: &str) -> Vec<Member> {
    let mut by_name: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (name, url) in pairs {
        if !by_name.contains_key(name.as_str()) {
            order.push(name);
        }
        by_name.entry(name).or_default().push(url.clone());
    }
    order
        .into_iter()
        .map(|name| {
            let urls = by_name.remove(name).unwrap_or_default();
            Member {
                id: member_id(&urls, token),
                name: name.to_string(),
                peer_ur_ls: urls,
                client_ur_ls: vec![],
                is_learner: false,
            }
        })
        .collect()
}

/// The cluster as this member knows it.
#[derive(Debug)]
pub struct Cluster {
    pub cluster_id: u64,
    pub local_id: u64,
    members: RwLock<BTreeMap<u64, Member>>,
}

impl Cluster {
    pub fn new(cluster_id: u64, local_id: u64, members: Vec<Member>) -> Self {
        Cluster {
            cluster_id,
            local_id,
            members: RwLock::new(members.into_iter().map(|m| (m.id, m)).collect()),
        }
    }

    pub fn members(&self) -> Vec<Member> {
        self.members.read().values().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<Member> {
        self.members.read().get(&id).cloned()
    }

    pub fn replace(&self, members: Vec<Member>) {
        *self.members.write() = members.into_iter().map(|m| (m.id, m)).collect();
    }

    pub fn upsert(&self, m: Member) {
        self.members.write().insert(m.id, m);
    }

    pub fn remove(&self, id: u64) -> Option<Member> {
        self.members.write().remove(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_etcd_defaults() {
        // etcd's single-member defaults print these IDs.
        let m = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{m:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[m])), "cdf818194e3a8c32");
    }
}
