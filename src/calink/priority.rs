//! `--low-priority`: the lowest CPU priority and the idle I/O class, so collecting on a
//! busy host costs its real work nothing (what `nice -n 19 ionice -c 3` would do; the
//! commands calink runs inherit both).

use std::io;

/// IOPRIO_WHO_PROCESS, IOPRIO_CLASS_IDLE and the class shift of linux/ioprio.h; libc
/// has no constants for them.
const IOPRIO_WHO_PROCESS: nix::libc::c_int = 1;
const IOPRIO_CLASS_IDLE: nix::libc::c_int = 3;
const IOPRIO_CLASS_SHIFT: nix::libc::c_int = 13;

pub fn lower() -> io::Result<()> {
    // SAFETY: plain syscalls on this process, no memory passed.
    let r = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, 19) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; ioprio_set has no libc wrapper.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
