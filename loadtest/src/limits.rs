//! The open-file limit: raised to its hard maximum at start, and checked before opening connections.

use crate::error::{Error, Result};

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Files a process keeps for itself besides its connections (std streams, runtime, HTTP pool).
pub const RESERVED_FILES: u64 = 200;

/// Fails early when `connections` sockets will not fit under this process's open-file limit.
pub fn check_fits(connections: u64, extra: u64) -> Result<()> {
    let limit = raise_nofile();
    if connections + extra + RESERVED_FILES > limit {
        return Err(Error::Args(format!(
            "{connections} connections need more than this process's open-file limit ({limit}); \
             use fewer, or the `connections` scenario, which spreads them over worker processes"
        )));
    }
    Ok(())
}
