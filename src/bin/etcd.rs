//! The `etcd` server binary.

use std::collections::HashMap;
use std::sync::Arc;

use etcd_rs::config::{self, Command, Config};
use etcd_rs::server::EtcdServer;
use etcd_rs::{api, error, info, log, warn};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_arena_eager_commit` (4 in `mi_option_t` of both
/// its v2 and v3 headers).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Sets the allocator's options before its first allocation, which reserves
/// its first arena: Rust's runtime allocates before `main`, so this runs
/// among the binary's constructors (`.init_array`), before the runtime
/// starts. Arenas committed on demand are decommitted when purged, so the
/// resident memory the member reports falls as its load falls; committed
/// eagerly, purged pages are only marked free and stay resident until the
/// kernel needs them.
extern "C" fn allocator_options() {
    // SAFETY: mi_option_set stores the value in mimalloc's static option
    // table (a plain store, bounds-checked against the table's length); it
    // needs no initialised allocator, and constructors run on the only
    // thread there is, so nothing reads the table meanwhile.
    unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
}

#[used]
#[unsafe(link_section = ".init_array")]
static ALLOCATOR_OPTIONS: extern "C" fn() = allocator_options;

fn level(l: config::LogLevel) -> log::Level {
    match l {
        config::LogLevel::Debug => log::Level::Debug,
        config::LogLevel::Info => log::Level::Info,
        config::LogLevel::Warn => log::Level::Warn,
        config::LogLevel::Error => log::Level::Error,
        config::LogLevel::Panic | config::LogLevel::Fatal => log::Level::Fatal,
    }
}

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let env: HashMap<String, String> = std::env::vars().collect();
    let cfg = match config::parse(args, &env) {
        Ok(Command::Run(cfg)) => *cfg,
        Ok(Command::PrintVersion(s)) | Ok(Command::PrintHelp(s)) => {
            print!("{s}");
            return;
        }
        Err(e) => {
            eprintln!("etcd: {e}");
            std::process::exit(1);
        }
    };
    log::set_level(level(cfg.log_level));
    etcd_rs::systemd::init_journal_logging();
    for w in &cfg.warnings {
        warn!(w.clone());
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime", error = e);
            std::process::exit(1);
        }
    };
    let code = rt.block_on(run(cfg));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

async fn run(cfg: Config) -> i32 {
    info!(
        "starting etcd",
        etcd_version = config::SERVER_VERSION,
        implementation = concat!("etcd-rs ", env!("CARGO_PKG_VERSION")),
        name = cfg.name,
        data_dir = cfg.data_dir.display(),
        listen_client_urls = cfg.listen_client_urls.join(","),
        advertise_client_urls = cfg.advertise_client_urls.join(","),
        initial_cluster = cfg.initial_cluster_string(),
        initial_cluster_state = cfg.initial_cluster_state.as_str()
    );
    let needs_tls = cfg
        .listen_client_urls
        .iter()
        .chain(cfg.listen_metrics_urls.iter())
        .any(|u| u.starts_with("https://") || u.starts_with("unixs://"));
    let client_tls = match etcd_rs::tls::server_from_flags(
        &cfg.client_tls,
        &cfg.data_dir.join("fixtures").join("client"),
        &etcd_rs::tls::hosts_of(&cfg.listen_client_urls),
        &cfg,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    ) {
        Ok(t) => t,
        Err(e) => {
            error!("failed to load client TLS configuration", error = e);
            return 1;
        }
    };
    if needs_tls && client_tls.is_none() {
        error!("https client URLs need --cert-file and --key-file, or --auto-tls");
        return 1;
    }
    // Bind first so that an address in use fails before any state is touched.
    // Sockets passed by systemd (etcd.socket) replace binding.
    let mut activated = etcd_rs::systemd::activated_listeners();
    let mut client_listeners = Vec::new();
    if let Some(ls) = activated.remove("client") {
        match adopt(ls, "client") {
            Ok(ls) => client_listeners.extend(ls),
            Err(()) => return 1,
        }
    } else {
        for u in &cfg.listen_client_urls {
            match bind(u, &cfg, Use::Client).await {
                Ok(l) => client_listeners.push((u.clone(), l)),
                Err(e) => {
                    error!("failed to listen on client URL", url = u, error = e);
                    return 1;
                }
            }
        }
    }
    let mut peer_listeners = Vec::new();
    if let Some(ls) = activated.remove("peer") {
        match adopt(ls, "peer") {
            Ok(ls) => peer_listeners.extend(ls.into_iter().map(|(_, l)| l)),
            Err(()) => return 1,
        }
    } else {
        for u in &cfg.listen_peer_urls {
            match bind(u, &cfg, Use::Peer).await {
                Ok(l) => peer_listeners.push(l),
                Err(e) => {
                    error!("failed to listen on peer URL", url = u, error = e);
                    return 1;
                }
            }
        }
    }
    let mut metrics_listeners = Vec::new();
    for u in &cfg.listen_metrics_urls {
        match bind(u, &cfg, Use::Metrics).await {
            Ok(l) => metrics_listeners.push((u.clone(), l)),
            Err(e) => {
                error!("failed to listen on metrics URL", url = u, error = e);
                return 1;
            }
        }
    }
    let limits = api::conn::Limits::new(&cfg);
    let server = match tokio::task::block_in_place(|| EtcdServer::start(cfg)) {
        Ok(s) => s,
        Err(e) => {
            error!("failed to start etcd", error = e);
            return 1;
        }
    };
    // Journal entries carry MEMBER_ID and CLUSTER_ID from here on.
    etcd_rs::systemd::set_ids(server.member_id(), server.cluster.cluster_id);
    for l in peer_listeners {
        tokio::spawn(server.transport.clone().serve(l));
    }
    if let Err(e) = wait_publish(&server).await {
        error!("failed to publish local member to cluster", error = e);
        let _ = server.stop();
        return 1;
    }
    info!(
        "published local member to cluster",
        local_member_id = format!("{:x}", server.member_id()),
        cluster_id = format!("{:x}", server.cluster.cluster_id)
    );
    etcd_rs::server::compactor::spawn(server.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let app = api::router(server.clone()).await;
    // https client and metrics listeners use the client TLS settings.
    let metrics_app = api::dispatch::App::http_only(api::http::metrics_router(server.clone()));
    let serve = |u: &str, l, app: &api::dispatch::App| {
        let tls = if etcd_rs::net::is_tls(u) {
            client_tls.clone()
        } else {
            None
        };
        tokio::spawn(api::serve(
            l,
            app.clone(),
            limits.clone(),
            stop_rx.clone(),
            tls,
        ));
    };
    for (u, l) in client_listeners {
        info!("ready to serve client requests");
        if etcd_rs::net::is_tls(&u) {
            info!("serving client traffic securely", address = u);
        } else {
            warn!(
                "serving client traffic insecurely; this is strongly discouraged!",
                address = u
            );
        }
        serve(&u, l, &app);
    }
    // As etcd's, a metrics listener serves /metrics and the health endpoints.
    for (u, l) in metrics_listeners {
        info!("serving metrics", address = format!("{u}/metrics"));
        serve(&u, l, &metrics_app);
    }
    etcd_rs::systemd::notify_ready();
    tokio::spawn(supervise(server.clone()));
    let code = wait_for_stop(&server).await;
    etcd_rs::systemd::notify_stopping();
    etcd_rs::systemd::notify_status("stopping");
    let _ = stop_tx.send(true);
    info!("closing etcd server", name = server.cfg.name);
    match tokio::task::block_in_place(|| server.stop()) {
        Ok(()) => {
            info!("stopped etcd server", name = server.cfg.name);
            code
        }
        Err(e) => {
            error!("etcd server stopped with an error", error = e);
            1
        }
    }
}

/// Keeps systemd's STATUS line current and pings the watchdog while the Raft and
/// apply loop is making progress (it counts its passes; a stuck loop stops them).
async fn supervise(s: Arc<EtcdServer>) {
    use std::sync::atomic::Ordering::Relaxed;
    let watchdog = etcd_rs::systemd::watchdog_interval();
    let every = watchdog
        .unwrap_or(std::time::Duration::from_secs(1))
        .min(std::time::Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    let mut last_beat = u64::MAX;
    let mut last_status = String::new();
    loop {
        tick.tick().await;
        let st = &s.status;
        let beat = st.heartbeat.load(Relaxed);
        if watchdog.is_some() && beat != last_beat && !s.is_stopped() {
            etcd_rs::systemd::notify_watchdog();
        }
        last_beat = beat;
        let leader = st.leader.load(Relaxed);
        let role = if st.is_leader.load(Relaxed) {
            "leader"
        } else if leader == 0 {
            "no leader"
        } else {
            "follower"
        };
        let status = format!(
            "serving clients; role: {role}, leader: {leader:x}, term: {}, applied index: {}",
            st.term.load(Relaxed),
            st.applied.load(Relaxed)
        );
        if status != last_status {
            etcd_rs::systemd::notify_status(&status);
            last_status = status;
        }
    }
}

/// Takes over listeners passed by systemd; returns them with their URLs.
fn adopt(
    ls: Vec<std::net::TcpListener>,
    what: &str,
) -> Result<Vec<(String, etcd_rs::net::Listener)>, ()> {
    let mut out = Vec::new();
    for l in ls {
        let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        match l
            .set_nonblocking(true)
            .and_then(|_| tokio::net::TcpListener::from_std(l))
        {
            Ok(l) => {
                info!(
                    "using a socket-activated listener",
                    kind = what,
                    address = addr
                );
                out.push((format!("http://{addr}"), etcd_rs::net::Listener::Tcp(l)));
            }
            Err(e) => {
                error!(
                    "cannot use a socket-activated listener",
                    kind = what,
                    error = e
                );
                return Err(());
            }
        }
    }
    Ok(out)
}

/// SO_REUSEADDR as Go sets it on listeners by default.
const GO_LISTENER_REUSEADDR: bool = true;

/// What a listener serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    Client,
    Peer,
    Metrics,
}

/// Binds a client, peer or metrics listener. SO_REUSEADDR is always set, as
/// Go sets it on every listener (so `--socket-reuse-address` only makes it
/// explicit); `--socket-reuse-port` adds SO_REUSEPORT, which lets several
/// processes listen on one port.
///
/// A `unix://` or `unixs://` URL binds the socket file its host:port part
/// names, in the working directory. As etcd, a peer or metrics listener
/// removes a stale file first; a client listener does not.
async fn bind(url: &str, cfg: &Config, what: Use) -> std::io::Result<etcd_rs::net::Listener> {
    if etcd_rs::net::is_unix(url) {
        return etcd_rs::net::Listener::bind_unix(
            etcd_rs::net::host_port(url),
            what != Use::Client,
        );
    }
    let addr = api::resolve(url).await?;
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Go's net package sets SO_REUSEADDR on every listener, so etcd's have it
    // with or without --socket-reuse-address; ours too.
    sock.set_reuseaddr(cfg.socket_reuse_address || GO_LISTENER_REUSEADDR)?;
    if cfg.socket_reuse_port {
        sock.set_reuseport(true)?;
    }
    sock.bind(addr)?;
    sock.listen(1024).map(etcd_rs::net::Listener::Tcp)
}

async fn wait_publish(s: &Arc<EtcdServer>) -> Result<(), etcd_rs::error::Error> {
    // As etcd, keep trying until the cluster has a leader that commits it.
    let started = std::time::Instant::now();
    let mut warned = std::time::Instant::now();
    loop {
        match s.publish().await {
            Ok(()) => return Ok(()),
            Err(e @ etcd_rs::error::Error::Storage(_)) => return Err(e),
            Err(e) => {
                if s.is_stopped() {
                    return Err(e);
                }
                if warned.elapsed() >= std::time::Duration::from_secs(5) {
                    warned = std::time::Instant::now();
                    warn!(
                        "failed to publish local member to cluster; retrying",
                        error = e,
                        waited = format!("{:?}", started.elapsed())
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Waits for SIGTERM or SIGINT (exit 0), or for the Raft loop to die (exit 1).
async fn wait_for_stop(s: &Arc<EtcdServer>) -> i32 {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            error!("cannot install the SIGTERM handler", error = e);
            return 1;
        }
    };
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = term.recv() => {
                info!("received signal; shutting down", signal = "terminated");
                return 0;
            }
            _ = tokio::signal::ctrl_c() => {
                info!("received signal; shutting down", signal = "interrupt");
                return 0;
            }
            _ = tick.tick() => {
                if s.is_stopped() {
                    error!("the raft loop stopped unexpectedly");
                    return 1;
                }
            }
        }
    }
}
