//! How a node is started and reached, with the real binary:
//! - Kubernetes service links in the port variables (`CHORUS_PORT=tcp://10.0.0.7:6001`, as a
//!   Service named `chorus` gives every pod) are ignored with a warning naming them; any other
//!   value that is not a port stops start-up, naming the variable;
//! - an app id that is not a number (`app-id`, as Soketi's and Sockudo's users have) takes
//!   signed publishes that reach subscribers;
//! - a node alone with no cluster secret takes a random one, written to its data directory
//!   (mode 0600) where `chorus cluster status` reads it; the old public development secret is
//!   refused;
//! - a node with no app configured serves the development app with a random secret, printed and
//!   kept in its data directory (mode 0600) across restarts; a publicly known secret is refused;
//! - an idle keep-alive connection of the public port is still served after 6 s (Node's agent
//!   keeps idle sockets 5 s), and closed after `keep_alive_secs` when that is shorter;
//! - nodes whose peer list names hosts, and a node whose peers are a DNS name's address records,
//!   resolve them from `/etc/hosts` themselves, in a mount namespace where the C library cannot
//!   (`hosts: dns` in `nsswitch.conf`, no DNS server).

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::cluster::CLUSTER_SECRET;
use support::node::unused_port;
use support::{KEY, SECRET};

/// A `chorus` process whose stderr is kept; killed when dropped.
struct Process {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn start(mut command: Command) -> Process {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("start chorus");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let kept = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut kept = kept.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        Process { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `url` answers 200.
    async fn await_ok(&mut self, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if reqwest::get(url).await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            let exited = self.child.try_wait().unwrap();
            assert!(exited.is_none(), "chorus exited: {}", self.stderr());
            assert!(Instant::now() < deadline, "{url} never answered 200");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A fresh directory for one test.
fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chorus-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `chorus` with `config` as its file, logging warnings, and no cluster secret inherited.
fn chorus(dir: &Path, config: &str) -> Command {
    std::fs::write(dir.join("chorus.toml"), config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_chorus"));
    command
        .arg("--config")
        .arg(dir.join("chorus.toml"))
        .env("CHORUS_LOG", "warn,openraft=off")
        .env_remove("CHORUS_CLUSTER_SECRET")
        .env_remove("CHORUS_PEERS");
    command
}

/// The address and ports of a node, as a config file's top keys.
struct Ports {
    host: Ipv4Addr,
    port: u16,
    metrics_port: u16,
    cluster_port: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            host: Ipv4Addr::LOCALHOST,
            port: unused_port(),
            metrics_port: unused_port(),
            cluster_port: unused_port(),
        }
    }

    fn toml(&self, dir: &Path) -> String {
        format!(
            "host = \"{}\"\nport = {}\nmetrics_port = {}\ncluster_port = {}\n\
             data_dir = {:?}\n",
            self.host,
            self.port,
            self.metrics_port,
            self.cluster_port,
            dir.join("data")
        )
    }

    fn public(&self) -> SocketAddr {
        SocketAddr::from((self.host, self.port))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_links_are_ignored_app_ids_need_not_be_numbers_and_a_lone_node_has_a_random_secret()
{
    let dir = test_dir("entry-links");
    let ports = Ports::new();
    let app = format!("[[apps]]\nid = \"app-id\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n");
    let config = format!("{}{app}", ports.toml(&dir));
    let mut links = chorus(&dir, &config);
    links
        .env("CHORUS_PORT", "tcp://10.0.0.7:6001")
        .env("CHORUS_METRICS_PORT", "tcp://10.0.0.8:9601")
        .env("CHORUS_CLUSTER_PORT", "tcp://10.0.0.9:6002");
    let mut node = Process::start(links);
    node.await_ok(&format!("http://{}/readyz", ports.public()))
        .await;
    let stderr = node.stderr();
    for variable in ["CHORUS_PORT", "CHORUS_METRICS_PORT", "CHORUS_CLUSTER_PORT"] {
        assert!(
            stderr.contains(&format!("variable=\"{variable}\"")) && stderr.contains("service link"),
            "{stderr}"
        );
    }

    // The app `app-id`: a signed publish reaches a subscriber.
    let mut subscriber = support::connect(ports.public(), None).await;
    subscriber.subscribe("news").await;
    let body = serde_json::json!({"name": "headline", "channel": "news", "data": "hello"});
    let (status, answer) =
        support::post(ports.public(), "/apps/app-id/events", body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let event = subscriber.expect("headline").await;
    assert_eq!(event["data"], "hello");

    // The cluster secret: random, in the data directory, for the status command.
    let secret_file = dir.join("data").join("cluster-secret");
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert!(
        secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "{secret}"
    );
    let mode = std::fs::metadata(&secret_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let cluster_addr = format!("127.0.0.1:{}", ports.cluster_port);
    let status = |data_dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_chorus"))
            .args(["cluster", "status", "--addr", &cluster_addr, "--data-dir"])
            .arg(data_dir)
            .env_remove("CHORUS_CLUSTER_SECRET")
            .env("CHORUS_LOG", "error")
            .output()
            .unwrap()
    };
    let read = status(&dir.join("data"));
    let text = String::from_utf8_lossy(&read.stdout);
    assert!(read.status.success(), "{text}");
    assert!(text.starts_with("node 1: leader"), "{text}");
    let without = status(&dir);
    assert!(!without.status.success());
    let error = String::from_utf8_lossy(&without.stderr);
    assert!(error.contains("no cluster secret"), "{error}");
    let client = reqwest::Client::new();
    let cluster_url = format!("http://{cluster_addr}/cluster");
    for (presented, expected) in [(secret.as_str(), 200), ("chorus-dev-cluster-secret", 401)] {
        let answer = client
            .get(&cluster_url)
            .header(chorus_cluster::SECRET_HEADER, presented)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), expected);
    }
    drop(node);

    // A value that is neither a port nor a service link stops start-up, naming the variable.
    let mut wrong = chorus(&dir, &config);
    wrong.env("CHORUS_PORT", "six");
    let output = wrong.output().unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("CHORUS_PORT") && error.contains("\"six\""),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `GET /apps/1/channels` of the development app, signed with `secret` by the test's own HMAC.
fn dev_app_channels_url(node: SocketAddr, secret: &str) -> String {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let query = format!("auth_key=chorus-dev-key&auth_timestamp={ts}&auth_version=1.0");
    let signature = support::hmac_hex(secret, &format!("GET\n/apps/1/channels\n{query}"));
    format!("http://{node}/apps/1/channels?{query}&auth_signature={signature}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_app_has_a_random_secret_kept_across_restarts() {
    let dir = test_dir("dev-app");
    let ports = Ports::new();
    let start = || {
        let mut command = chorus(&dir, &ports.toml(&dir));
        for variable in ["CHORUS_APP_ID", "CHORUS_APP_KEY", "CHORUS_APP_SECRET"] {
            command.env_remove(variable);
        }
        Process::start(command)
    };
    let mut node = start();
    node.await_ok(&format!("http://{}/healthz", ports.public()))
        .await;
    let file = dir.join("data").join("dev-app-secret");
    let secret = std::fs::read_to_string(&file).unwrap();
    assert!(secret.len() >= 32, "{secret:?}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(node.stderr().contains(&secret), "the secret is printed");
    let public = ports.public();
    let status = move |secret: String| async move {
        let url = dev_app_channels_url(public, &secret);
        reqwest::get(url).await.unwrap().status()
    };
    assert_eq!(status(secret.clone()).await, 200);
    assert_eq!(status("chorus-dev-secret".to_owned()).await, 401);
    drop(node);

    let mut again = start();
    again
        .await_ok(&format!("http://{}/healthz", ports.public()))
        .await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), secret);
    assert_eq!(status(secret.clone()).await, 200);
    drop(again);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Sends `GET /healthz` on `stream` and reads the answer: its status, or `None` when the server
/// closed the connection.
fn get_healthz(stream: &mut TcpStream) -> Option<u16> {
    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    stream.write_all(request).ok()?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream.read(&mut chunk).ok()?;
        if read == 0 {
            return None;
        }
        answer.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return head.split(' ').nth(1).and_then(|code| code.parse().ok());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_served_after_six_seconds() {
    let dir = test_dir("entry-keepalive");
    let app = format!("[[apps]]\nid = \"1\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n");
    let mut nodes = Vec::new();
    for (name, keep_alive) in [("default", None), ("short", Some(2))] {
        let node_dir = dir.join(name);
        std::fs::create_dir_all(&node_dir).unwrap();
        let ports = Ports::new();
        let mut config = ports.toml(&node_dir);
        if let Some(secs) = keep_alive {
            config.push_str(&format!("keep_alive_secs = {secs}\n"));
        }
        let mut node = Process::start(chorus(&node_dir, &format!("{config}{app}")));
        node.await_ok(&format!("http://{}/readyz", ports.public()))
            .await;
        let mut stream = TcpStream::connect(ports.public()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(get_healthz(&mut stream), Some(200), "{name}: first request");
        nodes.push((name, node, stream));
    }
    // Idle, as a client that publishes every few seconds leaves its pooled socket.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut answers = Vec::new();
    for (name, _node, stream) in &mut nodes {
        answers.push((*name, get_healthz(stream)));
    }
    assert_eq!(
        answers,
        [("default", Some(200)), ("short", None)],
        "the default keeps the connection; 2 s closed it"
    );
    drop(nodes);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `chorus` in a mount namespace of its own, where `/etc/hosts` is `hosts`, and the C library
/// resolves no name: `hosts: dns` only, and no DNS server.
fn in_namespace(dir: &Path, hosts: &str, program: &str, args: &[&str]) -> Command {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("hosts"), hosts).unwrap();
    std::fs::write(etc.join("nsswitch.conf"), "hosts: dns\n").unwrap();
    std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    let script = format!(
        "mount --bind {etc}/hosts /etc/hosts && mount --bind {etc}/nsswitch.conf \
         /etc/nsswitch.conf && mount --bind {etc}/resolv.conf /etc/resolv.conf && exec \"$@\"",
        etc = etc.display()
    );
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(program)
        .args(args);
    command
}

/// Node `id` of the namespace test: on `127.0.1.{id}`, every node's cluster port the same (as
/// pods behind a headless Service), its peers given by `CHORUS_PEERS`.
fn start_in_namespace(dir: &Path, hosts: &str, id: u64, cluster_port: u16, peers: &str) -> Process {
    let ports = Ports {
        host: Ipv4Addr::new(127, 0, 1, id as u8),
        cluster_port,
        ..Ports::new()
    };
    let node_dir = dir.join(format!("node-{id}"));
    std::fs::create_dir_all(&node_dir).unwrap();
    let app = format!("[[apps]]\nid = \"1\"\nkey = \"{KEY}\"\nsecret = \"{SECRET}\"\n");
    let config = node_dir.join("chorus.toml");
    std::fs::write(&config, format!("{}{app}", ports.toml(&node_dir))).unwrap();
    let chorus = env!("CARGO_BIN_EXE_chorus");
    let mut command = in_namespace(
        &node_dir,
        hosts,
        chorus,
        &["--config", config.to_str().unwrap()],
    );
    command
        .env("CHORUS_NODE_ID", id.to_string())
        .env("CHORUS_PEERS", peers)
        .env("CHORUS_CLUSTER_SECRET", CLUSTER_SECRET)
        .env("CHORUS_LOG", "warn,openraft=off");
    Process::start(command)
}

/// Waits until every node at `addrs` names a leader and has `voters` voters, each recorded; the
/// last statuses.
async fn await_formed(
    addrs: &[SocketAddr],
    voters: usize,
    nodes: &[Process],
) -> Vec<chorus_cluster::ClusterStatus> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut statuses = Vec::new();
        for addr in addrs {
            let answer = client
                .get(format!("http://{addr}/cluster"))
                .header(chorus_cluster::SECRET_HEADER, CLUSTER_SECRET)
                .send()
                .await;
            if let Ok(answer) = answer {
                statuses.extend(answer.json::<chorus_cluster::ClusterStatus>().await.ok());
            }
        }
        let formed = statuses.len() == addrs.len()
            && statuses.iter().all(|status| {
                status.leader_id.is_some()
                    && status.voters().count() == voters
                    && status.voters().all(|member| member.recorded)
            });
        if formed {
            return statuses;
        }
        let stderr: Vec<String> = nodes.iter().map(Process::stderr).collect();
        assert!(
            Instant::now() < deadline,
            "no cluster of {voters} over host names: {statuses:#?} {stderr:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_named_by_host_resolve_without_the_c_library() {
    let dir = test_dir("entry-names");
    let cluster_port = unused_port();
    let hosts: String = (1..=4)
        .map(|id| format!("127.0.1.{id} node-{id}.chorus.test peers.chorus.test\n"))
        .collect();

    // The control: in such a namespace the C library cannot resolve the names.
    let getent = in_namespace(&dir, &hosts, "getent", &["hosts", "node-1.chorus.test"])
        .output()
        .unwrap();
    assert!(
        getent.status.code() == Some(2),
        "getent must fail there: {getent:?}"
    );

    // Three nodes whose static list names hosts.
    let list: Vec<String> = (1..=3)
        .map(|id| format!("{id}@node-{id}.chorus.test:{cluster_port}"))
        .collect();
    let mut nodes: Vec<Process> = (1..=3)
        .map(|id| start_in_namespace(&dir, &hosts, id, cluster_port, &list.join(",")))
        .collect();
    let cluster_addr = |id: u8| SocketAddr::from(([127, 0, 1, id], cluster_port));
    let three: Vec<SocketAddr> = (1..=3).map(cluster_addr).collect();
    let statuses = await_formed(&three, 3, &nodes).await;
    let addresses: BTreeSet<&str> = statuses[0].voters().map(|m| m.addr.as_str()).collect();
    let named: BTreeSet<String> = list.iter().map(|entry| entry[2..].to_owned()).collect();
    assert_eq!(addresses, named.iter().map(String::as_str).collect());

    // A fourth whose peers are the address records of one DNS name.
    nodes.push(start_in_namespace(
        &dir,
        &hosts,
        4,
        cluster_port,
        "peers.chorus.test",
    ));
    let four: Vec<SocketAddr> = (1..=4).map(cluster_addr).collect();
    await_formed(&four, 4, &nodes).await;
    drop(nodes);
    std::fs::remove_dir_all(&dir).unwrap();
}
