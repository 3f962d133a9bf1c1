//! Deferred acknowledgements: a token travels with records from the input to the buffers,
//! and the input acknowledges the client (forward `ack`) only once every token of a request
//! has been released.
//!
//! [`Ingest::ingest`](super::Ingest::ingest) resolving means "the records were taken"
//! (back-pressure is over). With plain routing that is also the moment they are buffered,
//! so the default [`Ingest::ingest_acked`](super::Ingest::ingest_acked) releases the token
//! right then. A stage that holds records back (a multiline or Docker-partial processor
//! waiting for the next line) keeps a clone of the token with the held records and releases
//! it once they reached the buffers: the input keeps reading the connection meanwhile, and
//! still never acknowledges data that is not safe.
//!
//! Rules:
//! - Every clone must be settled: [`AckToken::release`] (buffered, or deliberately
//!   dropped by a policy the user chose and counted) or [`AckToken::fail`].
//! - A clone dropped without either fails the request with
//!   [`IngestError::ShuttingDown`]: the holder went away (a stopping processor) without the
//!   records reaching a buffer, and the client must resend them. Never an ack by accident.
//! - The first failure wins; the outcome is known once the last clone is gone.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::IngestError;

/// Creates the token of one request (or one batch of requests acknowledged together) and
/// the future that resolves with its outcome once every clone of the token is settled.
pub(crate) fn ack_pair() -> (AckToken, AckWait) {
    let (tx, rx) = oneshot::channel();
    let group = Arc::new(Group {
        failure: Mutex::new(None),
        tx: Mutex::new(Some(tx)),
    });
    (
        AckToken {
            group,
            settled: false,
        },
        AckWait { rx },
    )
}

/// Shared state of one request's tokens. Sends the outcome when the last token is gone.
struct Group {
    failure: Mutex<Option<IngestError>>,
    tx: Mutex<Option<oneshot::Sender<Result<(), IngestError>>>>,
}

impl Group {
    fn fail(&self, e: IngestError) {
        // A poisoned lock only means another holder panicked; the value is still usable.
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert(e);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let failure = self
            .failure
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let tx = self.tx.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            // The input may have stopped waiting (connection closed): nothing to tell.
            let _ = tx.send(failure.map_or(Ok(()), Err));
        }
    }
}

/// One share of a request's acknowledgement. Travels with (some of) the request's records;
/// see the module documentation for the rules.
#[must_use = "an AckToken must be released or failed; dropping it fails the request"]
pub struct AckToken {
    group: Arc<Group>,
    settled: bool,
}

impl AckToken {
    /// Another token of the same request, for records that go separate ways. The request
    /// is acknowledged only once both are released. Processors that hold records keep a
    /// share with them (src/process).
    pub(crate) fn share(&self) -> AckToken {
        AckToken {
            group: self.group.clone(),
            settled: false,
        }
    }

    /// This share of the records is safe (in every target buffer), or was dropped by a
    /// policy the user chose and counted.
    pub(crate) fn release(mut self) {
        self.settled = true;
    }

    /// This share of the records could not be taken: the request must not be acknowledged.
    pub(crate) fn fail(mut self, e: IngestError) {
        self.group.fail(e);
        self.settled = true;
    }

    /// Releases on `Ok`, fails with the error otherwise.
    pub(crate) fn settle(self, result: &Result<(), IngestError>) {
        match result {
            Ok(()) => self.release(),
            Err(e) => self.fail(e.clone()),
        }
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if !self.settled {
            self.group.fail(IngestError::ShuttingDown);
        }
    }
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckToken")
            .field("shares", &Arc::strong_count(&self.group))
            .finish()
    }
}

/// Resolves with the request's outcome once every [`AckToken`] of it is settled: `Ok` when
/// all were released, else the first failure.
#[derive(Debug)]
pub(crate) struct AckWait {
    rx: oneshot::Receiver<Result<(), IngestError>>,
}

impl AckWait {
    /// The outcome if it is already known, without waiting.
    #[cfg(test)]
    pub(crate) fn try_outcome(&mut self) -> Option<Result<(), IngestError>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(IngestError::ShuttingDown)),
        }
    }
}

impl Future for AckWait {
    type Output = Result<(), IngestError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The group always sends before its sender goes; a closed channel cannot be an ack.
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(IngestError::ShuttingDown)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn released_by_every_share() {
        let (token, mut wait) = ack_pair();
        let held = token.share();
        token.release();
        assert_eq!(wait.try_outcome(), None, "a share is still held");
        held.release();
        assert_eq!(wait.await, Ok(()));
    }

    #[tokio::test]
    async fn first_failure_wins() {
        let (token, wait) = ack_pair();
        let a = token.share();
        let b = token.share();
        a.fail(IngestError::Full);
        token.release();
        b.fail(IngestError::ShuttingDown);
        assert_eq!(wait.await, Err(IngestError::Full));
    }

    #[tokio::test]
    async fn a_dropped_share_is_never_an_ack() {
        let (token, wait) = ack_pair();
        let lost = token.share();
        token.release();
        drop(lost);
        assert_eq!(wait.await, Err(IngestError::ShuttingDown));
    }

    #[tokio::test]
    async fn settle_maps_results() {
        let (token, wait) = ack_pair();
        token.settle(&Err(IngestError::TooLarge {
            bytes: 2,
            limit: 1,
            output: "o".into(),
        }));
        assert!(matches!(wait.await, Err(IngestError::TooLarge { .. })));
        let (token, wait) = ack_pair();
        token.settle(&Ok(()));
        assert_eq!(wait.await, Ok(()));
    }
}
