//! The thread that makes appended log entries durable before Raft is told they are.
//!
//! `append` writes entries at once and hands its callback here. The thread flushes the database
//! and then calls every callback that was waiting when the flush began, in the order they came:
//! appends that arrive during a flush share the next one, so a burst of appends costs one or two
//! flushes. Dropping the [`LogFlusher`] finishes the pending flush and waits for the thread, so
//! the database is released when the log store is gone.

use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

use chorus_storage::Store;
use openraft::storage::LogFlushed;

use crate::types::TypeConfig;

enum Message {
    /// Call this callback once everything written before it is durable.
    Flush(LogFlushed<TypeConfig>),
    /// Finish what is waiting and end.
    Stop,
}

/// Handle on the flusher thread of one log store.
pub(crate) struct LogFlusher {
    requests: mpsc::Sender<Message>,
    thread: Option<JoinHandle<()>>,
}

impl LogFlusher {
    pub(crate) fn start(store: &Store) -> io::Result<LogFlusher> {
        let (requests, received) = mpsc::channel();
        let store = store.clone();
        let thread = std::thread::Builder::new()
            .name("chorus-raft-log-flush".to_owned())
            .spawn(move || flush_until_stopped(&store, &received))?;
        Ok(LogFlusher {
            requests,
            thread: Some(thread),
        })
    }

    /// Calls `callback` once everything written so far is durable, or with the flush's error.
    pub(crate) fn flush_then(&self, callback: LogFlushed<TypeConfig>) -> io::Result<()> {
        match self.requests.send(Message::Flush(callback)) {
            Ok(()) => Ok(()),
            Err(mpsc::SendError(message)) => {
                let stopped = || io::Error::other("the raft log flusher thread has stopped");
                if let Message::Flush(callback) = message {
                    callback.log_io_completed(Err(stopped()));
                }
                Err(stopped())
            }
        }
    }
}

impl Drop for LogFlusher {
    fn drop(&mut self) {
        // A send fails only if the thread is gone already; either way, join it.
        let _ = self.requests.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            // The thread does not panic out (a panic aborts the process): this only waits.
            let _ = thread.join();
        }
    }
}

fn flush_until_stopped(store: &Store, received: &mpsc::Receiver<Message>) {
    while let Ok(first) = received.recv() {
        let mut waiting = Vec::new();
        let mut stop = false;
        for message in std::iter::once(first).chain(received.try_iter()) {
            match message {
                Message::Flush(callback) => waiting.push(callback),
                Message::Stop => stop = true,
            }
        }
        if !waiting.is_empty() {
            let flushed = store.flush_blocking();
            for callback in waiting {
                callback.log_io_completed(match &flushed {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::other(e.to_string())),
                });
            }
        }
        if stop {
            return;
        }
    }
}
