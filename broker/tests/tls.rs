//! TLS against the real binary: the public port speaks TLS only, and a certificate replaced on
//! disk (as Kubernetes replaces a secret's files: a symbolic link swapped) is served from the
//! next handshakes, a replacement that does not load logged and the old certificate kept; a
//! three-node cluster whose cluster port speaks TLS only forms, commits history and answers the
//! operator's command. The certificates come from an authority the test makes (rcgen); the client
//! side is plain rustls, trusting that authority alone.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit as _, Mac as _};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use sha2::Digest as _;

use support::node::unused_port;

/// The longest any awaited condition may take.
const WAIT: Duration = Duration::from_secs(20);

const APP_ID: &str = "77";
const APP_KEY: &str = "tls-app-key";
const APP_SECRET: &str = "tls-app-secret-0123456789";
const CLUSTER_SECRET: &str = "a-long-cluster-secret-for-tls";

/// A certificate authority made for the test.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    fn new() -> Authority {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Authority { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }

    /// A certificate for `127.0.0.1` and its key, as PEM.
    fn issue(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (certificate.pem(), key.serialize_pem())
    }
}

/// A directory laid out as the kubelet lays out a secret volume: `tls.crt` and `tls.key` are
/// links into `..data`, itself a link to the current version's directory, swapped at once.
struct SecretVolume {
    dir: PathBuf,
}

impl SecretVolume {
    fn new(dir: PathBuf) -> SecretVolume {
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        SecretVolume { dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Writes a new version and swaps `..data` to it.
    fn publish(&self, version: &str, cert: &str, key: &str) {
        let versioned = self.dir.join(format!("..{version}"));
        std::fs::create_dir_all(&versioned).unwrap();
        std::fs::write(versioned.join("tls.crt"), cert).unwrap();
        std::fs::write(versioned.join("tls.key"), key).unwrap();
        let staged = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&staged);
        std::os::unix::fs::symlink(format!("..{version}"), &staged).unwrap();
        std::fs::rename(&staged, self.dir.join("..data")).unwrap();
    }
}

/// A `chorus` process, killed when dropped; what it logs goes to a file.
struct Node {
    child: Child,
    log: PathBuf,
}

impl Node {
    fn start(dir: &Path, name: &str, env: &[(&str, String)]) -> Node {
        let log = dir.join(format!("{name}.log"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_chorus"));
        command
            .env("CHORUS_HOST", "127.0.0.1")
            .env("CHORUS_DATA_DIR", dir.join(format!("{name}-data")))
            .env("CHORUS_LOG", "warn,chorus_broker::tls=info,openraft=off")
            .env_remove("CHORUS_CONFIG")
            .env_remove("CHORUS_PEERS")
            .env_remove("CHORUS_CLUSTER_SECRET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (variable, value) in env {
            command.env(variable, value);
        }
        Node {
            child: command.spawn().unwrap(),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chorus-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `check` until it gives a value, for at most [`WAIT`].
fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TLS connection to `addr` that trusts `roots` alone (HTTP/1.1), its handshake done.
fn tls_connect(
    addr: SocketAddr,
    roots: &RootCertStore,
) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::from(addr.ip());
    let connection =
        ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let socket = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut stream = StreamOwned::new(connection, socket);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// The SHA-256 fingerprint of the certificate the server at `addr` serves to a new handshake.
fn served_fingerprint(addr: SocketAddr, roots: &RootCertStore) -> std::io::Result<String> {
    let stream = tls_connect(addr, roots)?;
    let chain = stream
        .conn
        .peer_certificates()
        .expect("a server certificate");
    Ok(fingerprint(&chain[0]))
}

fn fingerprint(der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(der))
}

fn fingerprint_of_pem(pem: &str) -> String {
    fingerprint(&CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
}

/// An HTTP/1.1 request on `stream` (the server closes the connection after it): the status, when
/// the answer is HTTP, and the body.
fn request(
    mut stream: impl Read + Write,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(Option<u16>, String)> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    stream.write_all(format!("{head}\r\n{body}").as_bytes())?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        // A TLS peer that closes without a close_notify, or a plain socket reset: what came is
        // all there is.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) => {}
        Err(e) => return Err(e),
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    Ok((status, body))
}

fn plain(addr: SocketAddr) -> TcpStream {
    let socket = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket
}

/// A path of the app's HTTP API signed as Pusher signs it, with a test-local HMAC.
fn signed(method: &str, path: &str, body: Option<&str>) -> String {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let mut query = vec![
        ("auth_key", APP_KEY.to_owned()),
        ("auth_timestamp", timestamp),
        ("auth_version", "1.0".to_owned()),
    ];
    if let Some(body) = body {
        let md5 = hex::encode(<md5::Md5 as md5::Digest>::digest(body.as_bytes()));
        query.push(("body_md5", md5));
    }
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = query.join("&");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(format!("{method}\n{path}\n{query}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    format!("{path}?{query}&auth_signature={signature}")
}

#[test]
fn the_public_port_speaks_tls_only_and_serves_a_replaced_certificate_from_the_next_handshake() {
    let dir = scratch("public");
    let authority = Authority::new();
    let roots = authority.roots();
    let volume = SecretVolume::new(dir.join("tls"));
    let (cert_a, key_a) = authority.issue();
    volume.publish("v1", &cert_a, &key_a);
    let (port, metrics_port) = (unused_port(), unused_port());
    let node = Node::start(
        &dir,
        "node",
        &[
            ("CHORUS_PORT", port.to_string()),
            ("CHORUS_METRICS_PORT", metrics_port.to_string()),
            ("CHORUS_CLUSTER_PORT", unused_port().to_string()),
            ("CHORUS_TLS_CERT_FILE", volume.file("tls.crt")),
            ("CHORUS_TLS_KEY_FILE", volume.file("tls.key")),
        ],
    );
    let public = local(port);

    // Over TLS the public port serves; a plain-text request there gets no HTTP answer, while the
    // metrics port, plain, answers one.
    let healthz = || {
        request(
            tls_connect(public, &roots).ok()?,
            "GET",
            "/healthz",
            &[],
            "",
        )
        .ok()
    };
    let (status, _) = eventually("the public port serving over TLS", healthz);
    assert_eq!(status, Some(200));
    let (status, _) = request(plain(local(metrics_port)), "GET", "/metrics", &[], "").unwrap();
    assert_eq!(status, Some(200), "a plain client of a plain port");
    let (status, answer) = request(plain(public), "GET", "/healthz", &[], "").unwrap();
    assert_eq!(status, None, "a plain client of the TLS port: {answer:?}");

    // Certificate A is served.
    let (a, b_later) = (fingerprint_of_pem(&cert_a), authority.issue());
    assert_eq!(served_fingerprint(public, &roots).unwrap(), a);

    // A replacement that does not load is logged, and A still served.
    volume.publish("v2", "not a certificate", &key_a);
    eventually("the warning about the replacement", || {
        node.log().contains("do not load").then_some(())
    });
    assert_eq!(served_fingerprint(public, &roots).unwrap(), a);

    // A good replacement, B, is served from the next handshakes on.
    let (cert_b, key_b) = b_later;
    let b = fingerprint_of_pem(&cert_b);
    assert_ne!(a, b);
    volume.publish("v3", &cert_b, &key_b);
    eventually("certificate B served", || {
        (served_fingerprint(public, &roots).ok()? == b).then_some(())
    });
    let (status, _) = request(
        tls_connect(public, &roots).unwrap(),
        "GET",
        "/healthz",
        &[],
        "",
    )
    .unwrap();
    assert_eq!(status, Some(200));
    drop(node);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The three ports of a node of the cluster.
struct Ports {
    public: u16,
    metrics: u16,
    cluster: u16,
}

#[test]
fn a_cluster_whose_cluster_port_speaks_tls_only_forms_commits_history_and_answers_the_operator() {
    let dir = scratch("cluster");
    let authority = Authority::new();
    let roots = authority.roots();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, authority.pem()).unwrap();
    let config = dir.join("chorus.toml");
    std::fs::write(
        &config,
        format!(
            "[[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n\
             [[apps.history]]\nchannels = \"history-*\"\n"
        ),
    )
    .unwrap();
    let ports: Vec<Ports> = (0..3)
        .map(|_| Ports {
            public: unused_port(),
            metrics: unused_port(),
            cluster: unused_port(),
        })
        .collect();
    let peers: Vec<String> = (1..)
        .zip(&ports)
        .map(|(id, ports)| format!("{id}@127.0.0.1:{}", ports.cluster))
        .collect();
    let nodes: Vec<Node> = (1..)
        .zip(&ports)
        .map(|(id, ports)| {
            let (cert, key) = authority.issue();
            let (cert_file, key_file) =
                (dir.join(format!("{id}.crt")), dir.join(format!("{id}.key")));
            std::fs::write(&cert_file, cert).unwrap();
            std::fs::write(&key_file, key).unwrap();
            let env = [
                ("CHORUS_CONFIG", config.display().to_string()),
                ("CHORUS_NODE_ID", id.to_string()),
                ("CHORUS_PORT", ports.public.to_string()),
                ("CHORUS_METRICS_PORT", ports.metrics.to_string()),
                ("CHORUS_CLUSTER_PORT", ports.cluster.to_string()),
                ("CHORUS_PEERS", peers.join(",")),
                ("CHORUS_CLUSTER_SECRET", CLUSTER_SECRET.to_owned()),
                (
                    "CHORUS_CLUSTER_TLS_CERT_FILE",
                    cert_file.display().to_string(),
                ),
                (
                    "CHORUS_CLUSTER_TLS_KEY_FILE",
                    key_file.display().to_string(),
                ),
                ("CHORUS_CLUSTER_TLS_CA_FILE", ca_file.display().to_string()),
            ];
            Node::start(&dir, &format!("node-{id}"), &env)
        })
        .collect();

    // The cluster forms over TLS: node 1, asked over TLS with the secret, has three voters and a
    // leader.
    let first_cluster_port = local(ports[0].cluster);
    let status_of_first = || {
        let stream = tls_connect(first_cluster_port, &roots).ok()?;
        let secret = [("x-chorus-cluster-secret", CLUSTER_SECRET)];
        let (status, body) = request(stream, "GET", "/cluster", &secret, "").ok()?;
        (status == Some(200)).then(|| serde_json::from_str::<serde_json::Value>(&body).unwrap())
    };
    eventually("three voters and a leader", || {
        let status = status_of_first()?;
        let voters = status["members"]
            .as_array()?
            .iter()
            .filter(|m| m["voter"] == true)
            .count();
        (voters == 3 && status["leader_id"].is_u64()).then_some(())
    });
    // The same request in plain text gets no HTTP answer.
    let secret = [("x-chorus-cluster-secret", CLUSTER_SECRET)];
    let (status, answer) =
        request(plain(first_cluster_port), "GET", "/cluster", &secret, "").unwrap();
    assert_eq!(
        status, None,
        "a plain client of a TLS cluster port: {answer:?}"
    );

    // A history publish through node 2 is answered once a majority has it, and node 3 stores it.
    let body = r#"{"name":"note","channel":"history-tls","data":"over tls"}"#;
    let events = format!("/apps/{APP_ID}/events");
    eventually("the history publish committed", || {
        let path = signed("POST", &events, Some(body));
        let (status, _) = request(plain(local(ports[1].public)), "POST", &path, &[], body).ok()?;
        (status == Some(200)).then_some(())
    });
    let history = format!("/apps/{APP_ID}/channels/history-tls/history");
    eventually("node 3 storing the event", || {
        let path = signed("GET", &history, None);
        let (status, body) = request(plain(local(ports[2].public)), "GET", &path, &[], "").ok()?;
        (status == Some(200) && body.contains("over tls")).then_some(())
    });

    // The operator's command speaks https to the cluster port, trusting the authority.
    let addr = first_cluster_port.to_string();
    let status = |ca: Option<&Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_chorus"));
        command
            .args([
                "cluster",
                "status",
                "--addr",
                &addr,
                "--secret",
                CLUSTER_SECRET,
            ])
            .env("CHORUS_LOG", "error")
            .env_remove("CHORUS_CLUSTER_TLS_CA_FILE");
        if let Some(ca) = ca {
            command.arg("--cluster-tls-ca-file").arg(ca);
        }
        command.output().unwrap()
    };
    let with_ca = status(Some(&ca_file));
    let printed = String::from_utf8_lossy(&with_ca.stdout);
    assert!(
        with_ca.status.success() && printed.contains("members (3)"),
        "{printed}"
    );
    let without = status(None);
    assert!(
        !without.status.success(),
        "plain text to a TLS cluster port"
    );
    drop(nodes);
    std::fs::remove_dir_all(&dir).unwrap();
}
