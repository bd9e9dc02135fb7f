//! Binding the configured addresses, and serving a router on all of their
//! listeners with the limits `axum::serve` lacks
//! (DESIGN §10): a header-read timeout (a slowloris client is cut off, and
//! idle keep-alive connections too, since hyper runs the same timer while a
//! connection waits for its next request), a header-size cap (431), a cap on
//! open connections with a smaller budget inside it for peers that are not
//! loopback, and a graceful shutdown that drains in-flight requests for a
//! bounded grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tower::ServiceExt as _;

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time allowed for a request's headers to arrive, and for an idle
    /// keep-alive connection to start its next request.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers); above it → 431.
    pub max_header_bytes: usize,
    /// Most connections open at once; further clients wait in the backlog.
    pub max_connections: usize,
    /// Most connections open at once from peers that are not loopback
    /// (counted within `max_connections`); beyond it they are closed at
    /// once, so they can never take the slots of the workload's own calls.
    pub max_remote_connections: usize,
    /// Time allowed for a token request's body to arrive once its head has
    /// (408 and the connection closed after it).
    pub body_read_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
            max_remote_connections: 16,
            body_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// An address of `server.listen` that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Binds every address of `addrs`. When the list is the built-in default
/// (`is_default`), an IPv6 address this machine cannot bind — no IPv6, no
/// `::1` — is skipped with a warning, as long as another address is bound;
/// an address in use or forbidden is still an error (another process on
/// `[::1]:8200` would answer the clients that resolve `localhost` to it).
/// Any address configured explicitly must bind.
pub async fn bind_all(
    addrs: &[SocketAddr],
    is_default: bool,
) -> Result<Vec<tokio::net::TcpListener>, BindError> {
    let mut listeners = Vec::with_capacity(addrs.len());
    let mut skipped = None;
    for &addr in addrs {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => listeners.push(l),
            Err(source) if is_default && addr.is_ipv6() && !is_conflict(&source) => {
                tracing::warn!(listen = %addr, error = %source, "IPv6 unavailable; not listening on this default address");
                skipped = Some(BindError { addr, source });
            }
            Err(source) => return Err(BindError { addr, source }),
        }
    }
    match skipped {
        Some(e) if listeners.is_empty() => Err(e),
        _ => Ok(listeners),
    }
}

/// An error that means something else holds the address, not that the
/// machine lacks the address family.
fn is_conflict(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
    )
}

/// Serves `app` (a router, or any service like one) on every listener
/// until `shutdown` completes; then stops accepting, lets in-flight
/// requests finish (idle keep-alive connections close at once) and returns
/// after at most `limits.shutdown_grace`. Handlers can extract
/// `ConnectInfo<SocketAddr>`. The connection limits are shared by all
/// listeners.
pub async fn serve<S>(
    listeners: Vec<tokio::net::TcpListener>,
    app: S,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: tower::Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) + 8192);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let remote_slots = Arc::new(tokio::sync::Semaphore::new(limits.max_remote_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut next_listener = 0;

    loop {
        // At the cap, stop accepting: new clients wait in the kernel backlog
        // instead of each costing a task and buffers.
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = accept_any(&listeners, &mut next_listener) => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(remote_permit) = admit(peer.ip(), &remote_slots) else {
            // Closing at once (rather than waiting for a remote slot) keeps
            // the accept loop, and so loopback callers, moving.
            tracing::debug!(%peer, "remote connection budget exhausted; connection closed");
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let app = app.clone();
            async move {
                Ok::<_, Infallible>(
                    app.oneshot(req.map(Body::new))
                        .await
                        .unwrap_or_else(|e| match e {}),
                )
            }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(remote_permit);
            drop(permit);
        });
    }
    drop(listeners);
    let open = graceful.count();
    tokio::select! {
        () = graceful.shutdown() => tracing::debug!(connections = open, "drained"),
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace = ?limits.shutdown_grace, "grace period over; cutting remaining connections");
        }
    }
    Ok(())
}

/// The next connection on any of `listeners`, taking them in turn so that
/// none starves the others.
async fn accept_any(
    listeners: &[tokio::net::TcpListener],
    next: &mut usize,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    std::future::poll_fn(|cx| {
        let n = listeners.len();
        for i in 0..n {
            let at = (*next + i) % n;
            if let Poll::Ready(accepted) = listeners[at].poll_accept(cx) {
                *next = at + 1;
                return Poll::Ready(accepted);
            }
        }
        Poll::Pending
    })
    .await
}

/// Whether `ip` is a loopback peer: the code in this container. An
/// IPv4-mapped loopback address (`::ffff:127.0.0.1`, what an IPv4 client
/// looks like to a socket bound to `[::]`) is one.
pub fn is_loopback_peer(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// A loopback peer needs no remote slot (`Ok(None)`); another peer takes
/// one (`Ok(Some)`), or is refused when none is left.
fn admit(
    peer: IpAddr,
    remote_slots: &Arc<tokio::sync::Semaphore>,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, tokio::sync::TryAcquireError> {
    if is_loopback_peer(peer) {
        return Ok(None);
    }
    Arc::clone(remote_slots).try_acquire_owned().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_peers_share_their_own_budget_and_loopback_peers_need_none() {
        let slots = Arc::new(tokio::sync::Semaphore::new(2));
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let a = admit(remote, &slots).unwrap();
        let _b = admit(remote, &slots).unwrap();
        assert!(admit(remote, &slots).is_err(), "beyond the budget");
        for local in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(admit(local.parse().unwrap(), &slots).unwrap().is_none());
        }
        drop(a);
        assert!(admit(remote, &slots).unwrap().is_some());
    }

    /// Issue #11, item 11: in the default list an IPv6 address the machine
    /// cannot bind is skipped; configured explicitly, it is an error.
    #[tokio::test]
    async fn an_unbindable_ipv6_address_is_skipped_only_in_the_default_list() {
        // 2001:db8::/32 is for documentation: never assigned to this machine.
        let addrs: [SocketAddr; 2] = [
            "127.0.0.1:0".parse().unwrap(),
            "[2001:db8::1]:0".parse().unwrap(),
        ];
        let bound = bind_all(&addrs, true).await.unwrap();
        assert_eq!(bound.len(), 1);
        assert!(bound[0].local_addr().unwrap().ip().is_loopback());
        let e = bind_all(&addrs, false).await.unwrap_err();
        assert_eq!(e.addr, addrs[1]);
        // Nothing bound at all is an error even in the default list.
        assert!(bind_all(&addrs[1..], true).await.is_err());
        // An address in use is a conflict, never skipped.
        let taken = std::net::TcpListener::bind("[::1]:0");
        if let Ok(taken) = taken {
            let addrs = ["127.0.0.1:0".parse().unwrap(), taken.local_addr().unwrap()];
            assert!(bind_all(&addrs, true).await.is_err());
        }
    }
}
