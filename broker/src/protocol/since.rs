//! Where a client resumes a history channel from: the Chorus extension of `pusher:subscribe`
//! (`since`), and what an SSE stream's `Last-Event-ID` holds for each of its channels.

use serde::Deserialize;

/// A position in a history channel: its epoch and an offset in it.
#[derive(Debug, Clone, Deserialize)]
pub struct Since {
    pub epoch: String,
    pub offset: u64,
}
