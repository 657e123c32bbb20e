//! `--netns NAME`: run the whole process inside a named network namespace (as `ip netns exec`
//! would, but keeping this mount namespace, so pins under /sys/fs/bpf outlive the process).

use std::{fs::File, io, os::fd::AsRawFd as _, path::Path};

/// Moves the calling thread into `/var/run/netns/NAME`. Call before any other thread starts:
/// threads inherit the namespace of the thread that creates them.
pub fn enter(name: &str) -> io::Result<()> {
    if name.contains('/') || name.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad namespace name {name:?}"),
        ));
    }
    let path = Path::new("/var/run/netns").join(name);
    let file = File::open(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {name} ({}): {e}", path.display()),
        )
    })?;
    // SAFETY: a valid namespace fd.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("entering network namespace {name}: {e}"),
        ));
    }
    Ok(())
}
