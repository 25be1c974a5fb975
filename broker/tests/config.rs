//! The layered configuration with the real binary: a default, the file, the environment and a
//! flag each give a port, and the node listens where the precedence (flag > environment > file >
//! default) says, and nowhere else; a file with an unknown key, and a variable that is no number,
//! stop start-up naming the key.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::node::unused_port;

/// The longest the node may take to serve.
const WAIT: Duration = Duration::from_secs(20);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chorus-config-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `chorus` with a clean environment for its settings.
fn chorus() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chorus"));
    for (variable, _) in std::env::vars() {
        if variable.starts_with("CHORUS_") {
            command.env_remove(variable);
        }
    }
    command.env("CHORUS_LOG", "warn,openraft=off");
    command
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The status of `GET path` on `port`, or `None` when nothing listens there.
fn get(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.get(9..12)?.parse().ok()
}

#[test]
fn a_setting_comes_from_the_flag_else_the_environment_else_the_file_else_its_default() {
    let dir = scratch("layers");
    let [public, file_metrics, env_metrics, file_cluster, env_cluster, flag_cluster] =
        [(); 6].map(|_| unused_port());
    let file = dir.join("chorus.toml");
    let text = format!(
        "host = \"127.0.0.1\"\nport = {public}\nmetrics_port = {file_metrics}\n\
         cluster_port = {file_cluster}\n"
    );
    std::fs::write(&file, text).unwrap();
    let mut command = chorus();
    command
        .arg("--config")
        .arg(&file)
        .arg(format!("--cluster-port={flag_cluster}"))
        .env("CHORUS_DATA_DIR", dir.join("data"))
        .env("CHORUS_METRICS_PORT", env_metrics.to_string())
        .env("CHORUS_CLUSTER_PORT", env_cluster.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let node = Killed(command.spawn().unwrap());

    // The file's port (over the default, 6001) serves the public endpoints.
    let deadline = Instant::now() + WAIT;
    while get(public, "/healthz") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the node serving on the file's port"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The environment's metrics port over the file's.
    assert_eq!(get(env_metrics, "/metrics"), Some(200));
    assert_eq!(get(file_metrics, "/metrics"), None);
    // The flag's cluster port over the environment's and the file's: the cluster port refuses a
    // request without the secret.
    assert_eq!(get(flag_cluster, "/cluster"), Some(401));
    assert_eq!(get(env_cluster, "/cluster"), None);
    assert_eq!(get(file_cluster, "/cluster"), None);
    drop(node);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unknown_key_and_a_bad_variable_stop_start_up_naming_them() {
    let dir = scratch("refused");
    let file = dir.join("chorus.toml");
    std::fs::write(&file, "prot = 6001\n").unwrap();
    let output = chorus().arg("--config").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("chorus.toml") && stderr.contains("prot"),
        "{stderr}"
    );

    // (With a file that is not there, a node that took the variable would stop all the same.)
    let missing = dir.join("missing.toml");
    let output = chorus()
        .env("CHORUS_WORKERS", "many")
        .arg("--config")
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("workers") && stderr.contains("many"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_webhook_stops_start_up_naming_its_key() {
    let dir = scratch("webhooks");
    let file = dir.join("chorus.toml");
    let app = "[[apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"a-secret-of-length\"\n";
    let cases = [
        (
            "url = \"ftp://x.example/\"\nevent_types = [\"client_event\"]",
            "apps[0].webhooks[0].url",
        ),
        (
            "url = \"http://x.example/\"\nevent_types = [\"occupied\"]",
            "apps[0].webhooks[0].event_types",
        ),
        (
            "url = \"http://x.example/\"\nevent_types = [\"cache_miss\"]\nfilter = { channel_name_contains = \"x\" }",
            "channel_name_contains",
        ),
    ];
    for (webhook, named) in cases {
        std::fs::write(&file, format!("{app}[[apps.webhooks]]\n{webhook}\n")).unwrap();
        let output = chorus().arg("--config").arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{webhook}");
        assert!(stderr.contains(named), "{named}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
