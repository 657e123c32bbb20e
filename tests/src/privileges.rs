//! Deciding whether a privileged test can run here.
//!
//! Tests that need namespaces or BPF skip on a developer's unprivileged machine, but must fail in
//! CI: a CI run that silently skips the datapath tests would report green for untested code.

use std::path::Path;
use std::process::{Command, Stdio};

use sipfilter::datapath::retry_interrupted;

/// True when this process can create network namespaces and load XDP programs. Otherwise, with
/// `CI=true` it panics; elsewhere it prints why the test is skipped and returns false.
///
/// ```no_run
/// if !sipfilter_tests::require_bpf("drops_scanner") {
///     return;
/// }
/// ```
#[track_caller]
pub fn require_bpf(test: &str) -> bool {
    match missing_capability() {
        None => true,
        Some(why) => {
            if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                panic!("{test} needs root and BPF, which CI must provide: {why}");
            }
            eprintln!("skipping {test}: needs root and BPF ({why})");
            false
        }
    }
}

/// What is missing, or `None` when everything a privileged test needs is here.
fn missing_capability() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    if !Path::new("/sys/fs/bpf").is_dir() {
        return Some("/sys/fs/bpf does not exist".into());
    }
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !ip.is_ok_and(|status| status.success()) {
        return Some("the `ip` command (iproute2) is not usable".into());
    }
    load_trivial_xdp().err()
}

/// Loads and closes `r0 = XDP_PASS; exit`: root alone does not prove BPF works (a container
/// may filter the syscall, or the kernel may lack XDP), and this is the cheapest real proof.
fn load_trivial_xdp() -> Result<(), String> {
    /// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`; the kernel zero-fills the
    /// rest of the union when we pass a shorter size.
    #[repr(C)]
    struct ProgLoadAttr {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
    }
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const XDP_PASS: u8 = 2;
    // Two instructions: `mov64 r0, XDP_PASS` (0xb7) and `exit` (0x95). Written as bytes so the
    // encoding does not depend on host endianness (the register nibbles are zero).
    let insns: [u8; 16] = [0xb7, 0, 0, 0, XDP_PASS, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    // SAFETY: `attr` and the buffers it points to outlive the call; the size passed is the size
    // of the struct, so the kernel reads nothing beyond it.
    let load = || match unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>() as libc::c_uint,
        )
    } {
        fd if fd >= 0 => Ok(fd),
        _ => Err(std::io::Error::last_os_error()),
    };
    // The verifier answers EAGAIN when a signal reaches this thread while it works (seen once in
    // CI); the datapath's loader tries again, and so does this probe.
    let fd = retry_interrupted(load, |error| error.kind() == std::io::ErrorKind::WouldBlock)
        .map_err(|error| format!("bpf(BPF_PROG_LOAD) of a trivial XDP program failed: {error}"))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}
