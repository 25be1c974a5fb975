//! Upgrade requests of the public port. actix-http hands every HTTP/1 request that asks for an
//! upgrade (`Upgrade: websocket`, or `CONNECT`) to [`Upgrades`], with the connection itself.
//! The request goes to the app as any other does (marked [`Upgrading`]). An answer that carries
//! a [`Handoff`] (the WebSocket endpoint took the handshake) is written, and the socket is taken
//! out of the HTTP/1 dispatcher, whose read and write buffers are dropped: the connection's
//! actor reads the client's frames from it and its outbox is written straight to it, so an idle
//! WebSocket holds no buffer of its own. Any other answer is written as the dispatcher writes
//! one, and the connection closed.

use std::future::poll_fn;
use std::pin::pin;

use actix_codec::{AsyncRead, AsyncWrite, Encoder, Framed};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::h1::{Codec, Message};
use actix_http::{ConnectionType, HttpMessage as _, Request, Response};
use actix_service::boxed::{BoxService, BoxServiceFactory};
use actix_service::{Service, ServiceFactory};
use bytes::BytesMut;
use futures_util::future::LocalBoxFuture;
use futures_util::SinkExt as _;

use crate::http::socket_writer::SocketWriter;
use crate::http::websocket::Handoff;

/// Marks a request that came as an upgrade, with its connection ready to be taken over.
pub struct Upgrading;

/// The public port's app as actix-http calls it: every answer, an error's too, is a response.
pub type AppFactory = BoxServiceFactory<(), Request, Response<BoxBody>, Response<BoxBody>, ()>;

type AppService = BoxService<Request, Response<BoxBody>, Response<BoxBody>>;

/// Makes an [`Upgrades`] for each worker, with an app of its own.
pub struct UpgradeFactory(pub AppFactory);

impl<T> ServiceFactory<(Request, Framed<T, Codec>)> for UpgradeFactory
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Response = ();
    type Error = actix_http::Error;
    type Config = ();
    type Service = Upgrades;
    type InitError = ();
    type Future = LocalBoxFuture<'static, Result<Upgrades, ()>>;

    fn new_service(&self, _: ()) -> Self::Future {
        let app = self.0.new_service(());
        Box::pin(async move { Ok(Upgrades { app: app.await? }) })
    }
}

/// Serves the upgrade requests of one worker's connections; see the module's doc.
pub struct Upgrades {
    app: AppService,
}

impl<T> Service<(Request, Framed<T, Codec>)> for Upgrades
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Response = ();
    type Error = actix_http::Error;
    type Future = LocalBoxFuture<'static, Result<(), actix_http::Error>>;

    actix_service::always_ready!();

    fn call(&self, (req, framed): (Request, Framed<T, Codec>)) -> Self::Future {
        req.extensions_mut().insert(Upgrading);
        let answered = self.app.call(req);
        Box::pin(async move {
            let mut response = answered
                .await
                .unwrap_or_else(|error_response| error_response);
            let handoff = response.extensions_mut().remove::<Handoff>();
            let (head, body) = response.into_parts();
            match handoff {
                Some(handoff) => take_over(head, handoff, framed).await,
                None => {
                    if let Err(e) = answer(head, body, framed).await {
                        tracing::debug!(error = %e, "an upgrade request's answer was not written");
                    }
                }
            }
            Ok(())
        })
    }
}

/// Writes the handshake's answer and serves the WebSocket on the bare socket until it ends.
async fn take_over<T>(head: Response<()>, mut handoff: Handoff, framed: Framed<T, Codec>)
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let mut parts = framed.into_parts();
    let mut encoded = BytesMut::new();
    let head = parts
        .codec
        .encode(Message::Item((head, BodySize::None)), &mut encoded);
    let (reader, writer) = tokio::io::split(parts.io);
    // Started whatever happens next, so that the connection's end gives its place back.
    handoff.start(reader, &parts.read_buf);
    drop(parts.read_buf);
    drop(parts.write_buf);
    if let Err(e) = head {
        tracing::warn!(error = %e, "the handshake's answer could not be encoded");
        handoff.outbox.discard();
        return;
    }
    SocketWriter::new(handoff.outbox, writer, encoded.freeze(), handoff.held).await;
}

/// Writes a plain answer to an upgrade request (any other endpoint's, or a refused handshake),
/// then closes the connection.
async fn answer<T>(
    mut head: Response<()>,
    body: BoxBody,
    mut framed: Framed<T, Codec>,
) -> Result<(), Box<dyn std::error::Error>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    head.head_mut().set_connection_type(ConnectionType::Close);
    framed.send(Message::Item((head, body.size()))).await?;
    let mut body = pin!(body);
    while let Some(chunk) = poll_fn(|cx| body.as_mut().poll_next(cx)).await {
        framed.send(Message::Chunk(Some(chunk?))).await?;
    }
    framed.send(Message::Chunk(None)).await?;
    framed.close().await?;
    Ok(())
}
