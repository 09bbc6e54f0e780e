//! The [`Transport`] on tonic's sockets: accepted connections (TLS handshakes off the accept loop, each
//! bounded in time) that carry the peer's verified identity into every request ([`PeerInfo`]), and the
//! connector every client channel dials through ([`Connector`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::codegen::http::Uri;
use tonic::transport::server::Connected;

pub use strata_trust::{Expect, Identity, Revocations, Role, TlsFiles, Transport};

/// How long a TLS handshake may take before the connection is dropped (a client that connects and says
/// nothing must not hold a slot).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS handshakes a server makes at once.
pub const MAX_PENDING_HANDSHAKES: usize = 256;

/// What a server knows about the peer of a connection; every request carries it in its extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The identity its client certificate proved (TLS with a certificate only).
    pub identity: Option<Identity>,
    /// Why a client certificate the CA signed proves no identity (it carries no `NAME.ROLE.id.strata`).
    pub unrecognised: Option<String>,
    /// The server's list of revoked identities, consulted on every request (a connection opened before a
    /// revocation is refused after it).
    pub revocations: Option<Revocations>,
}

/// An accepted connection.
pub struct Conn {
    io: Io<tokio_rustls::server::TlsStream<TcpStream>>,
    info: PeerInfo,
}

/// A socket, plain or TLS.
pub enum Io<T> {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<T>),
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Io<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Io<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

/// Connections accepted on `listener` under `transport`, with `TCP_NODELAY` set (tonic sets it only on
/// sockets it binds itself; without it, Nagle's algorithm and delayed ACKs add ~40 ms to small responses).
/// TLS handshakes run concurrently, each for at most [`HANDSHAKE_TIMEOUT`]; a failed one is logged and
/// dropped. Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    transport: Transport,
) -> impl futures::Stream<Item = io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Conn>>(64);
    // At most this many handshakes at once: a flood of connections that never finish theirs waits in the
    // kernel's backlog instead of holding a task and a descriptor each.
    let handshakes = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let Some(config) = transport.server_config() else {
                let conn = Conn {
                    io: Io::Plain(tcp),
                    info: PeerInfo {
                        remote: Some(remote),
                        tls: false,
                        identity: None,
                        unrecognised: None,
                        revocations: None,
                    },
                };
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            let revocations = transport.revocations().cloned();
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            tokio::spawn(async move {
                let _permit = permit;
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        let plain = e
                            .get_ref()
                            .and_then(|i| i.downcast_ref::<rustls::Error>())
                            .is_some_and(|r| {
                                matches!(
                                    r,
                                    rustls::Error::InvalidMessage(
                                        rustls::InvalidMessage::InvalidContentType
                                    )
                                )
                            });
                        if plain {
                            tracing::warn!(peer = %remote, "refused a connection: the client speaks plain HTTP/2 to this TLS server (give it --tls-dir)");
                        } else {
                            tracing::warn!(peer = %remote, error = %e, "refused a TLS connection");
                        }
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(peer = %remote, "TLS handshake timed out");
                        return;
                    }
                };
                let (identity, unrecognised) = match stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|leaf| Identity::from_certificate(leaf))
                {
                    None => (None, None),
                    Some(Ok(id)) => (Some(id), None),
                    Some(Err(e)) => {
                        tracing::warn!(peer = %remote, error = %e, "a client certificate without a Strata identity");
                        (None, Some(e.to_string()))
                    }
                };
                let conn = Conn {
                    io: Io::Tls(Box::new(stream)),
                    info: PeerInfo {
                        remote: Some(remote),
                        tls: true,
                        identity,
                        unrecognised,
                        revocations: revocations.clone(),
                    },
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A client connection.
pub type ClientConn = TokioIo<Io<tokio_rustls::client::TlsStream<TcpStream>>>;

/// Dials TCP (with `TCP_NODELAY`) and, under TLS, makes the handshake, accepting only a server whose
/// certificate proves the role `expect` names. The address in the URI only says where to connect: who
/// answers is decided by the certificate.
#[derive(Debug, Clone)]
pub struct Connector {
    transport: Transport,
    expect: Expect,
}

impl Connector {
    /// A connector under `transport` for servers that must be `expect`.
    pub fn new(transport: Transport, expect: Expect) -> Connector {
        Connector { transport, expect }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = ClientConn;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<ClientConn>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (transport, expect) = (self.transport.clone(), self.expect);
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(80);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let Some(config) = transport.client_config(expect) else {
                return Ok(TokioIo::new(Io::Plain(tcp)));
            };
            // The name is not checked (the verifier checks the certificate's identity) and SNI is off.
            let name = rustls::pki_types::ServerName::try_from("strata.invalid")
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("TLS with {host}:{port} (expecting {expect}): {e}"),
                    )
                })?;
            Ok(TokioIo::new(Io::Tls(Box::new(stream))))
        })
    }
}
