//! An idle timeout on a proxied response body (issue #11 item 10d): an
//! upstream that stops sending in the middle of a body would otherwise hold
//! the client's connection, and a connection slot, forever.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The upstream sent nothing for the idle timeout in the middle of a body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing for {0:?} in the middle of a response body")]
pub struct BodyIdle(pub Duration);

/// `inner`, failing with [`BodyIdle`] when no frame arrives for `idle`
/// while it is being waited for. The failure makes hyper cut the client's
/// connection, so the client sees a truncated body, never a complete one.
#[derive(Debug)]
pub(crate) struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    /// Made at the first wait: a body whose frames are always there when
    /// asked for (most small responses) never touches the timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer runs: only while the body is being waited for, so
    /// a client that reads slowly is not counted against the upstream.
    waiting: bool,
}

impl<B> IdleTimeout<B> {
    pub(crate) fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: None,
            waiting: false,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let idle = this.idle;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if !this.waiting {
            timer.as_mut().reset(Instant::now() + idle);
            this.waiting = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::warn!(idle = ?this.idle, "upstream body stalled; cutting the client connection");
                Poll::Ready(Some(Err(Box::new(BodyIdle(this.idle)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next_frame(
        body: &mut IdleTimeout<axum::body::Body>,
    ) -> Option<Result<Frame<axum::body::Bytes>, axum::BoxError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_and_one_that_flows_does_not() {
        let idle = Duration::from_millis(400);
        let (tx, rx) = tokio::sync::mpsc::channel::<&'static str>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|chunk| (Ok::<_, std::io::Error>(chunk), rx))
        });
        let mut body = IdleTimeout::new(axum::body::Body::from_stream(stream), idle);
        tx.send("a").await.unwrap();
        let frame = next_frame(&mut body).await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");
        // Silence shorter than the timeout, then data: still fine.
        let sender = tokio::spawn(async move {
            tokio::time::sleep(idle / 2).await;
            tx.send("b").await.unwrap();
            tx
        });
        assert!(next_frame(&mut body).await.unwrap().is_ok());
        let _tx = sender.await.unwrap();
        // Then nothing: once the timeout has passed, the body fails.
        let started = Instant::now();
        let err = next_frame(&mut body).await.unwrap().unwrap_err();
        assert!(err.is::<BodyIdle>(), "{err}");
        assert!(started.elapsed() >= idle);
    }
}
