//! Accepting connections without letting any peer starve the others (issue 14, D3 and D8).
//!
//! - Every connection is accepted at once: the accept loop never waits for a handshake slot, so
//!   silent sockets cannot fill the kernel's backlog in front of real clients.
//! - A connection takes a handshake slot only once its first byte (the ClientHello) has arrived,
//!   within `first_byte_timeout`; a peer may hold at most `max_handshakes_per_peer` handshakes.
//! - Connections are capped per listener and per peer address; a refusal is logged (at most once
//!   a second per listener, with the count since the last line).
//! - After TLS, a connection that sends no HTTP/2 preface within `preface_timeout`, or on which
//!   nothing is read or written for `idle_timeout`, is closed.
//! - A connection whose peer does not read what it is sent, so that a write makes no progress
//!   for `write_timeout`, is closed (issue 30, N3: slow readers of a large `GET /crl`), and what
//!   was queued for it is freed. Writes are vectored, so a shared response body (the CRL) is
//!   queued by reference, never copied per connection; rustls buffers at most 64 KiB of it.
//! - The admin listener on loopback, in plain text, is guarded the same way ([`Plain`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

use crate::adapters::config::ConnectionConfig;

/// The accept queue asked of the kernel (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener with a deep accept queue.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Connection counts of one listener.
pub(crate) struct ConnectionLimits {
    settings: ConnectionConfig,
    handshakes: Arc<Semaphore>,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Per peer address: (open connections, handshakes in progress).
    peers: HashMap<IpAddr, (usize, usize)>,
    /// Refusals not yet logged, and when the last line was written.
    refused_since_log: u64,
    last_log: Option<Instant>,
}

/// Why a connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Total,
    PerPeer,
    HandshakesPerPeer,
}

impl ConnectionLimits {
    pub fn new(settings: ConnectionConfig, max_concurrent_handshakes: usize) -> Arc<Self> {
        Arc::new(Self {
            settings,
            handshakes: Arc::new(Semaphore::new(max_concurrent_handshakes)),
            counts: Mutex::default(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        match self.counts.lock() {
            Ok(counts) => counts,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes a connection slot for `peer`, or says which cap refuses it.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let mut counts = self.counts();
        let total = counts.total;
        let entry = counts.peers.entry(peer).or_default();
        let refusal = if total >= self.settings.max_total {
            Some(Refusal::Total)
        } else if entry.0 >= self.settings.max_per_peer {
            Some(Refusal::PerPeer)
        } else if entry.1 >= self.settings.max_handshakes_per_peer {
            Some(Refusal::HandshakesPerPeer)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            if entry.0 == 0 {
                counts.peers.remove(&peer);
            }
            counts.refused_since_log += 1;
            let now = Instant::now();
            let due = counts
                .last_log
                .is_none_or(|last| now.duration_since(last).as_secs() >= 1);
            if due {
                let refused = std::mem::take(&mut counts.refused_since_log);
                counts.last_log = Some(now);
                let open = counts.total;
                drop(counts);
                tracing::warn!(
                    %peer,
                    limit = refusal.name(),
                    refused,
                    open,
                    "connection limit reached: closing new connections"
                );
            }
            return Err(refusal);
        }
        entry.0 += 1;
        entry.1 += 1;
        counts.total += 1;
        Ok(ConnectionSlot {
            limits: self.clone(),
            peer,
            handshaking: true,
        })
    }
}

impl Refusal {
    fn name(self) -> &'static str {
        match self {
            Self::Total => "connections.max_total",
            Self::PerPeer => "connections.max_per_peer",
            Self::HandshakesPerPeer => "connections.max_handshakes_per_peer",
        }
    }
}

/// One open connection's place in the counts, given back when dropped.
pub(crate) struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    peer: IpAddr,
    handshaking: bool,
}

impl ConnectionSlot {
    fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            if let Some(entry) = self.limits.counts().peers.get_mut(&self.peer) {
                entry.1 = entry.1.saturating_sub(1);
            }
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.limits.counts();
        counts.total = counts.total.saturating_sub(1);
        let remove = match counts.peers.get_mut(&self.peer) {
            Some(entry) => {
                entry.0 = entry.0.saturating_sub(1);
                if self.handshaking {
                    entry.1 = entry.1.saturating_sub(1);
                }
                entry.0 == 0
            }
            None => false,
        };
        if remove {
            counts.peers.remove(&self.peer);
        }
    }
}

/// How a listener turns an accepted TCP connection into the stream it serves: TLS
/// ([`TlsAcceptor`]) or plain text on loopback ([`Plain`]).
pub(crate) trait Handshake: Clone + Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static;

    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// What rustls buffers of a connection's unsent TLS data (its default is 64 KiB): a peer that
/// reads nothing holds at most this much of an answer here, beside what the kernel holds.
const TLS_SEND_BUFFER: usize = 16 * 1024;

impl Handshake for TlsAcceptor {
    type Stream = TlsStream<TcpStream>;

    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Stream>> + Send {
        let accept = self.accept(tcp);
        async move {
            let mut stream = accept.await?;
            stream.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
            Ok(stream)
        }
    }
}

/// No handshake: the plain-text admin listener on loopback.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plain;

impl Handshake for Plain {
    type Stream = TcpStream;

    fn handshake(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Stream>> + Send {
        std::future::ready(Ok(tcp))
    }
}

/// Accepts TCP connections and completes handshakes concurrently, handing finished
/// connections to the HTTP server. Never waits for anything but `accept` itself.
pub(crate) async fn accept_loop<H: Handshake>(
    listener: TcpListener,
    acceptor: H,
    connections: mpsc::Sender<Result<GuardedStream<H::Stream>, io::Error>>,
    limits: Arc<ConnectionLimits>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stopped| *stopped) => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = limits.admit(peer.ip()) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(handshake(
            tcp,
            peer,
            slot,
            acceptor.clone(),
            limits.clone(),
            connections.clone(),
        ));
    }
}

async fn handshake<H: Handshake>(
    tcp: TcpStream,
    peer: SocketAddr,
    mut slot: ConnectionSlot,
    acceptor: H,
    limits: Arc<ConnectionLimits>,
    connections: mpsc::Sender<Result<GuardedStream<H::Stream>, io::Error>>,
) {
    let settings = limits.settings;
    // The ClientHello must start arriving soon; until it does, no handshake slot is held.
    let mut first = [0u8; 1];
    match tokio::time::timeout(settings.first_byte_timeout, tcp.peek(&mut first)).await {
        Ok(Ok(0)) => return,
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "connection failed before its first byte");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no first byte in time: connection closed");
            return;
        }
    }
    let handshake = async {
        let _permit = limits.handshakes.clone().acquire_owned().await;
        acceptor.handshake(tcp).await
    };
    let stream = match tokio::time::timeout(settings.handshake_timeout, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    slot.handshake_done();
    let guarded = GuardedStream {
        inner: stream,
        _slot: slot,
        deadline: Box::pin(tokio::time::sleep(settings.preface_timeout)),
        last_activity: None,
        idle_timeout: settings.idle_timeout,
        write_deadline: Box::pin(tokio::time::sleep(settings.write_timeout)),
        write_stalled: false,
        write_timeout: settings.write_timeout,
    };
    let _ = connections.send(Ok(guarded)).await;
}

/// A connection that holds its slot in the counts and closes itself when the client sends
/// no HTTP/2 preface in time, when nothing moves on it for the idle timeout, or when a write
/// makes no progress for the write timeout.
pub(crate) struct GuardedStream<S = TlsStream<TcpStream>> {
    inner: S,
    _slot: ConnectionSlot,
    /// The preface deadline until the first byte is read, then the idle deadline (moved forward
    /// lazily: only when it fires is `last_activity` consulted).
    deadline: Pin<Box<Sleep>>,
    /// When a byte was last read or written; None until the first read.
    last_activity: Option<Instant>,
    idle_timeout: std::time::Duration,
    /// Armed when a write returns Pending; disarmed when one makes progress.
    write_deadline: Pin<Box<Sleep>>,
    write_stalled: bool,
    write_timeout: std::time::Duration,
}

impl<S> GuardedStream<S> {
    fn touch(&mut self) {
        self.last_activity = Some(Instant::now());
    }

    /// Ready(error) once the connection is overdue; Pending (with the timer armed) otherwise.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let Some(last) = self.last_activity else {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface in time",
                ));
            };
            let due = last + self.idle_timeout;
            if due <= Instant::now() {
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "connection idle"));
            }
            self.deadline
                .as_mut()
                .reset(tokio::time::Instant::from_std(due));
        }
    }

    /// After a write: progress disarms the write deadline; Pending arms it (once per stall) and
    /// turns into an error when it has passed.
    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match written {
            Poll::Pending => {
                if !std::mem::replace(&mut self.write_stalled, true) {
                    let due = tokio::time::Instant::now() + self.write_timeout;
                    self.write_deadline.as_mut().reset(due);
                }
                match self.write_deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer reads nothing: write timed out",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.write_stalled = false;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => match this.poll_deadline(cx) {
                Poll::Ready(error) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) && this.last_activity.is_some() {
            this.touch();
        }
        this.after_write(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) && this.last_activity.is_some() {
            this.touch();
        }
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        this.after_write(cx, flushed)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let shut = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.after_write(cx, shut)
    }
}

impl<S: Connected> Connected for GuardedStream<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
