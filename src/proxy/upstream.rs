//! The connections to the upstream: one origin, HTTP/1.1, kept alive and
//! reused, most recently used first.
//!
//! hyper's connection API with a pool of our own rather than a general
//! client: for a single origin the pool is a list, where hyper-util's
//! pooled client hashes the origin three times per request, and spawns a
//! task per request to hand the connection back (bench/PROFILE.md).
//!
//! A connection goes back to the pool only once its response body has been
//! read to the end; one whose body was dropped half-read is closed by hyper
//! (an HTTP/1.1 connection cannot be reused mid-message). An idle
//! connection the upstream closed is noticed when taken, and a request it
//! could not even start on is sent again on another one.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tower::ServiceExt as _;

/// How long an unused connection is kept.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// Most unused connections kept (more are closed).
const MAX_IDLE: usize = 64;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The pool of one upstream origin.
#[derive(Debug)]
pub(crate) struct Upstream {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`: what the connector connects to.
    origin: Uri,
    /// The `Host` header of every request.
    host: HeaderValue,
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Upstream {
    pub(crate) fn new(connector: HttpsConnector<HttpConnector>, origin: Uri) -> Option<Self> {
        let host = HeaderValue::from_str(origin.authority()?.as_str()).ok()?;
        Some(Self {
            connector,
            origin,
            host,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends `req` (origin-form URI) on an idle connection, or a new one.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<UpstreamBody>, Error> {
        req.headers_mut().insert(header::HOST, self.host.clone());
        loop {
            let (mut sender, reused) = match self.take() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            if let Err(e) = sender.ready().await {
                // An idle connection the upstream has closed meanwhile.
                if reused {
                    continue;
                }
                return Err(e.into());
            }
            match sender.try_send_request(req).await {
                Ok(res) => {
                    return Ok(res.map(|body| UpstreamBody {
                        body,
                        ended: false,
                        back: Some((sender, Arc::clone(self))),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Not a byte of it was sent: the connection died idle.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// The most recently used idle connection still open, if any.
    fn take(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.lock();
        let now = Instant::now();
        while let Some(i) = idle.pop() {
            if !i.sender.is_closed() && now.duration_since(i.since) < IDLE_FOR {
                return Some(i.sender);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        let now = Instant::now();
        // The oldest are at the front.
        let stale = idle
            .iter()
            .take_while(|i| now.duration_since(i.since) >= IDLE_FOR)
            .count();
        idle.drain(..stale);
        if idle.len() < MAX_IDLE {
            idle.push(Idle { sender, since: now });
        }
    }

    async fn connect(&self) -> Result<SendRequest<Body>, Error> {
        let io = self.connector.clone().oneshot(self.origin.clone()).await?;
        let (sender, conn) = http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // Every change to the list is one call: a poisoned lock holds a whole list.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A response body that hands its connection back to the pool once read to
/// the end.
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    body: Incoming,
    ended: bool,
    back: Option<(SendRequest<Body>, Arc<Upstream>)>,
}

impl hyper::body::Body for UpstreamBody {
    type Data = axum::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.ended = true,
            // A failed body leaves the connection unusable.
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some((sender, pool)) = self.back.take()
            && (self.ended || hyper::body::Body::is_end_stream(&self.body))
        {
            pool.put(sender);
        }
    }
}
