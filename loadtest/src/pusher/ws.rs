//! Opening a Pusher WebSocket connection (optionally from a chosen loopback source address) and the
//! request/response steps of its life: waiting for `connection_established`, subscribing.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::common::Target;
use crate::error::{Error, Result};
use crate::pusher::frame::{self, Frame};

pub type Ws = WebSocketStream<TcpStream>;

/// An open connection and the socket id the server gave it.
pub struct Connection {
    pub ws: Ws,
    pub socket_id: String,
}

/// Connects connection number `index` (which picks the node and the source address) and waits for
/// `pusher:connection_established`.
pub async fn connect(target: &Target, index: usize, timeout: Duration) -> Result<Connection> {
    let node = target.ws_node(index);
    let url = target.ws_url(node);
    let source = target.source_ip(index);
    tokio::time::timeout(timeout, async {
        let stream = tcp_connect(node.addr, source).await?;
        let (mut ws, _response) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await?;
        let first = next_frame(&mut ws).await?;
        let socket_id = first.socket_id()?;
        Ok(Connection { ws, socket_id })
    })
    .await
    .map_err(|_| Error::Timeout("connecting"))?
}

/// A small read buffer: tungstenite zero-fills the free part of it before every read, so the
/// default 128 KiB costs a 128 KiB memset per wakeup (and memory per idle connection).
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// A TCP connection to `addr`, bound to `source` first when given. `IP_BIND_ADDRESS_NO_PORT` leaves
/// the port choice to connect(), so each source address has the whole ephemeral range per server.
pub async fn tcp_connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let (Some(ip), true) = (source, addr.is_ipv4()) {
        set_bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::new(ip.into(), 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn set_bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd, a c_int option value and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The next Pusher frame, answering `pusher:ping` on the way; a close is an error.
pub async fn next_frame(ws: &mut Ws) -> Result<Frame> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if frame::classify(text.as_bytes()) == frame::Kind::Ping {
                    ws.send(Message::text(frame::pong())).await?;
                    continue;
                }
                return Frame::parse(&text);
            }
            Some(Ok(Message::Close(close))) => {
                return Err(Error::Closed {
                    code: close.map(|c| u16::from(c.code)),
                })
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(Error::Closed { code: None }),
        }
    }
}

/// Subscribes to `channel` and waits for `pusher_internal:subscription_succeeded`, which it returns.
/// Frames for other channels that arrive meanwhile are skipped.
pub async fn subscribe(
    ws: &mut Ws,
    channel: &str,
    auth: Option<&str>,
    channel_data: Option<&str>,
    timeout: Duration,
) -> Result<Frame> {
    ws.send(Message::text(frame::subscribe(channel, auth, channel_data)))
        .await?;
    tokio::time::timeout(timeout, async {
        loop {
            let f = next_frame(ws).await?;
            let same_channel = f.channel.as_deref() == Some(channel);
            match f.event.as_str() {
                "pusher_internal:subscription_succeeded" if same_channel => return Ok(f),
                "pusher:subscription_error" if same_channel => {
                    return Err(f.unexpected("subscription_succeeded"))
                }
                "pusher:error" => return Err(f.unexpected("subscription_succeeded")),
                _ => continue,
            }
        }
    })
    .await
    .map_err(|_| Error::Timeout("subscribing"))?
}

/// The server side of an in-test fake Pusher server: accepts one WebSocket connection and
/// sends `pusher:connection_established` with socket id `1.2`.
#[cfg(test)]
pub async fn accept_fake(listener: &tokio::net::TcpListener) -> WebSocketStream<TcpStream> {
    let (stream, _) = listener.accept().await.expect("a client connects");
    let mut ws = tokio_tungstenite::accept_async(stream)
        .await
        .expect("a WebSocket handshake");
    ws.send(Message::text(
        r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}"#,
    ))
    .await
    .expect("sending connection_established");
    ws
}

/// A loopback listener for an in-test fake server and a target (app `1`, key `k`, secret `s`)
/// pointing at it.
#[cfg(test)]
pub async fn fake_endpoint() -> (tokio::net::TcpListener, Target) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let port = listener.local_addr().expect("bound").port();
    let creds = crate::pusher::signing::Credentials {
        app_id: "1".into(),
        key: "k".into(),
        secret: "s".into(),
    };
    (listener, Target::loopback(port, creds).await)
}

/// An in-test fake server's history event: `offset` of epoch `e` on `channel`.
#[cfg(test)]
pub fn fake_history_event(channel: &str, offset: u64) -> String {
    format!(r#"{{"event":"lt","channel":"{channel}","data":"x","offset":{offset},"epoch":"e"}}"#)
}

/// An in-test fake server's `subscription_succeeded` of `channel` with `data` (a JSON object as text).
#[cfg(test)]
pub fn fake_succeeded(channel: &str, data: &str) -> String {
    let data = serde_json::to_string(data).expect("a string encodes");
    format!(
        r#"{{"event":"pusher_internal:subscription_succeeded","channel":"{channel}","data":{data}}}"#
    )
}
