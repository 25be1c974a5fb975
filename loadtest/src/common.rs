//! The options every scenario shares (targets, credentials, payload, bounds, measurement and output),
//! and their resolution into a [`Target`] the scenarios connect to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::error::{Error, Result};
use crate::pusher::signing::Credentials;

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Server base URL, `http://host:port` (repeatable: connections are spread round-robin over them).
    #[arg(
        long = "target",
        default_value = "http://127.0.0.1:6001",
        env = "LOADTEST_TARGET",
        value_delimiter = ','
    )]
    pub targets: Vec<String>,
    /// HTTP API base URL when it differs from the WebSocket one (repeatable; default: the targets).
    #[arg(long = "api-target")]
    pub api_targets: Vec<String>,
    /// App id (HTTP API paths).
    #[arg(long, default_value = "1", env = "LOADTEST_APP_ID")]
    pub app_id: String,
    /// App key (WebSocket URL, signatures).
    #[arg(long, default_value = "chorus-dev-key", env = "LOADTEST_APP_KEY")]
    pub key: String,
    /// App secret (signs API requests and private/presence subscriptions).
    #[arg(long, default_value = "chorus-dev-secret", env = "LOADTEST_APP_SECRET")]
    pub secret: String,
    /// Size in bytes of each event's data.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// How long the measured phase lasts.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Server process to sample for CPU time and RSS (repeatable: figures are summed).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Bind client sockets to this many loopback source addresses 127.0.0.1, .2, ... round-robin
    /// (0: let the OS choose; default: one per 20000 connections). Only for IPv4 loopback targets.
    #[arg(long)]
    pub source_ips: Option<u8>,
    /// How many WebSocket handshakes may be in progress at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Give up on connecting and subscribing after this long.
    #[arg(long, default_value_t = 120)]
    pub setup_timeout_secs: u64,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an HTML report with SVG plots to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Do not draw the live progress line.
    #[arg(long)]
    pub no_progress: bool,
    /// Prefix of the channel names used (a run id is appended so runs do not see each other).
    #[arg(long, default_value = "lt")]
    pub channel_prefix: String,
}

/// One server node: where to connect and what to put in URLs.
#[derive(Debug, Clone)]
pub struct Node {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    /// `host:port` for WebSocket URLs.
    pub authority: String,
    pub addr: SocketAddr,
}

/// Everything needed to reach the system under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub ws_nodes: Vec<Node>,
    pub api_nodes: Vec<Node>,
    pub creds: Credentials,
    /// Local addresses to bind client sockets to, round-robin; empty: the OS chooses.
    pub source_ips: Vec<Ipv4Addr>,
}

impl Target {
    /// Resolves the target URLs; `connections` (the scenario's total) sizes the default source address set.
    pub async fn resolve(args: &CommonArgs, connections: u64) -> Result<Target> {
        if args.targets.is_empty() {
            return Err(Error::Args("at least one --target is needed".into()));
        }
        let mut ws_nodes = Vec::new();
        for url in &args.targets {
            ws_nodes.push(resolve_node(url).await?);
        }
        let api_nodes = if args.api_targets.is_empty() {
            ws_nodes.clone()
        } else {
            let mut nodes = Vec::new();
            for url in &args.api_targets {
                nodes.push(resolve_node(url).await?);
            }
            nodes
        };
        let all_loopback_v4 = ws_nodes
            .iter()
            .all(|n| matches!(n.addr.ip(), IpAddr::V4(ip) if ip.is_loopback()));
        let wanted = args
            .source_ips
            .unwrap_or_else(|| connections.div_ceil(20_000).clamp(1, 254) as u8);
        let source_ips = if all_loopback_v4 && wanted > 0 {
            (1..=wanted).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect()
        } else {
            Vec::new()
        };
        Ok(Target {
            ws_nodes,
            api_nodes,
            creds: Credentials {
                app_id: args.app_id.clone(),
                key: args.key.clone(),
                secret: args.secret.clone(),
            },
            source_ips,
        })
    }

    /// The node connection number `index` goes to (round-robin).
    pub fn ws_node(&self, index: usize) -> &Node {
        &self.ws_nodes[index % self.ws_nodes.len()]
    }

    /// The local address connection number `index` binds to, if any.
    pub fn source_ip(&self, index: usize) -> Option<Ipv4Addr> {
        (!self.source_ips.is_empty()).then(|| self.source_ips[index % self.source_ips.len()])
    }

    /// The WebSocket URL of the app on `node`.
    pub fn ws_url(&self, node: &Node) -> String {
        format!(
            "ws://{}/app/{}?protocol=7&client=js&version=8.4.0",
            node.authority, self.creds.key
        )
    }
}

impl CommonArgs {
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.duration_secs)
    }

    pub fn setup_timeout(&self) -> Duration {
        Duration::from_secs(self.setup_timeout_secs)
    }

    /// The command-line form of these options, for worker processes and `compare`.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for t in &self.targets {
            a.extend(["--target".into(), t.clone()]);
        }
        for t in &self.api_targets {
            a.extend(["--api-target".into(), t.clone()]);
        }
        a.extend([
            "--app-id".into(),
            self.app_id.clone(),
            "--key".into(),
            self.key.clone(),
            "--secret".into(),
            self.secret.clone(),
            "--payload-bytes".into(),
            self.payload_bytes.to_string(),
            "--duration-secs".into(),
            self.duration_secs.to_string(),
            "--connect-concurrency".into(),
            self.connect_concurrency.to_string(),
            "--setup-timeout-secs".into(),
            self.setup_timeout_secs.to_string(),
            "--channel-prefix".into(),
            self.channel_prefix.clone(),
        ]);
        if let Some(n) = self.source_ips {
            a.extend(["--source-ips".into(), n.to_string()]);
        }
        a
    }

    /// A run id that keeps channel names of different runs apart.
    pub fn channel_base(&self) -> String {
        format!(
            "{}-{}",
            self.channel_prefix,
            crate::payload::now_us() % 1_000_000_000
        )
    }
}

/// Parses `http://host:port` (or `ws://`) and resolves it to one socket address.
pub async fn resolve_node(url: &str) -> Result<Node> {
    let bad = |reason: &str| Error::BadTarget {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .ok_or_else(|| bad("only http:// and ws:// are supported (no TLS)"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(bad("expected http://host:port with no path"));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = tokio::net::lookup_host(with_port.as_str())
        .await
        .map_err(|e| bad(&e.to_string()))?
        .next()
        .ok_or_else(|| bad("host has no address"))?;
    Ok(Node {
        base: format!("http://{with_port}"),
        authority: with_port,
        addr,
    })
}

#[cfg(test)]
impl Target {
    /// A target on one loopback port (an in-test fake server), no source address binding.
    pub async fn loopback(port: u16, creds: Credentials) -> Target {
        let node = resolve_node(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a loopback URL resolves");
        Target {
            ws_nodes: vec![node.clone()],
            api_nodes: vec![node],
            creds,
            source_ips: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spreads_source_addresses_round_robin() {
        let mut args = CommonArgs {
            targets: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            api_targets: vec![],
            app_id: "1".into(),
            key: "k".into(),
            secret: "s".into(),
            payload_bytes: 0,
            duration_secs: 1,
            server_pids: vec![],
            source_ips: None,
            connect_concurrency: 1,
            setup_timeout_secs: 1,
            json: None,
            report: None,
            no_progress: true,
            channel_prefix: "lt".into(),
        };
        // Default: one source address per 20000 connections.
        let t = Target::resolve(&args, 45_000).await.unwrap();
        assert_eq!(t.source_ips.len(), 3);
        assert_eq!(t.source_ip(0), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(t.source_ip(4), Some(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(t.ws_node(3).addr.port(), 2);
        assert_eq!(
            t.ws_url(t.ws_node(0)),
            "ws://127.0.0.1:1/app/k?protocol=7&client=js&version=8.4.0"
        );
        args.source_ips = Some(0);
        let t = Target::resolve(&args, 45_000).await.unwrap();
        assert_eq!(t.source_ip(0), None);
        // The command-line form parses back to the same options.
        let mut argv = vec!["x".to_owned()];
        argv.extend(args.to_args());
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            c: CommonArgs,
        }
        let back = <P as clap::Parser>::parse_from(argv).c;
        assert_eq!(back.targets, args.targets);
        assert_eq!(back.source_ips, Some(0));
        assert_eq!(back.secret, "s");
    }

    #[tokio::test]
    async fn resolves_loopback_urls() {
        let n = resolve_node("http://127.0.0.1:6001/").await.unwrap();
        assert_eq!(n.base, "http://127.0.0.1:6001");
        assert_eq!(n.addr, "127.0.0.1:6001".parse().unwrap());
        let n = resolve_node("ws://127.0.0.2").await.unwrap();
        assert_eq!(n.addr, "127.0.0.2:80".parse().unwrap());
        assert!(resolve_node("https://127.0.0.1:1").await.is_err());
        assert!(resolve_node("http://127.0.0.1:1/x").await.is_err());
    }
}
