//! `TokenStream`: the events of one request of the async [`Engine`](crate::service::Engine), a
//! `futures::Stream` of [`TokenEvent`]s (token id + text delta). The stream is bounded: when the
//! reader falls `stream_capacity` events behind, its request pauses (no compute, its KV cache
//! kept) and resumes when the reader takes an event; other requests are not held up. Dropping
//! the stream, or [`TokenStream::cancel`] / [`CancelHandle::cancel`], stops the request before
//! its next decode step and returns its KV cache pages.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use troupe_engine::detokenizer::Detokenizer;

use crate::batcher::{FinishReason, Inbox, StreamToken};
use crate::error::Result;

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEvent {
    /// Its id.
    pub token: u32,
    /// The text it adds (UTF-8 characters split over several tokens come whole, with the token
    /// that completes them; special tokens add nothing). Empty for a model without a
    /// tokenizer.json.
    pub text: String,
    /// The logits row it was chosen from (only when the request asked: `keep_logits`).
    pub logits: Option<Vec<f32>>,
    /// Set on the request's last event.
    pub finish: Option<FinishReason>,
}

/// Stops a request from anywhere (clone it into another task); the stream then ends.
#[derive(Clone)]
pub struct CancelHandle {
    cancelled: Arc<AtomicBool>,
    inbox: Arc<Inbox>,
}

impl CancelHandle {
    /// Stops the request before its next decode step; its stream ends (events not yet read are
    /// dropped).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.inbox.wake();
    }
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

/// The events of one request (see the module doc). Ends after the event whose `finish` is set,
/// after an `Err` item, or at once when cancelled.
pub struct TokenStream {
    rx: tokio::sync::mpsc::Receiver<Result<StreamToken>>,
    cancel: CancelHandle,
    detokenizer: Detokenizer,
}

impl TokenStream {
    /// A stream of `capacity` events (at least 1) and the sender the batcher fills.
    pub(crate) fn channel(
        capacity: usize,
        inbox: Arc<Inbox>,
        detokenizer: Detokenizer,
    ) -> (TokenStream, tokio::sync::mpsc::Sender<Result<StreamToken>>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let cancel = CancelHandle {
            cancelled: Arc::new(AtomicBool::new(false)),
            inbox,
        };
        (
            TokenStream {
                rx,
                cancel,
                detokenizer,
            },
            tx,
        )
    }

    pub(crate) fn cancelled_flag(&self) -> Arc<AtomicBool> {
        self.cancel.cancelled.clone()
    }

    /// Stops the request before its next decode step; the stream ends.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A handle that cancels this request from elsewhere.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    fn event(&mut self, t: StreamToken) -> Result<TokenEvent> {
        let mut text = self.detokenizer.push(t.token)?;
        if t.finish.is_some() {
            text.push_str(&self.detokenizer.flush()?);
        }
        Ok(TokenEvent {
            token: t.token,
            text,
            logits: t.logits,
            finish: t.finish,
        })
    }
}

impl Stream for TokenStream {
    type Item = Result<TokenEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.cancel.is_cancelled() {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(t))) => {
                // Room again: a request paused on this stream can go on.
                this.cancel.inbox.wake();
                Poll::Ready(Some(this.event(t)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        // Closed first, so the woken batcher sees it.
        self.rx.close();
        self.cancel.inbox.wake();
    }
}
