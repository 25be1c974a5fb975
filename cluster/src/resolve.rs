//! Names resolved without the C library: the release image is a static binary in an empty
//! filesystem, where `getaddrinfo` cannot load the NSS modules that read `/etc/hosts` and ask
//! DNS. Every name the cluster resolves (the hosts of a peer list or a members file, the DNS name
//! of a headless Service, the hosts of every connection its HTTP clients open) goes through
//! [`Names`] instead: hickory's resolver, which reads `/etc/resolv.conf` and `/etc/hosts` itself.
//!
//! A pod rescheduled elsewhere keeps its name and gets a new address. Answers are cached for at
//! most [`LONGEST_CACHE`], and a name that stops resolving makes the resolver read both files
//! again (at most once every [`REREAD_AFTER`]) before the lookup is tried once more.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use parking_lot::Mutex;

/// The longest an answer is kept.
pub const LONGEST_CACHE: Duration = Duration::from_secs(5);

/// The files are read again at most this often.
pub const REREAD_AFTER: Duration = Duration::from_secs(2);

/// A name the resolver could not turn into addresses.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {name}: {reason}")]
pub struct UnresolvedName {
    pub name: String,
    pub reason: String,
}

/// The process's resolver, built from the system's files when first used (inside a tokio
/// runtime, which its lookups need) and built again when a name stops resolving. Cheap to clone:
/// the clones share it.
#[derive(Clone, Default)]
pub struct Names {
    current: Arc<Mutex<Option<Current>>>,
}

struct Current {
    resolver: TokioResolver,
    read_at: Instant,
}

impl Names {
    /// The addresses of `name` (an IP address is its own answer).
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, UnresolvedName> {
        let first = lookup_with(&self.resolver(), name).await;
        match first {
            Ok(addresses) => Ok(addresses),
            Err(e) => match self.read_again() {
                Some(fresh) => lookup_with(&fresh, name).await,
                None => Err(e),
            },
        }
    }

    /// The socket addresses of `name` on `port`.
    pub async fn lookup_port(
        &self,
        name: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, UnresolvedName> {
        let addresses = self.lookup(name).await?;
        Ok(addresses
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    fn resolver(&self) -> TokioResolver {
        let mut current = self.current.lock();
        current
            .get_or_insert_with(|| Current {
                resolver: read_system_files(),
                read_at: Instant::now(),
            })
            .resolver
            .clone()
    }

    /// A resolver built from the files as they are now, unless they were read less than
    /// [`REREAD_AFTER`] ago.
    fn read_again(&self) -> Option<TokioResolver> {
        let mut current = self.current.lock();
        if current
            .as_ref()
            .is_some_and(|current| current.read_at.elapsed() < REREAD_AFTER)
        {
            return None;
        }
        tracing::debug!("a name did not resolve: reading /etc/resolv.conf and /etc/hosts again");
        let fresh = read_system_files();
        *current = Some(Current {
            resolver: fresh.clone(),
            read_at: Instant::now(),
        });
        Some(fresh)
    }
}

async fn lookup_with(resolver: &TokioResolver, name: &str) -> Result<Vec<IpAddr>, UnresolvedName> {
    let unresolved = |reason: String| UnresolvedName {
        name: name.to_owned(),
        reason,
    };
    let found = resolver
        .lookup_ip(name)
        .await
        .map_err(|e| unresolved(e.to_string()))?;
    let addresses: Vec<IpAddr> = found.iter().collect();
    if addresses.is_empty() {
        return Err(unresolved("no address records".to_owned()));
    }
    Ok(addresses)
}

/// A resolver from `/etc/resolv.conf` and `/etc/hosts`; from `/etc/hosts` alone when there is no
/// `resolv.conf` (a container without DNS).
fn read_system_files() -> TokioResolver {
    let from_files = TokioResolver::builder_tokio().map_err(|e| e.to_string());
    let built = from_files.and_then(|builder| configured(builder).map_err(|e| e.to_string()));
    built.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "no usable /etc/resolv.conf: resolving from /etc/hosts only");
        let hosts_only = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
            TokioRuntimeProvider::default(),
        );
        configured(hosts_only).expect("a resolver without name servers builds")
    })
}

/// The options every resolver of the process has: `/etc/hosts` first, IPv4 addresses first (IPv6
/// asked only for a name without any), answers kept at most [`LONGEST_CACHE`], misses at most
/// [`REREAD_AFTER`].
fn configured(
    mut builder: hickory_resolver::ResolverBuilder<TokioRuntimeProvider>,
) -> Result<TokioResolver, hickory_resolver::net::NetError> {
    let options = builder.options_mut();
    options.use_hosts_file = ResolveHosts::Always;
    options.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
    options.positive_max_ttl = Some(LONGEST_CACHE);
    options.negative_max_ttl = Some(REREAD_AFTER);
    builder.build()
}

/// reqwest resolves the host of every connection it opens through the same resolver.
impl reqwest::dns::Resolve for Names {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let names = self.clone();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let addresses = names.lookup(&name).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(addresses.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}
