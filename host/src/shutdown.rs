//! Graceful shutdown: stop taking work, let calls in flight finish, bounded by a grace period.
//!
//! On the signal: health turns NOT_SERVING at once (load balancers and propeller's resolver
//! stop sending), the listener closes (new connections are refused) and open connections get
//! GOAWAY; calls in flight run on. When the grace period ends, the calls still running are
//! ended with UNAVAILABLE ("agent-host is shutting down"), so every client gets a status.

use tokio::sync::watch;

/// Sends the stop signals.
#[derive(Debug)]
pub struct Shutdown {
    draining: watch::Sender<bool>,
    hard: watch::Sender<bool>,
}

/// Receives them (cheap to clone; one per call site).
#[derive(Debug, Clone)]
pub struct Drain {
    draining: watch::Receiver<bool>,
    hard: watch::Receiver<bool>,
}

impl Shutdown {
    /// A new pair.
    pub fn new() -> (Shutdown, Drain) {
        let (draining, draining_rx) = watch::channel(false);
        let (hard, hard_rx) = watch::channel(false);
        (Shutdown { draining, hard }, Drain { draining: draining_rx, hard: hard_rx })
    }

    /// Stop taking new work.
    pub fn start_draining(&self) {
        let _ = self.draining.send(true);
    }

    /// The grace period is over: end what still runs.
    pub fn stop_now(&self) {
        let _ = self.hard.send(true);
    }
}

impl Drain {
    /// Whether draining started.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Completes when draining starts (never, if the [`Shutdown`] is gone without firing).
    pub async fn draining(&self) {
        wait(self.draining.clone()).await
    }

    /// Completes when the grace period is over (never, if the [`Shutdown`] is gone).
    /// The future owns its own receiver: it may outlive this `Drain`.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        wait(self.hard.clone())
    }
}

async fn wait(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Default for Drain {
    /// A drain that never fires (for a service used without a server).
    fn default() -> Self {
        Shutdown::new().1
    }
}
