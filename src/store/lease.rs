//! A pooled connection lent to one operation, and what happens to it when
//! its statement is given up on.
//!
//! A statement the service stops waiting for must end on the server too:
//! otherwise a write waiting on a lock is applied whenever the lock goes,
//! long after its caller was told it failed. A single cancel request is not
//! enough: PostgreSQL drops one that arrives while the backend is between
//! statements (reading the next message), so a cancel sent just as the
//! statement was being sent can be lost, and closing the connection does
//! not stop a backend that waits on a lock. So a statement given up on is
//! cancelled again and again until the connection answers a probe sent
//! behind it, and only then is the connection closed. Shutdown waits for
//! that ([`Lent::all_returned`]).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use deadpool_postgres::{Client, Object};
use tokio::sync::Notify;

use super::{cancel::Canceller, hot_rows::WritePermit};

/// How long a statement cancelled at its deadline is given to report how it
/// ended before its outcome is declared unknown (it is still cancelled, in
/// the background, until it has ended).
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(1);

/// The first wait for a cancelled statement to end before cancelling again;
/// it doubles up to [`MAX_CANCEL_INTERVAL`].
const FIRST_CANCEL_INTERVAL: Duration = Duration::from_millis(50);
const MAX_CANCEL_INTERVAL: Duration = Duration::from_secs(1);

/// How long a connection whose statement will not end is kept cancelling
/// (a server that answers nothing) before it is closed anyway.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// Connections lent to operations, and those whose statement is still being
/// cancelled after its operation gave up on it.
#[derive(Clone, Default)]
pub(crate) struct Lent(Arc<Counted>);

#[derive(Default)]
struct Counted {
    count: AtomicUsize,
    none_left: Notify,
}

impl Lent {
    fn hold(&self) -> Held {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        Held(self.0.clone())
    }

    /// Waits until every lent connection is back (or closed, its statement
    /// ended), for at most `timeout`; false if some are still out.
    pub(crate) async fn all_returned(&self, timeout: Duration) -> bool {
        let returned = async {
            loop {
                let none_left = self.0.none_left.notified();
                if self.0.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                none_left.await;
            }
        };
        tokio::time::timeout(timeout, returned).await.is_ok()
    }
}

/// One lent connection, counted until dropped.
struct Held(Arc<Counted>);

impl Drop for Held {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// A pooled connection lent to one operation, with what it takes to stop
/// that operation's statement.
pub(crate) struct Lease<'s> {
    /// `None` once handed back to the pool, closed or handed to [`settle`].
    client: Option<Client>,
    canceller: &'s Canceller,
    /// Held as long as the connection is, so that an abandoned statement
    /// still counts against its batch until it has ended.
    permit: Option<WritePermit>,
    /// Counts the connection as lent until it is back, or closed.
    held: Option<Held>,
}

impl<'s> Lease<'s> {
    pub(crate) fn new(
        client: Client,
        permit: Option<WritePermit>,
        canceller: &'s Canceller,
        lent: &Lent,
    ) -> Self {
        Self {
            client: Some(client),
            canceller,
            permit,
            held: Some(lent.hold()),
        }
    }

    pub(crate) fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a lease holds its client until it ends")
    }

    /// Cancels the statement `running` (the operation on this connection)
    /// until it ends, and returns its outcome; bounded by the caller.
    pub(crate) async fn cancel_until_ended<F: Future>(
        &self,
        mut running: Pin<&mut F>,
    ) -> F::Output {
        let token = self.client().cancel_token();
        let mut interval = FIRST_CANCEL_INTERVAL;
        loop {
            self.canceller.cancel(token.clone()).await;
            if let Ok(outcome) = tokio::time::timeout(interval, running.as_mut()).await {
                return outcome;
            }
            interval = (interval * 2).min(MAX_CANCEL_INTERVAL);
        }
    }

    /// Hands the connection back to the pool.
    pub(crate) fn keep(mut self) {
        drop(self.client.take());
    }

    /// Closes the connection, whose statement has ended, instead of handing
    /// it back: a cancel request may still be on its way to it.
    pub(crate) fn discard(mut self) {
        drop(self.client.take().map(Object::take));
    }

    /// Gives up on a statement that may still run: it is cancelled in the
    /// background until it has ended, then the connection is closed.
    pub(crate) fn abandon(mut self) {
        self.settle_in_background();
    }

    fn settle_in_background(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let (permit, held, canceller) =
            (self.permit.take(), self.held.take(), self.canceller.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    settle(client, &canceller).await;
                    drop((permit, held));
                });
            }
            // No runtime left to cancel on (the process is ending).
            Err(_) => drop(Object::take(client)),
        }
    }
}

impl Drop for Lease<'_> {
    /// Neither kept, closed nor abandoned: the caller went away
    /// mid-operation, and a statement may still be running.
    fn drop(&mut self) {
        self.settle_in_background();
    }
}

/// Cancels whatever `client` runs until a probe sent behind it is answered
/// (so nothing runs there any more), then closes the connection.
async fn settle(client: Client, canceller: &Canceller) {
    let token = client.cancel_token();
    let settled = async {
        // Answered only once every statement sent before it has ended.
        let mut probe = std::pin::pin!(client.batch_execute("SELECT 1"));
        let mut interval = FIRST_CANCEL_INTERVAL;
        loop {
            canceller.cancel(token.clone()).await;
            if tokio::time::timeout(interval, probe.as_mut()).await.is_ok() {
                return;
            }
            interval = (interval * 2).min(MAX_CANCEL_INTERVAL);
        }
    };
    if tokio::time::timeout(GIVE_UP_AFTER, settled).await.is_err() {
        tracing::warn!(
            ?GIVE_UP_AFTER,
            "a statement given up on did not end despite cancel requests; closing its connection"
        );
    }
    drop(Object::take(client));
}
