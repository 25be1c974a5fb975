//! Group commit: one thread makes the database durable for everyone who asks.
//!
//! `sled::Tree::flush_async` runs each flush on sled's own small thread pool, which also writes
//! the log buffers a flush waits for: enough concurrent flushes fill the pool with waiters and
//! nothing is written any more (the node stopped answering publishes under load). Here every
//! request goes to one thread, which flushes once for all the requests that arrived while the
//! previous flush ran, then answers them all.

use std::sync::mpsc;
use std::thread::JoinHandle;

use futures_channel::oneshot;

use crate::{Result, StorageError};

type Waiter = oneshot::Sender<std::result::Result<(), String>>;

/// The flush thread of one database; stops (after a last flush) when dropped.
pub(crate) struct Flusher {
    requests: Option<mpsc::Sender<Waiter>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub(crate) fn start(db: sled::Db) -> Result<Flusher> {
        let (requests, received) = mpsc::channel::<Waiter>();
        let thread = std::thread::Builder::new()
            .name("chorus-flush".to_owned())
            .spawn(move || flush_while_asked(&db, &received))
            .map_err(|e| StorageError::Sled(sled::Error::Io(e)))?;
        Ok(Flusher {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Resolves once everything written before the call is durable.
    pub(crate) async fn flush(&self) -> Result<()> {
        let (waiter, done) = oneshot::channel();
        let stopped =
            || StorageError::Sled(sled::Error::ReportableBug("flush thread stopped".into()));
        self.requests
            .as_ref()
            .ok_or_else(stopped)?
            .send(waiter)
            .map_err(|_| stopped())?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(StorageError::Sled(sled::Error::Io(std::io::Error::other(
                reason,
            )))),
            Err(_) => Err(stopped()),
        }
    }
}

fn flush_while_asked(db: &sled::Db, received: &mpsc::Receiver<Waiter>) {
    while let Ok(first) = received.recv() {
        let mut waiting = vec![first];
        waiting.extend(received.try_iter());
        let outcome = db.flush().map(|_| ()).map_err(|e| e.to_string());
        for waiter in waiting {
            let _ = waiter.send(outcome.clone());
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
