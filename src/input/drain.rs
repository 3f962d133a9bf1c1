//! The shutdown signal inputs receive: a drain window, not a hard stop.
//!
//! Apps flush their last lines while an ECS task stops, so after SIGTERM inputs keep
//! reading open connections and accepting new ones for `runtime.drain_inputs` (default half
//! of `shutdown_grace`). The window ends early once every client has closed; then inputs
//! stop, and outputs flush in what remains of the grace period.
//!
//! Inputs register each open client ([`InputShutdown::client`]) so the router knows when
//! none is left. HTTP requests are short and answered in full before the listener stops
//! (graceful shutdown), so the HTTP input registers nothing and keeps accepting until
//! [`InputShutdown::stopped`].

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Cloned into every input. Created by the topology, which calls
/// [`InputShutdown::begin_drain`] on SIGTERM and [`InputShutdown::stop`] when the window is
/// over (or every client has closed).
#[derive(Clone, Debug)]
pub struct InputShutdown {
    draining: CancellationToken,
    stop: CancellationToken,
    /// Open clients across all inputs.
    clients: Arc<watch::Sender<usize>>,
}

impl Default for InputShutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl InputShutdown {
    pub(crate) fn new() -> Self {
        InputShutdown {
            draining: CancellationToken::new(),
            stop: CancellationToken::new(),
            clients: Arc::new(watch::Sender::new(0)),
        }
    }

    /// SIGTERM: the drain window starts. Inputs keep serving.
    pub(crate) fn begin_drain(&self) {
        self.draining.cancel();
    }

    /// The window is over: inputs stop accepting, close their connections once the request
    /// in progress is handled, and their tasks end.
    pub(crate) fn stop(&self) {
        self.draining.cancel();
        self.stop.cancel();
    }

    /// Resolves once the drain window started.
    pub(crate) async fn draining(&self) {
        self.draining.cancelled().await
    }

    #[cfg(test)]
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves once inputs must stop.
    pub(crate) async fn stopped(&self) {
        self.stop.cancelled().await
    }

    /// The token cancelled when inputs must stop, for servers that take a token.
    pub(crate) fn stop_token(&self) -> tokio_util::sync::CancellationToken {
        self.stop.clone()
    }

    #[cfg(test)]
    pub(crate) fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Registers one open client until the returned guard is dropped.
    pub(crate) fn client(&self) -> ClientGuard {
        self.clients.send_modify(|n| *n += 1);
        ClientGuard {
            clients: self.clients.clone(),
        }
    }

    /// Open clients right now.
    pub(crate) fn open_clients(&self) -> usize {
        *self.clients.borrow()
    }

    /// Resolves when no client is open (at once if none is).
    pub(crate) async fn all_clients_closed(&self) {
        let mut rx = self.clients.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One open client of an input; see [`InputShutdown::client`].
#[derive(Debug)]
pub(crate) struct ClientGuard {
    clients: Arc<watch::Sender<usize>>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.clients.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn all_clients_closed_waits_for_the_last_guard() {
        let s = InputShutdown::new();
        s.all_clients_closed().await;
        let a = s.client();
        let b = s.client();
        assert_eq!(s.open_clients(), 2);
        drop(a);
        let waiting = tokio::time::timeout(Duration::from_millis(50), s.all_clients_closed());
        assert!(waiting.await.is_err(), "one client is still open");
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), s.all_clients_closed())
            .await
            .expect("resolves once the last client closed");
    }

    #[tokio::test]
    async fn stop_implies_draining() {
        let s = InputShutdown::new();
        assert!(!s.is_draining());
        s.stop();
        assert!(s.is_draining() && s.is_stopped());
        s.draining().await;
        s.stopped().await;
    }
}
