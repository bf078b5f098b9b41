//! The shipped monitoring (packaging/monitoring) against a real Prometheus
//! (Debian's `prometheus` package): `promtool check rules` on the alerting
//! rules; a three-member cluster scraped by Prometheus, where every panel
//! query of the dashboard returns data; and `promtool test rules` with the
//! `up` series Prometheus recorded while a member was killed, in which the
//! members-down alert fires (and not before the kill).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::cluster::Cluster;
use crate::harness::{free_port, wait_until};

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging/monitoring")
        .join(name)
}

/// A Prometheus process, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `targets` (host:port) every second as job `etcd`, with the
    /// shipped rules loaded.
    fn start(targets: &[String]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\nscrape_configs:\n  - job_name: etcd\n    static_configs:\n      - targets: [{list}]\n",
            shipped("etcd-rs-alerts.yml").display()
        );
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus (is Debian's prometheus package installed?)");
        Prometheus { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GETs an API path with URL-encoded parameters; the `data` field.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Option<Value> {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-m", "10", "-G"]);
        for (k, v) in params {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = cmd
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// The result vector of an instant query.
    fn query(&self, q: &str) -> Vec<Value> {
        self.api("/api/v1/query", &[("query", q)])
            .and_then(|d| d["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Prometheus' clock (`time()`).
    fn now(&self) -> f64 {
        self.api("/api/v1/query", &[("query", "time()")])
            .and_then(|d| d["result"][1].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(0.0)
    }
}

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .output()
        .expect("run promtool")
}

/// Every `expr` of the dashboard's panels, `$job` made the test's job.
fn panel_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(shipped("etcd-rs-dashboard.json")).expect("dashboard");
    let d: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr").replace("$job", "etcd");
            out.push((p["title"].as_str().unwrap_or("").to_string(), expr));
        }
    }
    out
}

#[test]
fn shipped_rules_pass_promtool_check() {
    let rules = shipped("etcd-rs-alerts.yml");
    let out = promtool(&["check", "rules", &rules.display().to_string()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_scrapes_a_cluster_dashboard_has_data_and_members_down_fires() {
    let mut c = Cluster::start(3, &["--metrics", "extensive"]);
    // Give each member a metrics listener of its own.
    let mut targets = Vec::new();
    for m in &mut c.members {
        let port = free_port();
        m.terminate();
        m.args.push("--listen-metrics-urls".into());
        m.args.push(format!("http://127.0.0.1:{port}"));
        m.spawn();
        m.wait_ready(Duration::from_secs(30));
        targets.push(format!("127.0.0.1:{port}"));
    }
    let prom = Prometheus::start(&targets);
    wait_until(
        Duration::from_secs(60),
        "Prometheus scraping 3 members",
        || prom.query("up == 1").len() == 3,
    );
    for (i, m) in c.members.iter().enumerate() {
        m.ctl_ok(&["put", &format!("k{i}"), "v"]);
        m.ctl_ok(&["get", &format!("k{i}")]);
    }
    // Every panel query answers with data.
    let queries = panel_queries();
    assert!(queries.len() >= 20, "{queries:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let empty = loop {
        let empty = queries
            .iter()
            .filter(|(_, q)| prom.query(q).is_empty())
            .cloned()
            .collect::<Vec<_>>();
        if empty.is_empty() || std::time::Instant::now() > deadline {
            break empty;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        empty.is_empty(),
        "panel queries without data: {empty:#?}\n{}",
        prom.log()
    );

    // Kill a member; Prometheus records it down.
    let start = prom.now() - 5.0;
    let victim = targets[2].clone();
    let killed_at = prom.now();
    c.members[2].kill9();
    let down = format!("up{{instance=\"{victim}\"}} == 0");
    wait_until(
        Duration::from_secs(30),
        "Prometheus seeing the member down",
        || !prom.query(&down).is_empty(),
    );
    // A few samples of it down.
    let seen = prom.now();
    wait_until(Duration::from_secs(30), "more samples", || {
        prom.now() > seen + 3.0
    });
    let end = prom.now();
    let data = prom
        .api(
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", &format!("{start:.3}")),
                ("end", &format!("{end:.3}")),
                ("step", "1"),
            ],
        )
        .expect("query_range");
    let series = data["result"].as_array().expect("result").clone();
    assert_eq!(series.len(), 3, "{series:?}");
    let steps = (end - start).floor() as usize + 1;
    let mut input = String::new();
    for s in &series {
        let labels = s["metric"].as_object().expect("metric");
        let mut vals = vec!["_".to_string(); steps];
        for p in s["values"].as_array().expect("values") {
            let t = p[0].as_f64().unwrap_or(0.0);
            let i = ((t - start).round() as usize).min(steps - 1);
            vals[i] = p[1].as_str().unwrap_or("_").to_string();
        }
        let last = vals
            .iter()
            .rev()
            .find(|v| *v != "_")
            .cloned()
            .unwrap_or_else(|| "1".into());
        let name = format!(
            "up{{instance=\"{}\",job=\"{}\"}}",
            labels["instance"].as_str().unwrap_or(""),
            labels["job"].as_str().unwrap_or("")
        );
        // The recorded samples, then the last one held for two minutes.
        let _ = writeln!(
            input,
            "      - series: '{name}'\n        values: '{} {last}+0x120'",
            vals.join(" ")
        );
    }
    let before_kill = ((killed_at - start).floor() as i64 - 1).max(0);
    let late = steps as i64 + 90;
    let test = format!(
        "rule_files:\n  - '{rules}'\nevaluation_interval: 1s\ntests:\n  - interval: 1s\n    input_series:\n{input}    alert_rule_test:\n      - eval_time: {before_kill}s\n        alertname: EtcdMembersDown\n        exp_alerts: []\n      - eval_time: {late}s\n        alertname: EtcdMembersDown\n        exp_alerts:\n          - exp_labels:\n              severity: critical\n              job: etcd\n            exp_annotations:\n              summary: etcd cluster members are down.\n              description: 'etcd cluster \"etcd\": 1 members are down or cannot be reached by their peers.'\n",
        rules = shipped("etcd-rs-alerts.yml").display()
    );
    let file = prom.dir.path().join("members-down.test.yml");
    std::fs::write(&file, &test).expect("write rules test");
    let out = promtool(&["test", "rules", &file.display().to_string()]);
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
