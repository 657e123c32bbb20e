//! Throw-away network namespaces, veth links between them, and the client/server [`Topology`]
//! most datapath tests use.
//!
//! Safety of the host network is the point of this module: every interface is created inside a
//! namespace we own (`ip -n NS link add ... peer ... netns OTHER`, so not even a transient device
//! appears in the root namespace), every address and route is added with `ip -n`, and every
//! namespace is deleted when its guard drops, also while a test unwinds from a panic.

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Prefix of every namespace this crate creates; [`remove_stale`] touches nothing else.
const PREFIX: &str = "sft-";

/// Where iproute2 keeps the bind mounts that name namespaces.
const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Distinguishes namespaces of one process; the pid in the name distinguishes processes.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `program args...` and fails, showing the whole command and its stderr, unless it exits 0.
fn run_checked(program: &str, args: &[&str]) -> Result<Output> {
    let shown = || format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", shown()))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            shown(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// A network namespace that exists as long as this guard does.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `sft-<tag>-<pid>-<n>` with `lo` up and IPv6 duplicate address detection off, so
    /// addresses added later are usable at once. `tag` is ASCII letters and digits, to keep the
    /// name parseable by [`remove_stale`].
    pub fn new(tag: &str) -> Result<NetNs> {
        ensure!(
            !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_alphanumeric()),
            "namespace tag {tag:?} must be non-empty ASCII letters and digits"
        );
        static STALE: Once = Once::new();
        STALE.call_once(|| {
            if let Err(err) = remove_stale() {
                eprintln!("warning: removing stale test namespaces failed: {err:#}");
            }
        });
        let name = format!(
            "{PREFIX}{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_checked("ip", &["netns", "add", &name])?;
        // From here on the guard owns the namespace, so a failure below still deletes it.
        let ns = NetNs { name };
        // `default` covers interfaces created later (the veths); `all` covers `lo`.
        ns.exec(&[
            "sh",
            "-c",
            "echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad && \
             echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad",
        ])?;
        ns.up("lo")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_checked("ip", &full)
    }

    /// Runs `args` inside the namespace (`ip netns exec NAME args...`) and waits for it.
    pub fn exec(&self, args: &[&str]) -> Result<Output> {
        ensure!(!args.is_empty(), "exec needs a command");
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run_checked("ip", &full)
    }

    /// Starts `args` inside the namespace with stdin closed and stdout/stderr piped. The child
    /// is killed when the returned guard drops; its own children are not, so do not spawn
    /// daemons that fork.
    pub fn spawn(&self, args: &[&str]) -> Result<NsChild> {
        ensure!(!args.is_empty(), "spawn needs a command");
        let what = format!("ip netns exec {} {}", self.name, args.join(" "));
        // `ip netns exec` execs the command in place, so the child's pid is the command's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{what}`"))?;
        Ok(NsChild {
            child: Some(child),
            what,
        })
    }

    /// Runs `f` on a fresh thread that has joined this namespace, and returns its result.
    /// Sockets `f` creates stay in the namespace after it returns, so the usual pattern is to
    /// create a socket here and use it from the calling thread. A panic in `f` is propagated.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = Path::new(NETNS_RUN_DIR).join(&self.name);
        let joined = thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&path)
                        .unwrap_or_else(|err| panic!("cannot open {}: {err}", path.display()));
                    // SAFETY: a valid namespace descriptor; network namespaces are per thread,
                    // so this moves only the current (fresh) thread.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    // Never fall through to `f` in the root namespace.
                    assert!(
                        rc == 0,
                        "setns into {} failed: {}",
                        self.name,
                        std::io::Error::last_os_error()
                    );
                    drop(file);
                    f()
                })
                .join()
        });
        joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Adds `cidr` (e.g. `192.0.2.1/24` or `2001:db8::1/64`) to `ifname`. IPv6 addresses skip
    /// duplicate address detection.
    pub fn addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", ifname];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    pub fn up(&self, ifname: &str) -> Result<()> {
        self.ip(&["link", "set", "dev", ifname, "up"]).map(drop)
    }

    /// Waits until `ifname` has carrier and its queueing discipline is attached. Until then the
    /// kernel silently drops what is sent through it, which would make traffic counts flaky.
    pub fn wait_ready(&self, ifname: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.ip(&["-o", "link", "show", "dev", ifname])?;
            let line = String::from_utf8_lossy(&output.stdout).into_owned();
            if line.contains("state UP") && !line.contains("qdisc noop") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{ifname} in {} not ready after {timeout:?}: {line}",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The Ethernet address of `ifname`.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let output = self.ip(&["-o", "link", "show", "dev", ifname])?;
        let line = String::from_utf8_lossy(&output.stdout).into_owned();
        let text = line
            .split_whitespace()
            .skip_while(|word| *word != "link/ether")
            .nth(1)
            .with_context(|| format!("no link/ether address in {line:?}"))?;
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut mac {
            let part = parts.next().with_context(|| format!("bad MAC {text:?}"))?;
            *byte = u8::from_str_radix(part, 16).with_context(|| format!("bad MAC {text:?}"))?;
        }
        ensure!(parts.next().is_none(), "bad MAC {text:?}");
        Ok(mac)
    }

    /// Adds a permanent neighbour entry, so traffic to `addr` needs no ARP or neighbour
    /// discovery (whose first packets a filter under test might see, or which could lose a
    /// queued burst).
    pub fn neighbor(&self, ifname: &str, addr: &str, mac: [u8; 6]) -> Result<()> {
        let lladdr = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        self.ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            &lladdr,
            "dev",
            ifname,
            "nud",
            "permanent",
        ])
        .map(drop)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(err) = run_checked("ip", &["netns", "del", &self.name]) {
            eprintln!("warning: {err:#}");
        }
    }
}

/// Creates a veth pair with `a_if` in `a` and `b_if` in `b`. The command runs inside `a`, so the
/// kernel creates both ends in namespaces we own and the root namespace never sees a device.
pub fn link(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str) -> Result<()> {
    link_with_queues(a, a_if, b, b_if, 1)
}

/// [`link`] with `queues` receive and transmit queues on each end. A veth hands a frame to the
/// receive queue of the sending CPU, each queue with its own NAPI instance once XDP runs on it,
/// so one queue per CPU spreads traffic as a NIC's receive-side scaling does: a flood sent
/// from one CPU then no longer holds up what other CPUs send.
pub fn link_with_queues(a: &NetNs, a_if: &str, b: &NetNs, b_if: &str, queues: usize) -> Result<()> {
    // The kernel truncates nothing: longer names are rejected, but say why up front.
    ensure!(
        a_if.len() <= 15 && b_if.len() <= 15,
        "interface names are at most 15 bytes: {a_if:?}, {b_if:?}"
    );
    let queues = queues.to_string();
    a.ip(&[
        "link",
        "add",
        a_if,
        "numtxqueues",
        &queues,
        "numrxqueues",
        &queues,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "numtxqueues",
        &queues,
        "numrxqueues",
        &queues,
        "netns",
        &b.name,
    ])
    .map(drop)
}

/// Deletes `sft-*` namespaces left behind by test processes that died without dropping their
/// guards: those whose embedded pid no longer runs. Namespaces of live processes, and names that
/// are not ours, are never touched. Returns the names removed.
pub fn remove_stale() -> Result<Vec<String>> {
    let listing = run_checked("ip", &["netns", "list"])?;
    let mut removed = Vec::new();
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        // Lines look like `NAME` or `NAME (id: N)`.
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = owner_pid(name) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match run_checked("ip", &["netns", "del", name]) {
            Ok(_) => removed.push(name.to_owned()),
            Err(err) => eprintln!("warning: {err:#}"),
        }
    }
    Ok(removed)
}

/// The pid embedded in a name of the form `sft-<tag>-<pid>-<n>`, or `None` for any other name.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut fields = rest.rsplitn(3, '-');
    let counter = fields.next()?;
    let pid = fields.next()?;
    let tag = fields.next()?;
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let is_tag = !tag.is_empty() && tag.bytes().all(|b| b.is_ascii_alphanumeric());
    if !is_tag || !is_number(counter) || !is_number(pid) {
        return None;
    }
    pid.parse().ok()
}

/// A process started with [`NetNs::spawn`]; killed (by its pid) and reaped on drop.
#[derive(Debug)]
pub struct NsChild {
    child: Option<Child>,
    what: String,
}

impl NsChild {
    pub fn id(&self) -> u32 {
        self.child().id()
    }

    /// The process, e.g. to take its stdout while it runs.
    pub fn child(&self) -> &Child {
        self.child
            .as_ref()
            .expect("child is present until finish or drop")
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("child is present until finish or drop")
    }

    /// Waits up to `timeout` for the process to exit, kills it if it has not, and returns its
    /// status and whatever it wrote to the pipes it still had.
    pub fn finish(mut self, timeout: Duration) -> Result<Output> {
        let mut child = self.child.take().expect("child is present until finish");
        // Read the pipes concurrently: a child blocked on a full pipe would never exit.
        let stdout = child.stdout.take().map(drain_in_background);
        let stderr = child.stderr.take().map(drain_in_background);
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                child
                    .kill()
                    .with_context(|| format!("cannot kill `{}`", self.what))?;
                break child.wait()?;
            }
            thread::sleep(Duration::from_millis(10));
        };
        let collect = |reader: Option<thread::JoinHandle<Vec<u8>>>| {
            reader.map_or_else(Vec::new, |r| r.join().unwrap_or_default())
        };
        Ok(Output {
            status,
            stdout: collect(stdout),
            stderr: collect(stderr),
        })
    }
}

fn drain_in_background(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error ends the capture; what was read so far is still worth showing.
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only when the process already exited, which is what we want anyway.
            let _ = child.kill();
            if let Err(err) = child.wait() {
                eprintln!("warning: cannot reap `{}`: {err}", self.what);
            }
        }
    }
}

/// Two namespaces joined by a veth pair, with static neighbour entries both ways:
///
/// ```text
/// client [veth-c 192.0.2.1/24 2001:db8::1/64] <-> [veth-s 192.0.2.2/24 2001:db8::2/64] server
/// ```
///
/// The filter under test attaches to [`Topology::SERVER_IF`] in `server`.
#[derive(Debug)]
pub struct Topology {
    pub client: NetNs,
    pub server: NetNs,
}

impl Topology {
    pub const CLIENT_IF: &'static str = "veth-c";
    pub const SERVER_IF: &'static str = "veth-s";
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

    /// Builds the topology and returns once both ends can carry traffic. `tag` names the
    /// namespaces (`sft-<tag>c-...`, `sft-<tag>s-...`).
    pub fn new(tag: &str) -> Result<Topology> {
        let topology = Topology {
            client: NetNs::new(&format!("{tag}c"))?,
            server: NetNs::new(&format!("{tag}s"))?,
        };
        let (client, server) = (&topology.client, &topology.server);
        link(client, Self::CLIENT_IF, server, Self::SERVER_IF)?;
        for (ns, ifname, v4, v6) in [
            (client, Self::CLIENT_IF, Self::CLIENT_V4, Self::CLIENT_V6),
            (server, Self::SERVER_IF, Self::SERVER_V4, Self::SERVER_V6),
        ] {
            ns.addr(ifname, &format!("{v4}/24"))?;
            ns.addr(ifname, &format!("{v6}/64"))?;
            ns.up(ifname)?;
        }
        let client_mac = client.mac(Self::CLIENT_IF)?;
        let server_mac = server.mac(Self::SERVER_IF)?;
        client.neighbor(Self::CLIENT_IF, &Self::SERVER_V4.to_string(), server_mac)?;
        client.neighbor(Self::CLIENT_IF, &Self::SERVER_V6.to_string(), server_mac)?;
        server.neighbor(Self::SERVER_IF, &Self::CLIENT_V4.to_string(), client_mac)?;
        server.neighbor(Self::SERVER_IF, &Self::CLIENT_V6.to_string(), client_mac)?;
        client.wait_ready(Self::CLIENT_IF, Duration::from_secs(5))?;
        server.wait_ready(Self::SERVER_IF, Duration::from_secs(5))?;
        Ok(topology)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_accepts_only_our_names() {
        assert_eq!(owner_pid("sft-selftest-1234-0"), Some(1234));
        assert_eq!(owner_pid("sft-ab1s-99-17"), Some(99));
        assert_eq!(owner_pid("sft-1234-0"), None, "tag missing");
        assert_eq!(owner_pid("sft-a-b-1234-0"), None, "tags have no dashes");
        assert_eq!(owner_pid("sft-x-12a-0"), None);
        assert_eq!(owner_pid("sft-x-12-"), None);
        assert_eq!(owner_pid("other-x-12-0"), None);
        assert_eq!(owner_pid("sft-"), None);
    }
}
