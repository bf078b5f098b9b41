//! The member: bootstrap or restart from the data directory, the request path
//! (proposals through Raft, linearizable read barriers), and the shared handles the
//! API layer serves from.

pub mod alarm;
pub mod apply;
pub mod compactor;
mod handoff;
mod inflight;
pub mod node;
mod read_index;
pub mod request;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;
use prost::Message;
use redb::ReadableTable;
use tokio::sync::oneshot;

use crate::config::{ClusterState, Config};
use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::membership::{self, Cluster};
use crate::mvcc::Store;
use crate::mvcc::watch::WatchHub;
use crate::pb::etcdserverpb::{Member, ResponseHeader};
use crate::raft::LogStore;
use crate::storage::space::DiskSpace;
use crate::storage::{self, ALARMS, Backend, LEASES, MEMBERS, META, StorageError};
use alarm::Alarms;
use apply::Applier;
use node::{IdGen, Inbox, Msg, Node, NodeConfig, RaftStatus};
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, EntryType};
pub use request::{Applied, InternalRequest, Op};

/// Why a member could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("cannot use data directory {path}: {detail}")]
    DataDir { path: String, detail: String },
    #[error("couldn't find local name {0:?} in the initial cluster configuration")]
    NameNotInCluster(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Jwt(#[from] crate::auth::jwt::JwtError),
    /// etcd's files in the data directory cannot be imported.
    #[error("cannot import etcd's data directory: {0}")]
    Import(#[from] crate::etcd_import::ImportError),
    #[error("cannot start the raft loop: {0}")]
    Thread(String),
    /// `--experimental-initial-corrupt-check` found a peer with another hash
    /// at the same revision (etcd's text: `<member ID> found data
    /// inconsistency with peers`).
    #[error("{0}")]
    Corrupt(String),
}

pub struct EtcdServer {
    pub cfg: Arc<Config>,
    pub auth: Arc<crate::auth::AuthStore>,
    pub backend: Arc<Backend>,
    pub store: Arc<Store>,
    pub lessor: Arc<Lessor>,
    pub cluster: Arc<Cluster>,
    pub alarms: Arc<Alarms>,
    pub hub: Arc<WatchHub>,
    pub status: Arc<RaftStatus>,
    pub ids: Arc<IdGen>,
    tx: std::sync::mpsc::Sender<Msg>,
    /// The Raft loop's state, held by its thread while it works; a write
    /// may run there itself ([`Node::propose_here`]).
    node: Arc<Mutex<Option<Node>>>,
    thread: Mutex<Option<std::thread::JoinHandle<Result<(), StorageError>>>>,
    pub request_timeout: Duration,
    pub transport: Arc<crate::raft::transport::Transport>,
    inflight: inflight::InFlight,
    /// Whether a write alone in flight may be made durable on the runtime
    /// thread that received it: not when the runtime has one worker, which
    /// would sync each write while the next ones wait undecoded behind it,
    /// every one of them alone, and none committed together.
    writes_here: bool,
    reads: Arc<read_index::ReadQueue>,
    /// Free space on the data directory's filesystem.
    pub disk: Arc<DiskSpace>,
}

fn prepare_data_dir(dir: &Path) -> Result<(), StartError> {
    let err = |e: std::io::Error| StartError::DataDir {
        path: dir.display().to_string(),
        detail: e.to_string(),
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
    }
    Ok(())
}

impl EtcdServer {
    /// Opens (or bootstraps) the member's state and starts its Raft loop.
    pub fn start(cfg: Config) -> Result<Arc<EtcdServer>, StartError> {
        let cfg = Arc::new(cfg);
        prepare_data_dir(&cfg.data_dir)?;
        // etcd's files and no database of ours: import them, then start as
        // the member they describe.
        if let Some(i) = crate::etcd_import::import_if_present(
            &cfg.data_dir,
            cfg.wal_dir.as_deref(),
            cfg.bcrypt_cost,
        )? {
            let path = |p: &Path| p.display().to_string();
            crate::info!(
                "imported etcd data directory",
                backend = path(&i.backend),
                snapshot = i.snapshot.as_deref().map(path).unwrap_or_default(),
                wal_files = i
                    .wal_files
                    .iter()
                    .map(|p| path(p))
                    .collect::<Vec<_>>()
                    .join(","),
                revision = i.revision,
                consistent_index = i.consistent_index,
                commit_index = i.commit_index,
                last_index = i.last_index,
                term = i.term,
                local_member_id = format!("{:x}", i.member_id),
                cluster_id = format!("{:x}", i.cluster_id)
            );
            if let Some((file, offset)) = &i.cut {
                crate::info!(
                    "ignored a torn record at the end of etcd's WAL, as etcd does",
                    path = path(file),
                    offset = *offset
                );
            }
            if i.v2_skipped > 0 {
                crate::warn!(
                    "etcd's WAL holds v2-store requests, which etcd-rs has no store for; not imported",
                    count = i.v2_skipped
                );
            }
        }
        // Before the database: on a full disk the reserve is given up so that
        // opening, electing and raising NOSPACE find room.
        let disk = Arc::new(DiskSpace::new(&cfg.data_dir));
        disk.prepare().map_err(|e| StartError::DataDir {
            path: cfg.data_dir.display().to_string(),
            detail: e.to_string(),
        })?;
        let backend = Arc::new(Backend::open(&cfg.data_dir)?);

        let mut initialized = false;
        let (member_id, cluster_id, log, seed) = {
            let txn = backend.read()?;
            let meta = txn.open_table(META).map_err(StorageError::from)?;
            let m = storage::get_u64(&meta, storage::meta::MEMBER_ID)?;
            let c = storage::get_u64(&meta, storage::meta::CLUSTER_ID)?;
            drop(meta);
            drop(txn);
            let log_dir = crate::raft::log_dir(&cfg.data_dir, cfg.wal_dir.as_deref());
            if let (Some(m), Some(c), true) = (m, c, cfg.force_new_cluster) {
                LogStore::stage(&backend, &log_dir)?;
                Self::force_new_cluster(&cfg, &backend, m, c)?;
            }
            match (m, c, LogStore::load(&backend, &log_dir)?) {
                (Some(m), Some(c), Some(log)) => {
                    crate::info!(
                        "restarting member",
                        local_member_id = format!("{m:x}"),
                        cluster_id = format!("{c:x}")
                    );
                    initialized = true;
                    (m, c, log, Vec::new())
                }
                _ => Self::bootstrap(&cfg, &backend)?,
            }
        };

        let members = {
            let txn = backend.read()?;
            let t = txn.open_table(MEMBERS).map_err(StorageError::from)?;
            let mut v = Vec::new();
            for item in t.iter().map_err(StorageError::from)? {
                let (k, val) = item.map_err(StorageError::from)?;
                let m = Member::decode(val.value()).map_err(|e| StorageError::Decode {
                    what: format!("members/{:x}", k.value()),
                    detail: e.to_string(),
                })?;
                v.push(m);
            }
            v
        };
        let cluster = Arc::new(Cluster::new(cluster_id, member_id, members));

        let (store, leased) = Store::open(backend.clone(), cfg.compaction())?;
        let store = Arc::new(store);
        let election_ticks = (cfg.election_timeout_ms / cfg.heartbeat_interval_ms.max(1)).max(2);
        // etcd's floor for a lease TTL: 1.5 election timeouts, in whole seconds.
        let min_ttl_ms = 3 * election_ticks * cfg.heartbeat_interval_ms.max(1) / 2;
        let lessor = Arc::new(Lessor::new(min_ttl_ms.div_ceil(1000) as i64));
        let alarms = Arc::new(Alarms::default());
        let applied;
        {
            let txn = backend.read()?;
            let t = txn.open_table(LEASES).map_err(StorageError::from)?;
            for item in t.iter().map_err(StorageError::from)? {
                let (k, v) = item.map_err(StorageError::from)?;
                let b: [u8; 8] = v.value().try_into().map_err(|_| StorageError::Decode {
                    what: format!("lease/{:x}", k.value()),
                    detail: "expected an 8-byte TTL".into(),
                })?;
                lessor.restore(k.value(), i64::from_be_bytes(b));
            }
            for (key, lease) in leased {
                lessor.attach(&key, lease);
            }
            let t = txn.open_table(ALARMS).map_err(StorageError::from)?;
            for item in t.iter().map_err(StorageError::from)? {
                let (k, v) = item.map_err(StorageError::from)?;
                let (m, a) = k.value();
                alarms.restore(m, a, v.value());
            }
            let meta = txn.open_table(META).map_err(StorageError::from)?;
            applied = storage::get_u64(&meta, storage::meta::APPLIED_INDEX)?.unwrap_or(0);
        }

        let jwt = Self::token_provider(&cfg.auth_token)?;
        let auth = Arc::new(crate::auth::AuthStore::with_jwt(
            Duration::from_secs(cfg.auth_token_ttl.max(1)),
            cfg.bcrypt_cost,
            jwt,
        ));
        {
            let txn = backend.read()?;
            auth.replace(apply::load_auth(&txn)?);
        }
        let hub = Arc::new(WatchHub::new());
        let status = Arc::new(RaftStatus::default());
        let ids = Arc::new(IdGen::new(member_id));
        let voters = raft::Storage::initial_state(&log.storage())
            .map(|s| s.conf_state.voters)
            .unwrap_or_default();
        let single_voter = voters == vec![member_id];
        let (tx, rx) = std::sync::mpsc::channel();
        let inbox = Inbox::new(tx.clone());
        let peer_inbox = inbox.clone();
        let transport = crate::raft::transport::Transport::new(
            cluster_id,
            member_id,
            Arc::new(move |ev| peer_inbox.deliver(ev)),
            tokio::runtime::Handle::try_current()
                .map_err(|e| StartError::Thread(format!("no async runtime: {e}")))?,
            Self::peer_tls(&cfg)?,
            crate::raft::transport::Limits::new(
                cfg.max_request_bytes,
                cfg.effective_quota_backend_bytes(),
            ),
        );
        transport.set_store(store.clone());
        if let Some(dir) = backend.path().parent() {
            transport.set_snapshot_dir(dir.to_path_buf());
        }
        // As etcd: only a member that already had data is checked, before its
        // Raft loop starts.
        if initialized && cfg.experimental_initial_corrupt_check {
            let peer_tls = Self::peer_tls(&cfg)?;
            tokio::runtime::Handle::try_current()
                .map_err(|e| StartError::Thread(format!("no async runtime: {e}")))?
                .block_on(Self::initial_corrupt_check(
                    &cfg, &store, &cluster, &peer_tls,
                ))?;
        }
        let mut node = Node::new(
            NodeConfig {
                id: member_id,
                heartbeat: Duration::from_millis(cfg.heartbeat_interval_ms.max(1)),
                backend_commit_interval: cfg.backend_batch_interval,
                backend_commit_limit: cfg.backend_batch_limit,
                election_ticks: election_ticks as usize,
                applied,
                snapshot_count: cfg.snapshot_count,
                single_voter,
                pre_vote: cfg.pre_vote,
                freeze_file: cfg
                    .debug_freeze_apply
                    .then(|| cfg.data_dir.join("member").join("freeze-apply")),
                quota_bytes: cfg.effective_quota_backend_bytes().unwrap_or(u64::MAX),
            },
            log,
            Applier {
                auth: auth.clone(),
                store: store.clone(),
                lessor: lessor.clone(),
                cluster: cluster.clone(),
                alarms: alarms.clone(),
            },
            backend.clone(),
            hub.clone(),
            status.clone(),
            ids.clone(),
            tx.clone(),
            Some(transport.clone()),
            disk.clone(),
        )?;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let h = handoff::Handoff::start(&rt).map_err(|e| StartError::Thread(e.to_string()))?;
            node.set_handoff(h);
        }
        node.set_inbox(inbox.clone());
        let reads = node.read_queue();
        let node = Arc::new(Mutex::new(Some(node)));
        inbox.attach(&node);
        let shared = node.clone();
        if !seed.is_empty() {
            transport.seed(seed);
        }
        // On a runtime of one worker (one CPU), writes go through the loop
        // (see `writes_here`), and the loop lets that worker decode the
        // writes that came with the first before it takes them.
        let writes_here =
            tokio::runtime::Handle::try_current().is_ok_and(|h| h.metrics().num_workers() > 1);
        let thread = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || {
                let r = Node::run(shared, rx, !writes_here);
                if let Err(e) = &r {
                    crate::error!("raft loop stopped", error = e);
                }
                r
            })
            .map_err(|e| StartError::Thread(e.to_string()))?;
        crate::metrics::SERVER_ID.store(member_id, Ordering::Relaxed);
        crate::metrics::set_extensive(cfg.metrics == "extensive");
        crate::metrics::init_process();
        crate::metrics::peer::set_local(member_id);
        crate::metrics::QUOTA_BACKEND_BYTES.set(
            cfg.effective_quota_backend_bytes()
                .map_or(0, |q| i64::try_from(q).unwrap_or(i64::MAX)),
        );
        let request_timeout = Duration::from_millis(5000 + 2 * cfg.election_timeout_ms);
        Ok(Arc::new(EtcdServer {
            cfg,
            auth,
            backend,
            store,
            lessor,
            cluster,
            alarms,
            hub,
            status,
            ids,
            tx,
            node,
            thread: Mutex::new(Some(thread)),
            request_timeout,
            transport,
            inflight: inflight::InFlight::default(),
            writes_here,
            reads,
            disk,
        }))
    }

    #[allow(clippy::type_complexity)]
    fn bootstrap(
        cfg: &Config,
        backend: &Arc<Backend>,
    ) -> Result<(u64, u64, LogStore, Vec<Member>), StartError> {
        let mut seed = Vec::new();
        let same_urls = |a: &[String], b: &[String]| {
            let mut a = a.to_vec();
            let mut b = b.to_vec();
            a.sort();
            b.sort();
            a == b
        };
        let (member_id, cluster_id, log) = match cfg.initial_cluster_state {
            ClusterState::New => {
                let members =
                    membership::initial_members(&cfg.initial_cluster, &cfg.initial_cluster_token);
                let local = members
                    .iter()
                    .find(|m| m.name == cfg.name)
                    .ok_or_else(|| StartError::NameNotInCluster(cfg.name.clone()))?;
                if !same_urls(&local.peer_ur_ls, &cfg.initial_advertise_peer_urls) {
                    return Err(StartError::Unsupported(format!(
                        "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
                        cfg.name,
                        local.peer_ur_ls.join(","),
                        cfg.initial_advertise_peer_urls.join(",")
                    )));
                }
                let member_id = local.id;
                let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
                let cluster_id = membership::cluster_id(&ids);
                // As etcd: the log starts with one committed membership change per
                // initial member, identical on every member.
                let mut entries = Vec::with_capacity(members.len());
                for (i, m) in members.iter().enumerate() {
                    let mut cc = ConfChange::default();
                    cc.set_change_type(ConfChangeType::AddNode);
                    cc.node_id = m.id;
                    cc.context = m.encode_to_vec().into();
                    let mut e = Entry::default();
                    e.set_entry_type(EntryType::EntryConfChange);
                    e.term = 1;
                    e.index = i as u64 + 1;
                    e.data = protobuf::Message::write_to_bytes(&cc)
                        .map_err(|e| StorageError::Db(e.to_string()))?
                        .into();
                    entries.push(e);
                }
                Self::write_ids(backend, member_id, cluster_id)?;
                let log = LogStore::bootstrap_entries(
                    backend,
                    &crate::raft::log_dir(&cfg.data_dir, cfg.wal_dir.as_deref()),
                    entries,
                )?;
                crate::info!(
                    "starting a new cluster",
                    local_member_id = format!("{member_id:x}"),
                    cluster_id = format!("{cluster_id:x}"),
                    initial_cluster = cfg.initial_cluster_string(),
                    initial_cluster_state = "new"
                );
                (member_id, cluster_id, log)
            }
            ClusterState::Existing => {
                let peers: Vec<String> = cfg
                    .initial_cluster
                    .iter()
                    .filter(|(n, _)| n != &cfg.name)
                    .map(|(_, u)| u.clone())
                    .collect();
                let info = tokio::runtime::Handle::try_current()
                    .map_err(|e| StartError::Unsupported(e.to_string()))?
                    .block_on(crate::raft::transport::fetch_cluster(
                        &peers,
                        Self::peer_tls(cfg)?,
                    ))
                    .map_err(|e| {
                        StartError::Unsupported(format!(
                            "cannot fetch cluster info from peers {}: {e}",
                            peers.join(",")
                        ))
                    })?;
                let cluster_id = info.header.map(|h| h.cluster_id).unwrap_or(0);
                let local = info
                    .members
                    .iter()
                    .find(|m| same_urls(&m.peer_ur_ls, &cfg.initial_advertise_peer_urls))
                    .ok_or_else(|| {
                        StartError::Unsupported(format!(
                            "member with peer URLs {} is not part of cluster {cluster_id:x}; add it first (etcdctl member add)",
                            cfg.initial_advertise_peer_urls.join(",")
                        ))
                    })?;
                let member_id = local.id;
                Self::write_ids(backend, member_id, cluster_id)?;
                seed = info.members.clone();
                let log = LogStore::bootstrap_entries(
                    backend,
                    &crate::raft::log_dir(&cfg.data_dir, cfg.wal_dir.as_deref()),
                    vec![],
                )?;
                crate::info!(
                    "joining an existing cluster",
                    local_member_id = format!("{member_id:x}"),
                    cluster_id = format!("{cluster_id:x}"),
                    initial_cluster_state = "existing"
                );
                (member_id, cluster_id, log)
            }
        };
        Ok((member_id, cluster_id, log, seed))
    }

    /// etcd's initial corruption check: this member's HashKV at its current
    /// revision is compared with every peer's at the same revision; a peer
    /// with the same compaction revision and another hash stops the member.
    /// Peers that cannot answer (down, behind, or compacted past that
    /// revision) are logged and skipped.
    async fn initial_corrupt_check(
        cfg: &Config,
        store: &Store,
        cluster: &Cluster,
        tls: &Option<crate::raft::transport::PeerTls>,
    ) -> Result<(), StartError> {
        use crate::raft::transport::{PeerHashError, fetch_hash_kv};
        let local = format!("{:x}", cluster.local_id);
        let timeout = Duration::from_millis(5000 + 2 * cfg.election_timeout_ms);
        crate::info!(
            "starting initial corruption check",
            local_member_id = local,
            timeout = format!("{timeout:?}")
        );
        let (h, rev, crev) = match store.hash_kv(0).await {
            Ok((h, crev, rev)) => (h, rev, crev),
            Err(e) => {
                return Err(StartError::Corrupt(format!(
                    "{local} failed to fetch hash ({e})"
                )));
            }
        };
        let mut mismatch = 0;
        for m in cluster.members() {
            if m.id == cluster.local_id || m.peer_ur_ls.is_empty() {
                continue;
            }
            let peer = format!("{:x}", m.id);
            let mut last = None;
            let mut resp = None;
            for ep in &m.peer_ur_ls {
                let r =
                    tokio::time::timeout(timeout, fetch_hash_kv(ep, cluster.cluster_id, rev, tls))
                        .await
                        .unwrap_or_else(|_| Err(PeerHashError::Failed("request timed out".into())));
                match r {
                    Ok(r) => {
                        resp = Some(r);
                        break;
                    }
                    Err(e) => {
                        crate::warn!(
                            "failed hash kv request",
                            local_member_id = local,
                            requested_revision = rev,
                            remote_peer_endpoint = ep,
                            error = e
                        );
                        last = Some(e);
                    }
                }
            }
            match (resp, last) {
                (Some(r), _) => {
                    let peer_rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
                    if r.hash == h {
                        continue;
                    }
                    let what = if r.compact_revision == crev {
                        mismatch += 1;
                        "found different hash values from remote peer"
                    } else {
                        "found different compact revision values from remote peer"
                    };
                    crate::warn!(
                        what,
                        local_member_id = local,
                        local_member_revision = rev,
                        local_member_compact_revision = crev,
                        local_member_hash = h,
                        remote_peer_id = peer,
                        remote_peer_endpoints = m.peer_ur_ls.join(","),
                        remote_peer_revision = peer_rev,
                        remote_peer_compact_revision = r.compact_revision,
                        remote_peer_hash = r.hash
                    );
                }
                (None, Some(e @ PeerHashError::FutureRev)) => crate::warn!(
                    "cannot fetch hash from slow remote peer",
                    local_member_id = local,
                    local_member_revision = rev,
                    remote_peer_id = peer,
                    error = e
                ),
                (None, Some(e @ PeerHashError::Compacted)) => crate::warn!(
                    "cannot fetch hash from remote peer; local member is behind",
                    local_member_id = local,
                    local_member_revision = rev,
                    remote_peer_id = peer,
                    error = e
                ),
                (None, _) => {}
            }
        }
        if mismatch > 0 {
            return Err(StartError::Corrupt(format!(
                "{local} found data inconsistency with peers"
            )));
        }
        crate::info!(
            "initial corruption checking passed; no corruption",
            local_member_id = local
        );
        Ok(())
    }

    /// `--force-new-cluster` on a member that has data: see
    /// [`LogStore::force_new_cluster`].
    fn force_new_cluster(
        cfg: &Config,
        backend: &Arc<Backend>,
        member_id: u64,
        cluster_id: u64,
    ) -> Result<(), StartError> {
        let local = {
            let txn = backend.read()?;
            let t = txn.open_table(MEMBERS).map_err(StorageError::from)?;
            let known = t.get(member_id).map_err(StorageError::from)?;
            known.and_then(|v| Member::decode(v.value()).ok())
        }
        .unwrap_or_else(|| Member {
            id: member_id,
            name: cfg.name.clone(),
            peer_ur_ls: cfg.initial_advertise_peer_urls.clone(),
            ..Default::default()
        });
        let Some(done) = LogStore::force_new_cluster(backend, &local)? else {
            return Ok(());
        };
        if done.beyond_commit > 0 {
            crate::info!(
                "committing log entries beyond the recorded commit index",
                number_of_entries = done.beyond_commit
            );
        }
        crate::info!(
            "forcing restart member",
            cluster_id = format!("{cluster_id:x}"),
            local_member_id = format!("{member_id:x}"),
            commit_index = done.commit,
            removed_member_ids = done
                .removed
                .iter()
                .map(|id| format!("{id:x}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(())
    }

    fn write_ids(backend: &Backend, member_id: u64, cluster_id: u64) -> Result<(), StartError> {
        let txn = backend.write()?;
        {
            let mut meta = txn.open_table(META).map_err(StorageError::from)?;
            storage::put_u64(&mut meta, storage::meta::MEMBER_ID, member_id)?;
            storage::put_u64(&mut meta, storage::meta::CLUSTER_ID, cluster_id)?;
        }
        txn.commit().map_err(StorageError::from)?;
        Ok(())
    }

    fn peer_tls(cfg: &Config) -> Result<Option<crate::raft::transport::PeerTls>, StartError> {
        let mut urls = cfg.listen_peer_urls.clone();
        urls.extend(cfg.initial_advertise_peer_urls.iter().cloned());
        let server = crate::tls::server_from_flags(
            &cfg.peer_tls,
            &cfg.data_dir.join("fixtures").join("peer"),
            &crate::tls::hosts_of(&urls),
            cfg,
            vec![],
        )?;
        let Some(server) = server else {
            if urls.iter().any(|u| u.starts_with("https://")) {
                return Err(StartError::Unsupported(
                    "https peer URLs need --peer-cert-file and --peer-key-file, or --peer-auto-tls"
                        .into(),
                ));
            }
            return Ok(None);
        };
        let (cert, key) = match (
            &cfg.peer_client_cert_file,
            &cfg.peer_client_key_file,
            &cfg.peer_tls.cert_file,
            &cfg.peer_tls.key_file,
        ) {
            (Some(c), Some(k), _, _) | (None, None, Some(c), Some(k)) => (c.clone(), k.clone()),
            (Some(_), None, _, _) | (None, Some(_), _, _) => {
                return Err(StartError::Unsupported(
                    "--peer-client-cert-file and --peer-client-key-file go together".into(),
                ));
            }
            _ => {
                let d = cfg.data_dir.join("fixtures").join("peer");
                (d.join("cert.pem"), d.join("key.pem"))
            }
        };
        let ca = if cfg.peer_tls.auto_tls && cfg.peer_tls.trusted_ca_file.is_none() {
            None
        } else {
            cfg.peer_tls.trusted_ca_file.as_deref()
        };
        let client = crate::tls::peer_client_config(&cert, &key, ca)?;
        Ok(Some(crate::raft::transport::PeerTls { server, client }))
    }

    /// `--auth-token`: `simple` (None) or `jwt,<options>`.
    fn token_provider(spec: &str) -> Result<Option<crate::auth::jwt::Jwt>, StartError> {
        let spec = spec.trim();
        match spec.split_once(',').unwrap_or((spec, "")) {
            ("simple", _) | ("", _) => Ok(None),
            ("jwt", opts) => {
                let j = crate::auth::jwt::Jwt::from_options(opts)?;
                crate::info!(
                    "auth tokens are JWTs",
                    sign_method = j.alg().name(),
                    verify_only = !j.can_sign()
                );
                Ok(Some(j))
            }
            (other, _) => Err(StartError::Unsupported(format!(
                "--auth-token: unknown token type {other:?} (simple or jwt)"
            ))),
        }
    }

    pub fn member_id(&self) -> u64 {
        self.cluster.local_id
    }

    /// A response header at `rev`.
    pub fn header(&self, rev: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster.cluster_id,
            member_id: self.cluster.local_id,
            revision: rev,
            raft_term: self.status.term.load(Ordering::Relaxed),
        }
    }

    /// Bytes of proposals queued into the Raft loop.
    pub fn inflight_bytes(&self) -> usize {
        self.inflight.bytes()
    }

    /// A slot for a request of `bytes` into the Raft loop (see `inflight`).
    fn admit(&self, bytes: usize) -> Result<inflight::Slot<'_>> {
        self.inflight.admit(
            bytes,
            self.status.commit.load(Ordering::Relaxed),
            self.status.applied.load(Ordering::Relaxed),
        )
    }

    fn send(&self, m: Msg) -> Result<()> {
        self.tx.send(m).map_err(|_| Error::Stopped)
    }

    /// Proposes `op` and waits until it is applied.
    pub async fn propose(&self, op: Op) -> Result<Applied> {
        let id = self.ids.next();
        let bounded = op.bounded();
        let req = InternalRequest { id, op: Some(op) };
        let data = req.encode_to_vec();
        if data.len() > self.cfg.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        let _slot = self.admit(data.len())?;
        let (reply, rx) = oneshot::channel();
        // A write of bounded work that is alone may be made durable on this
        // thread (see `Node::propose_here`); with others in flight, the loop
        // takes them together.
        let queued = if bounded && self.writes_here && self.inflight.alone() {
            match self.node.try_lock().as_deref_mut() {
                Some(Some(node)) => node.propose_here(id, data, reply).err(),
                _ => Some((data, reply)),
            }
        } else {
            Some((data, reply))
        };
        if let Some((data, reply)) = queued {
            self.send(Msg::Propose {
                id,
                data,
                reply: Some(reply),
            })?;
        }
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Waits until this member has applied everything committed before the call.
    pub async fn read_barrier(&self) -> Result<()> {
        let _slot = self.admit(0)?;
        if self.read_here() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        // The round for it may start on this thread (`node/light.rs`) when
        // the loop is idle; else the loop is woken to start it.
        if self.reads.push(tx)? {
            let started = match self.node.try_lock().as_deref_mut() {
                Some(Some(node)) => node.start_reads_here(),
                _ => false,
            };
            if !started {
                self.send(Msg::Reads)?;
            }
        }
        let r = match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => {
                crate::metrics::SLOW_READ_INDEXES.inc();
                Err(Error::Timeout)
            }
        };
        if r.is_err() {
            crate::metrics::READ_INDEXES_FAILED.inc();
        }
        r
    }

    /// Whether a linearizable read may go now without a read-index round:
    /// this member is a leader that is the only voter (`node/here.rs`; the
    /// mark is cleared before the loop is marked stopped) and has applied
    /// everything committed. The indexes are read after the mark, and the
    /// applied index with Acquire, so the read that follows sees every entry
    /// the index names.
    fn read_here(&self) -> bool {
        if !self.status.reads_here.load(Ordering::SeqCst) {
            return false;
        }
        let commit = self.status.commit.load(Ordering::Acquire);
        self.status.applied.load(Ordering::Acquire) >= commit
    }

    pub async fn defragment(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Msg::Defragment(tx))?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Proposes a membership change and waits until it is applied.
    pub async fn conf_change(&self, cc: ConfChange) -> Result<Applied> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::ConfChange { cc, reply })?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Asks the leader loop to hand leadership to `target` and waits until a new
    /// leader is known (or the election timeout passes twice).
    pub async fn transfer_leader(&self, target: u64) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::TransferLeader(target, reply))?;
        rx.await.map_err(|_| Error::Stopped)??;
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(2 * self.cfg.election_timeout_ms);
        while tokio::time::Instant::now() < deadline {
            let l = self.status.leader.load(Ordering::Relaxed);
            if l == target {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(Error::Timeout)
    }

    /// Whether a learner has caught up enough to be promoted (leader only).
    pub async fn learner_ready(&self, id: u64) -> Result<bool> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::LearnerReady(id, reply))?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Freezes the apply loop (debug aid).
    pub fn freeze(&self) {
        let _ = self.send(Msg::Freeze);
    }

    /// Announces this member's name and client URLs to the cluster.
    pub async fn publish(&self) -> Result<()> {
        let m = Member {
            id: self.member_id(),
            name: self.cfg.name.clone(),
            client_ur_ls: self.cfg.advertise_client_urls.clone(),
            ..Default::default()
        };
        self.propose(Op::Publish(m)).await.map(|_| ())
    }

    pub fn is_stopped(&self) -> bool {
        self.status.stopped.load(Ordering::SeqCst)
    }

    /// Stops the Raft loop and waits for it.
    pub fn stop(&self) -> Result<(), StorageError> {
        let _ = self.send(Msg::Stop);
        let r = match self.thread.lock().take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(StorageError::Db("raft loop panicked".into()))),
            None => Ok(()),
        };
        self.store.stop_compactor();
        r
    }

    /// The backend quota in bytes (u64::MAX when disabled by a negative value).
    pub fn quota_bytes(&self) -> u64 {
        self.cfg.effective_quota_backend_bytes().unwrap_or(u64::MAX)
    }

    /// The space the tables fill (etcd's in-use size), for a scrape of the
    /// metrics or a status: measured again on a blocking thread when a
    /// measure is due (the last is a second old and the walks stay within
    /// their budget: see `Backend::in_use_due`), else the last measure. A
    /// walk that takes over a second (a large database) goes on alone and
    /// the last measure answers; the next call finds the new one.
    pub async fn size_in_use(&self) -> u64 {
        if self.backend.in_use_due() {
            let b = self.backend.clone();
            let walk = tokio::task::spawn_blocking(move || b.size_in_use());
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), walk).await {
                return n;
            }
        }
        self.backend.last_in_use()
    }
}
