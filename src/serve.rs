//! Serving a router on a listener with the limits `axum::serve` lacks
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
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
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

/// Serves `app` on `listener` until `shutdown` completes; then stops
/// accepting, lets in-flight requests finish (idle keep-alive connections
/// close at once) and returns after at most `limits.shutdown_grace`.
/// Handlers can extract `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) + 8192);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let remote_slots = Arc::new(tokio::sync::Semaphore::new(limits.max_remote_connections));
    let mut shutdown = std::pin::pin!(shutdown);

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
            accepted = listener.accept() => match accepted {
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
                    app.oneshot(req.map(axum::body::Body::new))
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
    drop(listener);
    let open = graceful.count();
    tokio::select! {
        () = graceful.shutdown() => tracing::debug!(connections = open, "drained"),
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace = ?limits.shutdown_grace, "grace period over; cutting remaining connections");
        }
    }
    Ok(())
}

/// Whether `ip` is a loopback peer: the code in this container.
pub fn is_loopback_peer(ip: IpAddr) -> bool {
    ip.is_loopback()
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
        for local in ["127.0.0.1", "127.1.2.3", "::1"] {
            assert!(admit(local.parse().unwrap(), &slots).unwrap().is_none());
        }
        drop(a);
        assert!(admit(remote, &slots).unwrap().is_some());
    }
}
