//! TLS on the public and the cluster ports (rustls, with ring's cryptography).
//!
//! A listener serves a [`ServedCertificate`]: a certificate chain and its key, read from two PEM
//! files and handed to every new handshake. The node's clients of the other nodes' cluster ports
//! trust one certificate authority, a [`TrustedAuthority`] read from a PEM file. Both are read
//! again when their files change (a cert-manager renewal; a Kubernetes secret updated by swapping
//! the symbolic link its files are reached through) without a restart: [`watch`] looks at the
//! files every second, and what loads serves the handshakes that follow, while connections
//! already open keep theirs. A change that does not load (a half-written file, a key that does not
//! fit its certificate) is logged and the old material kept until the files change again.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// How often [`watch`] looks at the files.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Which file of a TLS setting a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
    Ca,
}

/// A TLS file that does not load.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct TlsFileError {
    pub file: TlsFile,
    pub path: PathBuf,
    pub problem: String,
}

fn file_error(file: TlsFile, path: &Path, problem: impl Into<String>) -> TlsFileError {
    TlsFileError {
        file,
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// The two PEM files of a certificate a listener serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TLS material of a node, loaded from the files its settings name.
#[derive(Debug, Clone, Default)]
pub struct NodeTls {
    /// The public port's certificate, when the port speaks TLS.
    pub public: Option<Arc<ServedCertificate>>,
    /// The cluster port's, when the cluster speaks TLS.
    pub cluster: Option<ClusterTls>,
}

/// The cluster's TLS: the certificate this node's cluster port serves, and the authority it
/// trusts on the others'.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    pub served: Arc<ServedCertificate>,
    pub trusted: Arc<TrustedAuthority>,
}

impl NodeTls {
    /// Everything to look at again when its files change.
    pub fn watched(&self) -> Vec<Arc<dyn Watched>> {
        let mut watched: Vec<Arc<dyn Watched>> = Vec::new();
        if let Some(public) = &self.public {
            watched.push(public.clone());
        }
        if let Some(cluster) = &self.cluster {
            watched.push(cluster.served.clone());
            watched.push(cluster.trusted.clone());
        }
        watched
    }
}

impl ClusterTls {
    /// The client configuration of this node's traffic to the other nodes.
    pub fn client_config(&self) -> ClientConfig {
        client_config(self.trusted.clone())
    }
}

/// The cryptography of every TLS configuration of the node: ring's.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS configuration of a listener that serves `certificate` (TLS 1.2 and 1.3; actix adds
/// the ALPN protocols).
pub fn server_config(certificate: Arc<ServedCertificate>) -> ServerConfig {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certificate)
}

/// The TLS configuration of a client that trusts `authority` alone, checking the name it
/// connects to against the certificate as any TLS client does.
pub fn client_config(authority: Arc<TrustedAuthority>) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(authority)
        .with_no_client_auth()
}

/// What can be read again from its files.
pub trait Watched: Send + Sync {
    /// Reads the files again if they changed since they were last looked at.
    fn refresh(&self);
}

/// Looks at the files of `watched` every [`WATCH_INTERVAL`], on a thread of its own, for as long
/// as the process runs.
pub fn watch(watched: Vec<Arc<dyn Watched>>) {
    if watched.is_empty() {
        return;
    }
    std::thread::Builder::new()
        .name("chorus-tls-watch".into())
        .spawn(move || loop {
            std::thread::sleep(WATCH_INTERVAL);
            for item in &watched {
                item.refresh();
            }
        })
        .expect("spawn the TLS file watcher");
}

/// A certificate and its key as a listener serves them: the latest that loaded, for each new
/// handshake.
#[derive(Debug)]
pub struct ServedCertificate(Reloading<CertifiedKey>);

impl ServedCertificate {
    /// Loads the certificate, refusing files that do not load (see [`read_certified_key`]).
    pub fn load(label: &'static str, files: CertificateFiles) -> Result<Self, TlsFileError> {
        let paths = vec![files.cert.clone(), files.key.clone()];
        Reloading::new(label, paths, move || read_certified_key(&files)).map(ServedCertificate)
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

impl Watched for ServedCertificate {
    fn refresh(&self) {
        self.0.refresh();
    }
}

/// The certificate authority the cluster's clients trust: a verifier of the certificates it
/// issued, made again when its file changes.
#[derive(Debug)]
pub struct TrustedAuthority(Reloading<Arc<WebPkiServerVerifier>>);

impl TrustedAuthority {
    /// Loads the authority's certificates from a PEM file.
    pub fn load(label: &'static str, ca: PathBuf) -> Result<Self, TlsFileError> {
        let paths = vec![ca.clone()];
        Reloading::new(label, paths, move || read_authority(&ca)).map(TrustedAuthority)
    }

    fn verifier(&self) -> Arc<WebPkiServerVerifier> {
        (*self.0.current()).clone()
    }
}

impl ServerCertVerifier for TrustedAuthority {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

impl Watched for TrustedAuthority {
    fn refresh(&self) {
        self.0.refresh();
    }
}

/// Material loaded from files, loaded again when they change.
struct Reloading<T> {
    /// What it is, for the logs (`public port certificate`, ...).
    label: &'static str,
    paths: Vec<PathBuf>,
    load: Box<dyn Fn() -> Result<T, TlsFileError> + Send + Sync>,
    current: RwLock<Arc<T>>,
    /// The files as they were when last loaded (or tried).
    seen: Mutex<Vec<Option<Stamp>>>,
}

impl<T> Reloading<T> {
    fn new(
        label: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, TlsFileError> + Send + Sync + 'static,
    ) -> Result<Self, TlsFileError> {
        // The stamps before the load: a change while loading is seen at the next look.
        let seen = stamps(&paths);
        let loaded = load()?;
        Ok(Reloading {
            label,
            paths,
            load: Box::new(load),
            current: RwLock::new(Arc::new(loaded)),
            seen: Mutex::new(seen),
        })
    }

    fn current(&self) -> Arc<T> {
        self.current.read().clone()
    }

    /// Loads the files again if they changed since last looked at; keeps the old material, with
    /// a warning, when they do not load.
    fn refresh(&self) {
        let now = stamps(&self.paths);
        {
            let mut seen = self.seen.lock();
            if *seen == now {
                return;
            }
            *seen = now;
        }
        match (self.load)() {
            Ok(loaded) => {
                *self.current.write() = Arc::new(loaded);
                tracing::info!(files = ?self.paths, "{}: read again, serving new handshakes", self.label);
            }
            Err(e) => tracing::warn!(
                error = %e,
                "{}: its files changed but do not load; keeping the one loaded before",
                self.label
            ),
        }
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("label", &self.label)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

/// What a file looks like from outside, through any symbolic link: a new content, or a link
/// swapped to another file, changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<Stamp>> {
    paths
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some(Stamp {
                device: meta.dev(),
                inode: meta.ino(),
                len: meta.len(),
                modified: (meta.mtime(), meta.mtime_nsec()),
                changed: (meta.ctime(), meta.ctime_nsec()),
            })
        })
        .collect()
}

/// The certificate chain and key of `files`; the key must fit the chain's first certificate.
fn read_certified_key(files: &CertificateFiles) -> Result<CertifiedKey, TlsFileError> {
    let chain = read_certificates(&files.cert, TlsFile::Cert)?;
    let pem = read(&files.key, TlsFile::Key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        file_error(
            TlsFile::Key,
            &files.key,
            format!("no private key in it: {e}"),
        )
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        let problem = format!(
            "does not fit the certificate of {}: {e}",
            files.cert.display()
        );
        file_error(TlsFile::Key, &files.key, problem)
    })
}

/// A verifier of the certificates that the authority in `path` issued.
fn read_authority(path: &Path) -> Result<Arc<WebPkiServerVerifier>, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path, TlsFile::Ca)? {
        roots
            .add(certificate)
            .map_err(|e| file_error(TlsFile::Ca, path, e.to_string()))?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| file_error(TlsFile::Ca, path, e.to_string()))
}

/// The PEM certificates of a file: at least one.
fn read_certificates(
    path: &Path,
    file: TlsFile,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read(path, file)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(file, path, format!("not PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(file_error(file, path, "no certificate in it"));
    }
    Ok(certificates)
}

fn read(path: &Path, file: TlsFile) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| file_error(file, path, e.to_string()))
}
