//! A watch stream's queue of outgoing responses, handed over in chunks.
//!
//! A stream's task answers an event batch with one response per watcher that
//! takes it; the connection's task encodes and writes them. Handed over one
//! by one, the connection's task woke at the first and, running beside the
//! stream's task on the other thread, wrote what had arrived so far: a batch
//! for a hundred watchers left as two DATA frames in two writes. A batch's
//! responses are now queued as one chunk ([`Outbox::send_all`]), so that gRPC
//! encodes them together into one frame and the connection writes them at
//! once; every other answer is a chunk of its own.
//!
//! The queue holds at most [`CHUNKS`] chunks of at most [`CHUNK`] responses:
//! a client that stops reading stops the stream's task there, which then
//! falls behind the event broadcast and catches up from storage.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tonic::Status;

use super::watch_out::WatchOut;

/// One answer of a watch stream, or the status that ends it.
pub type Item = Result<WatchOut, Status>;

/// Most responses in one chunk.
pub const CHUNK: usize = 256;
/// Most chunks queued for the connection.
const CHUNKS: usize = 32;

/// The stream task's end of the queue.
#[derive(Clone)]
pub struct Outbox(mpsc::Sender<Vec<Item>>);

/// The connection's end: the responses one by one, as gRPC takes them.
pub struct Responses {
    rx: mpsc::Receiver<Vec<Item>>,
    chunk: std::vec::IntoIter<Item>,
}

/// A queue between a stream's task and its connection.
pub fn outbox() -> (Outbox, Responses) {
    let (tx, rx) = mpsc::channel(CHUNKS);
    (
        Outbox(tx),
        Responses {
            rx,
            chunk: Vec::new().into_iter(),
        },
    )
}

impl Outbox {
    /// Queues one answer; false once the connection has gone.
    pub async fn send(&self, item: Item) -> bool {
        self.0.send(vec![item]).await.is_ok()
    }

    /// Queues `items` (at most [`CHUNK`] of them) as one chunk; false once the
    /// connection has gone. An empty list queues nothing.
    pub async fn send_all(&self, items: Vec<Item>) -> bool {
        debug_assert!(items.len() <= CHUNK);
        items.is_empty() || self.0.send(items).await.is_ok()
    }

    /// Resolves when the connection has gone.
    pub async fn closed(&self) {
        self.0.closed().await
    }
}

impl tokio_stream::Stream for Responses {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.chunk.next() {
                return Poll::Ready(Some(item));
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => this.chunk = chunk.into_iter(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::WatchResponse;
    use futures::StreamExt;
    use tokio_stream::Stream;

    fn answer(id: i64) -> Item {
        Ok(WatchOut::Message(WatchResponse {
            watch_id: id,
            ..Default::default()
        }))
    }

    fn id(item: Option<Item>) -> i64 {
        match item {
            Some(Ok(WatchOut::Message(r))) => r.watch_id,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_chunk_is_ready_whole_and_in_order() {
        let (tx, mut rx) = outbox();
        assert!(tx.send(answer(1)).await);
        assert!(tx.send_all((2..=4).map(answer).collect()).await);
        assert!(tx.send_all(Vec::new()).await);
        drop(tx);
        let mut got = Vec::new();
        while let Some(item) = rx.next().await {
            got.push(id(Some(item)));
        }
        assert_eq!(got, [1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn every_response_of_a_chunk_is_ready_without_waiting() {
        let (tx, mut rx) = outbox();
        assert!(tx.send_all((0..CHUNK as i64).map(answer).collect()).await);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for want in 0..CHUNK as i64 {
            match Pin::new(&mut rx).poll_next(&mut cx) {
                Poll::Ready(item) => assert_eq!(id(item), want),
                Poll::Pending => panic!("response {want} of the chunk was not ready"),
            }
        }
        assert!(Pin::new(&mut rx).poll_next(&mut cx).is_pending());
    }

    #[tokio::test]
    async fn the_queue_is_bounded_and_tells_when_the_connection_went() {
        let (tx, rx) = outbox();
        for _ in 0..CHUNKS {
            assert!(tx.send(answer(0)).await);
        }
        assert!(
            matches!(
                tx.0.try_send(vec![answer(0)]),
                Err(mpsc::error::TrySendError::Full(_))
            ),
            "a full queue took another chunk"
        );
        drop(rx);
        assert!(!tx.send(answer(0)).await);
        tx.closed().await;
    }
}
