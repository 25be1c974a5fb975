//! Smoke tests of every scenario of `chorus-loadtest` against a real `chorus` process: each test
//! starts its own node on free loopback ports with a temporary data directory and a history rule
//! for `history-*`, runs one scenario for a couple of seconds with small counts and `--json`, and
//! checks the counting: everything expected was delivered, nothing lost or duplicated, and the
//! figures are present and sane (each check one a broken harness or server could fail). They
//! check correctness of the harness, not speed.
//!
//! The server is this workspace's `chorus`, built by cargo when the tests start (a no-op when it
//! is up to date), so they never run a stale one.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

const CONFIG: &str = r#"
[[apps]]
id = "1"
key = "chorus-dev-key"
secret = "chorus-dev-secret"
[[apps.history]]
channels = "history-*"
max_events = 100000
max_age_secs = 86400
"#;

/// A `chorus` node started for one test; killed (by its PID) and its directory removed on drop.
struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// This workspace's `chorus`, built now by cargo (once per test run).
fn chorus_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the loadtest crate lives in the workspace");
        let built = Command::new(env!("CARGO"))
            .args(["build", "-p", "chorus-broker", "--bin", "chorus"])
            .arg("--message-format=json-render-diagnostics")
            .current_dir(workspace)
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo");
        assert!(built.status.success(), "building chorus failed");
        let executable = String::from_utf8_lossy(&built.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "chorus")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo names the chorus executable it built");
        assert!(executable.is_file(), "{}", executable.display());
        executable
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `GET /readyz` answered 200.
fn ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

impl Server {
    fn start(name: &str) -> Server {
        Server::start_with(name, CONFIG)
    }

    /// A node with its own configuration file.
    fn start_with(name: &str, config: &str) -> Server {
        let mut server = Server::launch(name, config, free_port(), &[]);
        server.wait_ready();
        server
    }

    /// Starts a node on `port` with more environment, without waiting for it to serve.
    fn launch(name: &str, config: &str, port: u16, env: &[(&str, String)]) -> Server {
        let bin = chorus_bin();
        let dir = std::env::temp_dir().join(format!(
            "chorus-loadtest-smoke-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("chorus.toml"), config).expect("config");
        let log = File::create(dir.join("chorus.log")).expect("log file");
        let child = Command::new(bin)
            .arg("--config")
            .arg(dir.join("chorus.toml"))
            .env("CHORUS_HOST", "127.0.0.1")
            .env("CHORUS_PORT", port.to_string())
            .env("CHORUS_METRICS_PORT", free_port().to_string())
            .env("CHORUS_DATA_DIR", dir.join("data"))
            .env("CHORUS_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start chorus");
        Server { child, port, dir }
    }

    /// Waits until `GET /readyz` answers 200.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(self.port) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chorus exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "chorus not ready after 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chorus.log")).unwrap_or_default()
    }

    /// Runs `chorus-loadtest SUBCOMMAND --json FILE ARGS` (killed after 60 s) and returns the JSON
    /// it wrote.
    fn run(&self, name: &str, args: &[&str]) -> Value {
        let json = self.dir.join(format!("{name}.json"));
        let out = self.dir.join(format!("{name}.out"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_chorus-loadtest"))
            .arg(args[0])
            .arg("--json")
            .arg(&json)
            .args(&args[1..])
            .stdout(File::create(&out).expect("output file"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chorus-loadtest");
        let stderr = child.stderr.take().expect("piped");
        let stderr =
            std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chorus-loadtest {args:?} took over 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = std::fs::read_to_string(&out).unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        assert!(
            status.success(),
            "chorus-loadtest {args:?} failed ({status}):\n{stdout}\n{stderr}\nserver log:\n{}",
            self.log()
        );
        let text = std::fs::read_to_string(&json)
            .unwrap_or_else(|e| panic!("no JSON from {args:?} ({e}):\n{stdout}\n{stderr}"));
        eprintln!("{stdout}");
        serde_json::from_str(&text).expect("valid JSON report")
    }
}

fn u(v: &Value, path: &str) -> u64 {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} is not a count in {v}"))
}

fn f(v: &Value, path: &str) -> f64 {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

/// Everything expected delivered exactly once, in order, and the rates and latencies sane.
fn assert_exact(r: &Value) {
    let expected = u(r, "expected");
    assert!(expected > 0, "nothing was expected: {r}");
    assert_eq!(u(r, "delivered"), expected, "delivered != expected: {r}");
    assert_eq!(u(r, "lost"), 0, "lost: {r}");
    assert_eq!(u(r, "duplicates"), 0, "duplicates: {r}");
    assert_eq!(u(r, "out_of_order"), 0, "out of order: {r}");
    assert!(f(r, "window_secs") > 0.0);
    // Zero where the work is done by worker processes (the connections scenario).
    let harness_cpu = f(r, "harness_cpu_percent");
    assert!(harness_cpu.is_finite() && harness_cpu >= 0.0, "{r}");
    let timeline = r["timeline"].as_array().expect("a timeline");
    assert!(!timeline.is_empty(), "an empty timeline: {r}");
}

fn assert_latency_sane(l: &Value) {
    assert!(u(l, "count") > 0, "no latencies: {l}");
    let (p50, p99, max) = (f(l, "p50"), f(l, "p99"), f(l, "max"));
    assert!(
        0.0 < p50 && p50 <= p99 && p99 <= max && max < 60_000.0,
        "latencies out of order: {l}"
    );
}

/// The server's CPU and memory were sampled. Its CPU in the window may round to 0 where the
/// window holds little work (the connections scenario's, a few publishes): the tests whose
/// window is busy check it is above 0.
fn assert_server_sampled(r: &Value) {
    let cpu = f(r, "server_cpu_percent");
    assert!(cpu.is_finite() && cpu >= 0.0, "server CPU: {r}");
    assert!(u(r, "server_rss_kib") > 0, "server RSS: {r}");
}

#[test]
fn fanout_counts_every_delivery() {
    let s = Server::start("fanout");
    let (url, pid) = (s.url(), s.pid());
    let r = s.run(
        "fanout",
        &[
            "fanout",
            "--target",
            &url,
            "--server-pid",
            &pid,
            "--no-progress",
            "--subscribers",
            "20",
            "--channels",
            "2",
            "--window",
            "2",
            "--batch",
            "5",
            "--duration-secs",
            "2",
        ],
    );
    assert_exact(&r);
    assert!(f(&r, "deliveries_per_sec") > 0.0);
    assert_eq!(r["scenario"], "fanout");
    assert_eq!(u(&r, "connections"), 20);
    // Every accepted event reaches the 10 subscribers of its channel.
    assert_eq!(u(&r, "expected"), u(&r, "published") * 10);
    assert_eq!(u(&r, "publish_refused"), 0);
    assert!(f(&r, "publishes_per_sec") > 0.0);
    assert_latency_sane(&r["latency_ms"]);
    assert_latency_sane(&r["publish_rtt_ms"]);
    assert_server_sampled(&r);
    assert!(f(&r, "server_cpu_us_per_delivery") > 0.0);
    assert!(f(&r, "server_cpu_percent") > 0.0, "{r}");
    assert!(f(&r, "harness_cpu_percent") > 0.0, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}));
}

#[test]
fn latency_at_a_fixed_rate() {
    let s = Server::start("latency");
    let url = s.url();
    let r = s.run(
        "latency",
        &[
            "latency",
            "--target",
            &url,
            "--no-progress",
            "--subscribers",
            "5",
            "--channels",
            "5",
            "--rate",
            "100",
            "--duration-secs",
            "2",
        ],
    );
    assert_exact(&r);
    // 100 events/s for 2 s, one subscriber per channel.
    let published = u(&r, "published");
    assert!((150..=210).contains(&published), "published {published}");
    assert_eq!(u(&r, "expected"), published);
    assert_latency_sane(&r["latency_ms"]);
    assert_eq!(u(&r, "latency_ms.count"), u(&r, "delivered"));
    assert!(r["latency_distribution"]
        .as_array()
        .is_some_and(|d| !d.is_empty()));
}

#[test]
fn connections_through_worker_processes() {
    let s = Server::start("connections");
    let (url, pid) = (s.url(), s.pid());
    let r = s.run(
        "connections",
        &[
            "connections",
            "--target",
            &url,
            "--server-pid",
            &pid,
            "--no-progress",
            "--connections",
            "200",
            "--per-process",
            "100",
            "--rate",
            "1000",
            "--channels",
            "10",
            "--settle-secs",
            "1",
            "--duration-secs",
            "1",
        ],
    );
    assert_exact(&r);
    // After the hold, one event per channel reaches every connection.
    assert_eq!(u(&r, "expected"), 200);
    let c = &r["connect"];
    assert_eq!(u(c, "requested"), 200);
    assert_eq!(u(c, "established"), 200);
    assert_eq!(u(c, "failed"), 0);
    assert_eq!(u(c, "dropped_while_idle"), 0);
    assert_eq!(u(c, "worker_processes"), 2);
    assert!(f(c, "connects_per_sec") > 0.0);
    assert_latency_sane(&c["setup_ms"]);
    assert_server_sampled(&r);
}

#[test]
fn presence_joins_and_leaves_are_all_seen() {
    let s = Server::start("presence");
    let url = s.url();
    let r = s.run(
        "presence",
        &[
            "presence",
            "--target",
            &url,
            "--no-progress",
            "--channels",
            "2",
            "--observers",
            "2",
            "--members",
            "6",
            "--rate",
            "20",
            "--hold-ms",
            "200",
            "--duration-secs",
            "2",
        ],
    );
    assert_exact(&r);
    let p = &r["presence"];
    let joins = u(p, "joins");
    assert!(joins >= 20, "joins {joins}");
    assert_eq!(u(p, "join_failures"), 0);
    assert_eq!(u(p, "leaves"), joins);
    assert_eq!(u(p, "member_added_expected"), joins * 2);
    assert_eq!(u(p, "member_added_seen"), joins * 2);
    assert_eq!(u(p, "member_removed_seen"), u(p, "member_removed_expected"));
    assert_eq!(u(p, "unexpected_events"), 0);
    assert_eq!(u(p, "short_member_counts"), 0);
    assert_eq!(u(p, "members_left_over"), 0);
    assert_latency_sane(&p["member_added_ms"]);
}

#[test]
fn history_recovers_every_offset_through_storms() {
    let s = Server::start("history");
    let (url, pid) = (s.url(), s.pid());
    let r = s.run(
        "history",
        &[
            "history",
            "--target",
            &url,
            "--server-pid",
            &pid,
            "--no-progress",
            "--channels",
            "2",
            "--subscribers",
            "6",
            "--rate",
            "100",
            "--duration-secs",
            "3",
            "--storm-every-ms",
            "700",
            "--storm-fraction",
            "0.5",
            "--offline-ms",
            "150",
        ],
    );
    assert!(r["skipped"].is_null(), "skipped: {r}");
    assert_exact(&r);
    let h = &r["history"];
    assert_eq!(u(h, "subscribers"), 6);
    assert!(u(h, "storms") >= 3, "storms: {h}");
    let reconnects = u(h, "reconnects");
    assert!(reconnects > 0, "no storm hit anyone: {h}");
    assert_eq!(u(h, "recovered_true"), reconnects);
    assert_eq!(u(h, "recovered_false"), 0);
    assert_eq!(u(h, "recovered_unknown"), 0);
    assert_eq!(u(h, "reconnect_failures"), 0);
    assert_eq!(u(h, "gaps"), 0);
    assert_eq!(u(h, "other_epoch"), 0);
    assert_eq!(u(h, "without_offset"), 0);
    // Every acknowledged publish was stored, and each subscriber expects all of them.
    let published = u(&r, "published");
    assert!(published > 200, "published {published}");
    assert_eq!(u(h, "stored"), published);
    assert_eq!(u(&r, "expected"), published * 3);
    assert_latency_sane(&h["recover_ms"]);
    assert_latency_sane(&r["publish_rtt_ms"]);
    assert_latency_sane(&r["latency_ms"]);
    assert!(f(&r, "publishes_per_sec") > 50.0);
    assert_server_sampled(&r);
    assert!(f(&r, "server_cpu_percent") > 0.0, "{r}");

    // Channels without a history rule carry no offsets: the scenario says so and exits 0.
    let r = s.run(
        "history-skipped",
        &[
            "history",
            "--target",
            &url,
            "--no-progress",
            "--history-prefix",
            "plain-",
            "--duration-secs",
            "1",
        ],
    );
    let skipped = r["skipped"].as_str().expect("a skipped run says why");
    assert!(
        skipped.starts_with("server does not send offsets"),
        "{skipped}"
    );
    assert_eq!(u(&r, "delivered"), 0);
}

#[test]
fn catch_up_replays_a_backlog_in_parts() {
    // A small outbound limit: the 3000-event catch-up (~700 KB of frames) only fits in parts.
    let config = format!("max_outbound_bytes = 65536\n{CONFIG}");
    let s = Server::start_with("catch-up", &config);
    let (url, pid) = (s.url(), s.pid());
    let r = s.run(
        "catch-up",
        &[
            "catch-up",
            "--target",
            &url,
            "--server-pid",
            &pid,
            "--no-progress",
            "--events",
            "3000",
            "--subscribers",
            "2",
            "--window",
            "4",
            "--replay-timeout-secs",
            "30",
        ],
    );
    assert!(r["skipped"].is_null(), "skipped: {r}");
    assert_eq!(r["scenario"], "catch-up");
    assert_eq!(u(&r, "published"), 3000);
    assert_eq!(u(&r, "publish_refused"), 0);
    // Both subscribers saw offsets 1..=3000 exactly once, in order.
    assert_eq!(u(&r, "expected"), 6000, "{r}");
    assert_exact(&r);
    let c = &r["catch_up"];
    assert_eq!(u(c, "stored"), 3000);
    assert_eq!(u(c, "completed"), 2, "{c}");
    assert_eq!(u(c, "recovered_true"), 2);
    assert_eq!(u(c, "gaps"), 0);
    assert_eq!(u(c, "other_epoch"), 0);
    assert_eq!(u(c, "without_offset"), 0);
    assert!(
        c["failures"].as_array().expect("failures").is_empty(),
        "{c}"
    );
    assert!(u(c, "frame_bytes") > 2 * 3000 * 100, "{c}");
    for p in c["per_subscriber"].as_array().expect("per subscriber") {
        assert_eq!(u(p, "delivered"), 3000);
        assert!(f(p, "secs") > 0.0 && f(p, "events_per_sec") > 0.0, "{p}");
        assert!(p["failure"].is_null());
    }
    assert!(f(&r, "replay_events_per_sec") > 0.0);
    assert!(f(&r, "publish_events_per_sec") > 0.0);
    assert_latency_sane(&r["publish_latency_ms"]);
    assert!(f(&r, "server_cpu_us_per_event") > 0.0, "{r}");
    assert_server_sampled(&r);
    assert_eq!(r["errors"], serde_json::json!({}));

    // Channels without a history rule carry no offsets: the scenario says so and exits 0.
    let r = s.run(
        "catch-up-skipped",
        &[
            "catch-up",
            "--target",
            &url,
            "--no-progress",
            "--history-prefix",
            "plain-",
        ],
    );
    let skipped = r["skipped"].as_str().expect("a skipped run says why");
    assert!(
        skipped.starts_with("server does not send offsets"),
        "{skipped}"
    );
    assert_eq!(u(&r, "published"), 0);
}

#[test]
fn compare_a_server_with_itself() {
    let s = Server::start("compare");
    let url = s.url();
    let report = s.dir.join("compare.html").display().to_string();
    let r = s.run(
        "compare",
        &[
            "compare",
            "--a",
            &url,
            "--b",
            &url,
            "--a-name",
            "one",
            "--b-name",
            "two",
            "--rounds",
            "1",
            "--pause-secs",
            "0",
            "--also",
            "--rate 200 --batch 1",
            "--report",
            &report,
            "--",
            "fanout",
            "--subscribers",
            "5",
            "--duration-secs",
            "1",
        ],
    );
    // The paced regime ran beside the closed loop, each event its own request.
    let regimes = r["regimes"].as_array().expect("regimes");
    assert_eq!(regimes.len(), 2);
    assert_eq!(regimes[0]["name"], "base");
    assert_eq!(regimes[1]["name"], "--rate 200 --batch 1");
    for side in ["a_runs", "b_runs"] {
        let paced = &regimes[1][side][0];
        assert_exact(paced);
        assert_eq!(
            u(paced, "publish_requests"),
            u(paced, "published"),
            "{paced}"
        );
        let closed = &regimes[0][side][0];
        assert!(u(closed, "published") > 0);
    }
    // The HTML report draws both servers on the same plots, per regime.
    let html = std::fs::read_to_string(&report).expect("the compare report");
    let both = svgs(&html)
        .into_iter()
        .filter(|svg| svg.contains("one deliveries/s") && svg.contains("two deliveries/s"))
        .count();
    assert_eq!(both, 2, "one deliveries plot with both servers per regime");
    assert_eq!(r["a"]["name"], "one");
    assert_eq!(r["b"]["name"], "two");
    for side in ["a", "b"] {
        let runs = r[side]["runs"].as_array().expect("runs");
        assert_eq!(runs.len(), 1);
        assert_exact(&runs[0]);
    }
    let figures = r["figures"].as_array().expect("figures");
    let rate = figures
        .iter()
        .find(|x| x["figure"] == "deliveries_per_sec")
        .expect("deliveries_per_sec compared");
    assert!(f(rate, "a_median") > 0.0 && f(rate, "b_median") > 0.0);
    assert!(f(rate, "ratio") > 0.0);
    let lost = figures
        .iter()
        .find(|x| x["figure"] == "lost")
        .expect("lost compared");
    assert_eq!(f(lost, "a_median"), 0.0);
    assert_eq!(f(lost, "b_median"), 0.0);
}

/// `n` nodes forming one cluster (ids 1..=n) on free loopback ports, with the history rule.
fn start_cluster(name: &str, n: usize) -> (Vec<Server>, Vec<u16>) {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, (_, cluster))| format!("{}@127.0.0.1:{cluster}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<Server> = ports
        .iter()
        .enumerate()
        .map(|(i, &(port, cluster))| {
            let env = [
                ("CHORUS_NODE_ID", (i + 1).to_string()),
                ("CHORUS_CLUSTER_PORT", cluster.to_string()),
                ("CHORUS_PEERS", peers.clone()),
                ("CHORUS_CLUSTER_SECRET", CLUSTER_SECRET.to_string()),
                ("CHORUS_LOG", "warn,openraft=off".to_string()),
            ];
            Server::launch(&format!("{name}-{}", i + 1), CONFIG, port, &env)
        })
        .collect();
    for node in &mut nodes {
        node.wait_ready();
    }
    (nodes, ports.iter().map(|&(_, cluster)| cluster).collect())
}

const CLUSTER_SECRET: &str = "smoke-cluster-secret-0123456789";

#[test]
fn cluster_history_survives_killing_the_leader() {
    let (nodes, cluster_ports) = start_cluster("cluster-history", 3);
    let mut args: Vec<String> = vec!["cluster-history".into(), "--no-progress".into()];
    for (i, node) in nodes.iter().enumerate() {
        let id = i + 1;
        args.extend(["--target".into(), node.url()]);
        args.extend(["--server-pid".into(), node.pid()]);
        args.extend(["--pid".into(), format!("{id}={}", node.pid())]);
        args.extend([
            "--cluster-node".into(),
            format!("{id}=127.0.0.1:{}", cluster_ports[i]),
        ]);
    }
    args.extend(
        [
            "--cluster-secret",
            CLUSTER_SECRET,
            "--batch",
            "5",
            "--window",
            "4",
            "--duration-secs",
            "2",
            "--kill-leader-after-secs",
            "0.5",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = nodes[0].run("cluster-history", &args);
    assert_eq!(r["scenario"], "cluster-history");
    let c = &r["cluster_history"];
    // The leader was killed, another node took over and publishing went on.
    assert_eq!(u(c, "killed_node"), u(c, "leader_before"), "{c}");
    assert_ne!(u(c, "new_leader"), u(c, "killed_node"), "{c}");
    let first_ack = f(c, "kill_to_first_ack_ms");
    assert!(first_ack > 0.0 && first_ack < 10_000.0, "{c}");
    assert!(f(c, "kill_to_new_leader_ms") > 0.0, "{c}");
    assert!(u(&r, "published") > 0);
    assert_latency_sane(&r["publish_rtt_ms"]);
    // Both surviving nodes replayed every offset exactly once, in order; none was lost.
    assert_eq!(u(c, "replicas_complete"), 2, "{c}");
    assert_eq!(u(c, "replicas_unreachable"), 1, "{c}");
    assert!(u(c, "stored") >= u(&r, "published"), "{r}");
    assert_eq!(u(&r, "expected"), 2 * u(c, "stored"));
    assert_eq!(u(&r, "delivered"), u(&r, "expected"), "{r}");
    assert_eq!(u(&r, "lost"), 0);
    assert_eq!(u(&r, "duplicates"), 0);
    assert_eq!(u(&r, "out_of_order"), 0);
}

/// The SVG plots of an HTML report.
fn svgs(html: &str) -> Vec<&str> {
    html.split("<svg").skip(1).collect()
}

/// The tick labels of a plot (the `<text>` elements that are numbers or humanised numbers).
fn tick_labels(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let text = t.split_once('>')?.1.split_once("</text>")?.0.trim();
            text.starts_with(|c: char| c.is_ascii_digit() || c == '-')
                .then(|| text.to_owned())
        })
        .collect()
}

/// Humanised: digits, at most one decimal point, an optional k / M / G; never `300000.0`.
fn is_humanised(label: &str) -> bool {
    let number = label.trim_end_matches(['k', 'M', 'G']);
    let digits = number.trim_start_matches('-');
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.matches('.').count() <= 1
        && !digits.ends_with('.')
        && !(digits.contains('.') && digits.ends_with('0'))
        && digits
            .split('.')
            .next()
            .is_some_and(|whole| whole.len() <= 3)
}

#[test]
fn humanised_labels_are_recognised() {
    for good in ["0", "300k", "1.5M", "12.3k", "0.25", "999", "-40k"] {
        assert!(is_humanised(good), "{good}");
    }
    for bad in ["300000.0", "300000", "1.50k", "2.", "1e6"] {
        assert!(!is_humanised(bad), "{bad}");
    }
}

#[test]
fn fanout_over_sse_counts_every_delivery_and_plots_humanised_axes() {
    let s = Server::start("fanout-sse");
    let (url, pid) = (s.url(), s.pid());
    let report = s.dir.join("fanout-sse.html").display().to_string();
    let r = s.run(
        "fanout-sse",
        &[
            "fanout",
            "--transport",
            "sse",
            "--target",
            &url,
            "--server-pid",
            &pid,
            "--no-progress",
            "--subscribers",
            "20",
            "--channels",
            "2",
            "--window",
            "2",
            "--batch",
            "5",
            "--duration-secs",
            "2",
            "--report",
            &report,
        ],
    );
    assert_exact(&r);
    assert_eq!(r["scenario"], "fanout-sse");
    assert_eq!(u(&r, "connections"), 20);
    assert_eq!(u(&r, "expected"), u(&r, "published") * 10);
    assert_latency_sane(&r["latency_ms"]);
    assert_server_sampled(&r);
    assert!(f(&r, "server_cpu_us_per_delivery") > 0.0);
    assert_eq!(r["errors"], serde_json::json!({}));
    let html = std::fs::read_to_string(&report).expect("the HTML report");
    let plots = svgs(&html);
    let deliveries = plots
        .iter()
        .find(|svg| svg.contains("deliveries/s"))
        .expect("a deliveries plot");
    assert!(
        plots
            .iter()
            .any(|svg| svg.contains("publishes/s") && !svg.contains("deliveries/s")),
        "publishes on their own plot"
    );
    let labels = tick_labels(deliveries);
    assert!(labels.len() >= 4, "{labels:?}");
    assert!(labels.iter().all(|l| is_humanised(l)), "{labels:?}");
    // Thousands of deliveries per second: the axis says k, not 1000.
    assert!(labels.iter().any(|l| l.ends_with('k')), "{labels:?}");
}

#[test]
fn cross_node_fanout_is_exact_on_both_placements() {
    let (nodes, _) = start_cluster("cross-node", 2);
    let mut args: Vec<String> = vec!["cross-node".into(), "--no-progress".into()];
    for node in &nodes {
        args.extend(["--target".into(), node.url()]);
        args.extend(["--server-pid".into(), node.pid()]);
    }
    args.extend(["--subscribers", "6", "--duration-secs", "1"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = nodes[0].run("cross-node", &args);
    assert_eq!(r["scenario"], "cross-node");
    let shapes = r["shapes"].as_array().expect("shapes");
    assert_eq!(shapes.len(), 2);
    assert_eq!(u(&shapes[0], "channels"), 6, "one channel per subscriber");
    assert_eq!(u(&shapes[1], "channels"), 1, "one channel for all");
    for shape in shapes {
        for placement in ["local_runs", "cross_runs"] {
            let runs = shape[placement].as_array().expect("runs");
            assert_eq!(runs.len(), 1);
            assert_exact(&runs[0]);
            assert_eq!(u(&runs[0], "connections"), 6);
            assert!(f(&runs[0], "server_cpu_us_per_delivery") > 0.0, "{shape}");
        }
        // The subscribers were on node B for the cross-node runs and on A for the local ones.
        assert_eq!(
            shape["cross_runs"][0]["targets"][0].as_str(),
            Some(nodes[1].url().as_str())
        );
        assert_eq!(
            shape["local_runs"][0]["targets"][0].as_str(),
            Some(nodes[0].url().as_str())
        );
        assert!(
            f(shape, "extra_cpu_us_per_forwarded_event").is_finite(),
            "{shape}"
        );
        assert!(f(shape, "cross_over_local_per_delivery") > 0.0, "{shape}");
        assert_eq!(
            u(shape, "lost") + u(shape, "duplicates") + u(shape, "out_of_order"),
            0
        );
    }
}

#[test]
fn sweep_tables_and_plots_figures_against_size() {
    let s = Server::start("sweep");
    let (url, pid) = (s.url(), s.pid());
    let report = s.dir.join("sweep.html").display().to_string();
    let r = s.run(
        "sweep",
        &[
            "sweep",
            "--pause-secs",
            "0",
            "--point",
            "one channel: --subscribers 4 --channels 1",
            "--point",
            "one channel: --subscribers 40 --channels 1",
            "--point",
            "channels of 2: --subscribers 40 --channels 20",
            "--report",
            &report,
            "--",
            "fanout",
            "--target",
            &url,
            "--server-pid",
            &pid,
            "--duration-secs",
            "1",
        ],
    );
    let points = r["points"].as_array().expect("points");
    assert_eq!(points.len(), 3);
    let xs: Vec<f64> = points.iter().map(|p| f(p, "x")).collect();
    assert_eq!(xs, [4.0, 40.0, 40.0]);
    assert_eq!(points[2]["series"], "channels of 2");
    for p in points {
        assert_exact(&p["runs"][0]);
        assert!(f(&p["medians"], "server_cpu_us_per_delivery") > 0.0, "{p}");
        // Medians are keyed by the figure's path.
        let p99 = p["medians"]["latency_ms.p99"]
            .as_f64()
            .expect("a p99 median");
        assert!(p99 > 0.0, "{p}");
        assert_eq!(f(&p["medians"], "lost"), 0.0);
    }
    let html = std::fs::read_to_string(&report).expect("the sweep report");
    let cpu = svgs(&html)
        .into_iter()
        .find(|svg| svg.contains("server CPU per delivery"))
        .expect("a CPU per delivery plot");
    assert!(cpu.contains("one channel") && cpu.contains("channels of 2"));
    assert!(tick_labels(cpu).iter().all(|l| is_humanised(l)));
}
