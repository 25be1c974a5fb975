//! One `chorus` process, the one way the tests start a node, alone ([`super::Server`]) or in a
//! cluster ([`super::cluster::ClusterNode`]): free loopback ports, a temporary data directory
//! and configuration file of its own, more settings through the environment as an operator
//! would give them; started, probed, signalled, killed and started again. Killed and its
//! directory removed when dropped.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A port nothing listens on right now, and not handed out before by this test process.
pub fn unused_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("a free loopback port");
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// What a node is waited for after it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/readyz` answers 200: it serves and is a member of a cluster with a leader.
    Ready,
    /// `/healthz` answers 200: it is up (perhaps without a cluster to follow).
    Healthy,
}

impl Probe {
    fn path(self) -> &'static str {
        match self {
            Probe::Ready => "/readyz",
            Probe::Healthy => "/healthz",
        }
    }
}

/// A `chorus` process and everything it is started with.
pub struct NodeProcess {
    pub host: IpAddr,
    pub port: u16,
    pub metrics_port: u16,
    dir: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl NodeProcess {
    /// A node not started yet, on free ports of `host`, in an empty directory named `dir_name`
    /// under the temporary directory, whose configuration file is `config` and which is
    /// started with the environment variables `env` as well.
    pub fn new(dir_name: &str, host: IpAddr, config: &str, env: Vec<(String, String)>) -> Self {
        let dir = std::env::temp_dir().join(dir_name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("chorus.toml"), config).unwrap();
        NodeProcess {
            host,
            port: unused_port(),
            metrics_port: unused_port(),
            dir,
            env,
            child: None,
        }
    }

    /// Sets (or replaces) an environment variable it starts with.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts the process (again, after a kill: same ports, directory and settings).
    pub fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_chorus"))
            .arg("--config")
            .arg(self.dir.join("chorus.toml"))
            .env("CHORUS_HOST", self.host.to_string())
            .env("CHORUS_PORT", self.port.to_string())
            .env("CHORUS_METRICS_PORT", self.metrics_port.to_string())
            .env("CHORUS_DATA_DIR", self.dir.join("data"))
            .env("CHORUS_LOG", "warn")
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::null())
            .spawn()
            .expect("start chorus");
        self.child = Some(child);
    }

    /// Waits (at most 10 s) until `probe` answers 200; `false` if the process ended first (a
    /// port it was given was taken meanwhile by another process).
    pub async fn wait_for(&mut self, probe: Probe) -> bool {
        let url = self.url(probe.path());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
                return true;
            }
            let child = self.child.as_mut().expect("the node is running");
            if child.try_wait().expect("the node's status").is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "the node at {} did not answer {} with 200 within 10 s",
                self.public_addr(),
                probe.path()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: the process gets no chance to flush or close anything.
    pub fn kill_hard(&mut self) {
        let mut child = self.child.take().expect("the node is running");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    /// Sends `signal` (a `kill` signal name) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the node is running").id()
    }

    /// The address of its public port.
    pub fn public_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// A URL of its public port.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public_addr())
    }

    /// A URL of its metrics port.
    pub fn metrics_url(&self) -> String {
        format!("http://{}:{}/metrics", self.host, self.metrics_port)
    }

    /// The value of the first metrics line starting with `line_start` (0 when absent).
    pub async fn metric(&self, line_start: &str) -> f64 {
        let text = reqwest::get(self.metrics_url())
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0.0, |v| v.parse().unwrap())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
