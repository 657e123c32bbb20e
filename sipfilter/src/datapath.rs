//! The loader: loads the datapath (the XDP filter and the TC egress watcher), pins it, attaches
//! it to interfaces, and reads and writes its maps.
//!
//! Everything lives under one pin directory (`/sys/fs/bpf/sipfilter/` by default): the maps by
//! name, the program as `program`, one XDP link per interface as `link-IFNAME` and one TCX
//! egress link as `egress-IFNAME`. The pins keep the filter in place when the daemon stops; the
//! next `attach` reuses the pinned maps and swaps its new programs into the pinned links
//! atomically (`bpf_link_update`), so no packet goes unfiltered. Only `detach` removes a link.
//!
//! Kernels before 6.6 have no TCX. There the egress watcher is a classic tc filter on the
//! interface's `clsact` qdisc, which stays in place without a pin; the egress program is pinned
//! as `tc-egress-IFNAME` to record it, and the next `attach` replaces the filter in place.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    fs, io,
    net::IpAddr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, ProgramArray, RingBuf, lpm_trie::Key},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, Link as _, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
        xdp::XdpLink,
    },
};
use sipfilter_common::{
    ABI_VERSION, Ban, Config, HintBlock, NetBlock, PatternSet, PortBlock, STAGE_HEADERS, STAGE_SIP,
    SourceKey, SourceRule, TOLL_PREFIX_MAX, capacity, hint, map_names, program_names, stats,
};

use crate::compile::{
    CompiledPolicy, SourceLists, TrieKey, ban_hint_key, deny_net_blocks, hint_blocks, source_key,
};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sipfilter";
const PROGRAM_PIN: &str = "program";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

static DATAPATH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sipfilter"));

/// The trivial `XDP_PASS` program, which benchmarks run beside the datapath to subtract the
/// cost of `BPF_PROG_TEST_RUN` itself.
#[cfg(feature = "bench")]
pub static XDP_PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-pass"));

/// The flood lab's frame source (`xdp_flood`), which `BPF_PROG_TEST_RUN` runs in live-frames
/// mode to send frames as a NIC would hand them over.
#[cfg(feature = "bench")]
pub static XDP_FLOOD_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-flood"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the kernel refused a program of the datapath: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("pinning under {path}: {source}")]
    Pin { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not on a bpf filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`) or pass --pin-dir"
    )]
    NotBpffs { path: PathBuf },
    #[error(
        "the maps pinned under {dir} were written by an incompatible sipfilter (layout version {found}, this \
         build uses {ABI_VERSION}); remove them with `sipfilter detach --all --pin-dir {dir}`"
    )]
    Incompatible { dir: PathBuf, found: u32 },
    #[error("interface {iface}: the egress watcher: {source}")]
    AttachEgress {
        iface: String,
        source: aya::programs::ProgramError,
    },
    #[error("interface {iface}: {source}{hint}", hint = xdp_attach_hint(source))]
    Attach {
        iface: String,
        source: aya::programs::ProgramError,
    },
    #[error("interface {iface} does not exist")]
    NoSuchInterface { iface: String },
    #[error("{iface}: attached through netlink, which cannot be pinned (kernel older than 5.9?)")]
    Unpinnable { iface: String },
    #[error("nothing of sipfilter is attached to {iface} (no {path})")]
    NotAttached { iface: String, path: PathBuf },
}

type Result<T> = std::result::Result<T, DatapathError>;

/// What an operator can do about the usual reasons a kernel refuses an XDP attach.
fn xdp_attach_hint(error: &ProgramError) -> &'static str {
    let errno = match error {
        ProgramError::SyscallError(syscall) => syscall.io_error.raw_os_error(),
        _ => None,
    };
    match errno {
        Some(libc::ERANGE) => {
            " (the MTU is too large for native XDP on this driver, which sipfilter needs to see \
             each frame in one buffer: lower the MTU, or use --mode skb or auto)"
        }
        Some(libc::EOPNOTSUPP) => " (the driver has no native XDP: use --mode skb or auto)",
        Some(libc::EBUSY | libc::EEXIST) => {
            " (another XDP program is attached: remove it first, e.g. `ip link set dev IFACE xdp off`)"
        }
        _ => "",
    }
}

/// How to attach: `Auto` tries the driver's native XDP and falls back to generic (skb) mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    Auto,
    Driver,
    Skb,
}

/// Where the egress watcher of an interface hooks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressHook {
    /// A TCX link (kernel 6.6 or later).
    Tcx,
    /// A tc filter on the `clsact` qdisc (older kernels).
    TcFilter,
}

impl EgressHook {
    pub const fn name(self) -> &'static str {
        match self {
            EgressHook::Tcx => "tcx",
            EgressHook::TcFilter => "tc filter",
        }
    }
}

/// How an interface ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link, in this mode.
    New(XdpMode),
    /// The pinned link of an earlier run now runs this program.
    Adopted,
}

pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

/// A delete of a key that is not there: aya reports it as the syscall's ENOENT.
fn is_missing_key(error: &aya::maps::MapError) -> bool {
    match error {
        aya::maps::MapError::KeyNotFound => true,
        aya::maps::MapError::SyscallError(syscall) => {
            syscall.io_error.kind() == io::ErrorKind::NotFound
        }
        _ => false,
    }
}

fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// Tries of `BPF_PROG_LOAD` when it fails with `EAGAIN`: the verifier gives up with that when a
/// signal reaches the loading thread while it works (a second or more for the header stage), and
/// libbpf retries the same way.
const PROG_LOAD_ATTEMPTS: u32 = 5;

/// Runs `load` again while it fails and `interrupted` says why, [`PROG_LOAD_ATTEMPTS`] times in
/// all. Public for the tests' own BPF probe, which loads with a raw syscall.
pub fn retry_interrupted<T, E>(
    mut load: impl FnMut() -> std::result::Result<T, E>,
    interrupted: impl Fn(&E) -> bool,
) -> std::result::Result<T, E> {
    let mut attempts = 1;
    loop {
        match load() {
            Err(error) if interrupted(&error) && attempts < PROG_LOAD_ATTEMPTS => attempts += 1,
            done => return done,
        }
    }
}

/// `BPF_PROG_LOAD` failed with `EAGAIN` (see [`PROG_LOAD_ATTEMPTS`]).
fn interrupted(error: &ProgramError) -> bool {
    matches!(error, ProgramError::LoadError { io_error, .. } if io_error.kind() == io::ErrorKind::WouldBlock)
}

impl Datapath {
    /// Loads the program and creates (or reuses) the pinned maps under `pin_dir`.
    pub fn load(pin_dir: &Path, max_sources: u32) -> Result<Datapath> {
        ensure_bpffs(pin_dir)?;
        fs::create_dir_all(pin_dir).map_err(|source| DatapathError::Pin {
            path: pin_dir.to_owned(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(map_names::RATE, max_sources)
            .load(DATAPATH_OBJECT)?;
        let program: &mut Xdp = program(&mut ebpf)?;
        retry_interrupted(|| program.load(), interrupted)?;
        let egress = egress_program(&mut ebpf)?;
        retry_interrupted(|| egress.load(), interrupted)?;
        for name in [program_names::SIP, program_names::HEADERS] {
            let stage: &mut Xdp = ebpf
                .program_mut(name)
                .expect("the object holds every stage")
                .try_into()?;
            retry_interrupted(|| stage.load(), interrupted)?;
        }
        let reader: &mut SchedClassifier = ebpf
            .program_mut(program_names::EGRESS_READ)
            .expect("the object holds the egress reader")
            .try_into()?;
        retry_interrupted(|| reader.load(), interrupted)?;
        for (name, map, index) in [
            (program_names::SIP, map_names::STAGES, STAGE_SIP),
            (program_names::HEADERS, map_names::STAGES, STAGE_HEADERS),
            (program_names::EGRESS_READ, map_names::EGRESS_STAGES, 0),
        ] {
            install_stage(&mut ebpf, name, map, index)?;
        }
        let datapath = Datapath {
            ebpf,
            pin_dir: pin_dir.to_owned(),
        };
        if let Ok(info) = aya::maps::MapInfo::from_pin(pin_dir.join(map_names::RATE))
            && info.max_entries() != max_sources
        {
            log::warn!(
                "the pinned rate-limiter map holds {} sources, the policy asks for {max_sources}: pinned maps \
                 are reused as they are, so the new size applies after `sipfilter detach --all`",
                info.max_entries()
            );
        }
        // Earlier builds pinned their pattern lists in other layouts under other names; nothing
        // reads those maps any more. (A program of such a build that is still attached keeps its
        // own reference to its map until its link is taken over.)
        for retired in map_names::RETIRED_PATTERNS {
            let stale = pin_dir.join(retired);
            if !stale.exists() {
                continue;
            }
            match fs::remove_file(&stale) {
                Ok(()) => log::info!(
                    "removed {}, the pattern map of an earlier build",
                    stale.display()
                ),
                Err(e) => log::warn!(
                    "could not remove {}, the pattern map of an earlier build: {e}",
                    stale.display()
                ),
            }
        }
        let found = datapath.config()?.abi_version;
        if found != 0 && found != ABI_VERSION {
            return Err(DatapathError::Incompatible {
                dir: pin_dir.to_owned(),
                found,
            });
        }
        Ok(datapath)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn program(&mut self) -> Result<&mut Xdp> {
        program(&mut self.ebpf)
    }

    /// The TC egress watcher.
    pub fn egress(&mut self) -> Result<&mut SchedClassifier> {
        egress_program(&mut self.ebpf)
    }

    /// How many instructions the verifier walked for each program (`None` where the kernel
    /// does not say: before 5.16).
    pub fn verified_instructions(&self) -> Result<Vec<(String, Option<u32>)>> {
        self.ebpf
            .programs()
            .map(|(name, program)| {
                Ok((
                    name.to_owned(),
                    program.info()?.verified_instruction_count(),
                ))
            })
            .collect()
    }

    /// Attaches the XDP filter and the egress watcher to `iface`, or takes over the links a
    /// previous run pinned there.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(Attached, EgressHook)> {
        let attached = self.attach_filter(iface, mode)?;
        match self.attach_egress(iface) {
            Ok(hook) => Ok((attached, hook)),
            Err(error) => {
                if let Attached::New(_) = attached {
                    // Leave the interface as it was: one attach, all or nothing.
                    let _ = fs::remove_file(link_pin(&self.pin_dir, iface));
                }
                Err(error)
            }
        }
    }

    /// The egress watcher as a TCX link (kernel 6.6 or later), pinned beside the XDP link; on
    /// a kernel without TCX, as a tc filter ([`Datapath::attach_egress_tc`]).
    fn attach_egress(&mut self, iface: &str) -> Result<EgressHook> {
        if egress_tc_pin(&self.pin_dir, iface).exists() {
            return self.attach_egress_tc(iface);
        }
        let link_path = egress_pin(&self.pin_dir, iface);
        let program = egress_program(&mut self.ebpf)?;
        let attach_error = |source| DatapathError::AttachEgress {
            iface: iface.to_owned(),
            source,
        };
        let pin_error = |path: &Path| {
            let path = path.to_owned();
            move |e: aya::programs::links::LinkError| DatapathError::Pin {
                path,
                source: io::Error::other(e),
            }
        };
        let id = if link_path.exists() {
            let pinned = PinnedLink::from_pin(&link_path).map_err(pin_error(&link_path))?;
            let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                .map_err(pin_error(&link_path))?;
            program.attach_to_link(link).map_err(attach_error)?
        } else {
            match program.attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ) {
                Ok(id) => id,
                Err(error) if tcx_unsupported(&error) => {
                    log::info!("{iface}: no TCX in this kernel ({error}), using a tc filter");
                    return self.attach_egress_tc(iface);
                }
                Err(error) => return Err(attach_error(error)),
            }
        };
        let link = FdLink::try_from(program.take_link(id).map_err(attach_error)?)
            .map_err(pin_error(&link_path))?;
        if !link_path.exists() {
            link.pin(&link_path).map_err(|e| DatapathError::Pin {
                path: link_path.clone(),
                source: io::Error::other(e),
            })?;
        }
        Ok(EgressHook::Tcx)
    }

    /// The egress watcher as a direct-action tc filter on `iface`'s `clsact` qdisc, for kernels
    /// before 6.6. A filter left by an earlier run is replaced in place (a netlink replace is
    /// atomic, as a link update is), so no response goes unwatched in between.
    fn attach_egress_tc(&mut self, iface: &str) -> Result<EgressHook> {
        let attach_error = |source| DatapathError::AttachEgress {
            iface: iface.to_owned(),
            source,
        };
        if let Err(error) = tc::qdisc_add_clsact(iface)
            && !clsact_exists(&error)
        {
            return Err(attach_error(error.into()));
        }
        let program = egress_program(&mut self.ebpf)?;
        let options = TcAttachOptions::Netlink(NlOptions {
            priority: EGRESS_TC_PRIORITY,
            handle: EGRESS_TC_HANDLE,
            ..NlOptions::default()
        });
        let id = match program.attach_with_options(iface, TcAttachType::Egress, options) {
            Ok(id) => id,
            Err(error) if netlink_errno(&error) == Some(libc::EEXIST) => {
                let earlier = SchedClassifierLink::attached(
                    iface,
                    TcAttachType::Egress,
                    EGRESS_TC_PRIORITY,
                    EGRESS_TC_HANDLE,
                    None,
                )
                .map_err(|e| attach_error(TcError::IoError(e).into()))?;
                program.attach_to_link(earlier).map_err(attach_error)?
            }
            Err(error) => return Err(attach_error(error)),
        };
        // Dropping a netlink link deletes its filter, which must outlive this process as a
        // pinned link does; the link holds no resource, only the filter's address.
        std::mem::forget(program.take_link(id).map_err(attach_error)?);
        // Pinned anew, so the pin holds the program now in the filter, not an earlier one.
        let marker = egress_tc_pin(&self.pin_dir, iface);
        let _ = fs::remove_file(&marker);
        program.pin(&marker).map_err(|e| DatapathError::Pin {
            path: marker.clone(),
            source: io::Error::other(e),
        })?;
        Ok(EgressHook::TcFilter)
    }

    fn attach_filter(&mut self, iface: &str, mode: AttachMode) -> Result<Attached> {
        let link_path = link_pin(&self.pin_dir, iface);
        let program: &mut Xdp = program(&mut self.ebpf)?;
        let attach_error = |source| DatapathError::Attach {
            iface: iface.to_owned(),
            source,
        };
        if link_path.exists() {
            let pinned = PinnedLink::from_pin(&link_path).map_err(|e| DatapathError::Pin {
                path: link_path.clone(),
                source: io::Error::other(e),
            })?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| DatapathError::Pin {
                path: link_path.clone(),
                source: io::Error::other(e),
            })?;
            let id = program.attach_to_link(link).map_err(attach_error)?;
            // The link stays pinned; dropping our handle must not detach it.
            drop(FdLink::try_from(
                program.take_link(id).map_err(attach_error)?,
            ));
            self.pin_program()?;
            return Ok(Attached::Adopted);
        }
        if !interface_exists(iface) {
            return Err(DatapathError::NoSuchInterface {
                iface: iface.to_owned(),
            });
        }
        let (id, used) = match mode {
            AttachMode::Driver => (
                program
                    .attach(iface, XdpMode::Driver)
                    .map_err(attach_error)?,
                XdpMode::Driver,
            ),
            AttachMode::Skb => (
                program.attach(iface, XdpMode::Skb).map_err(attach_error)?,
                XdpMode::Skb,
            ),
            AttachMode::Auto => match program.attach(iface, XdpMode::Driver) {
                Ok(id) => (id, XdpMode::Driver),
                Err(driver_error) => {
                    log::info!(
                        "{iface}: native XDP unavailable ({driver_error}), using generic (skb) mode"
                    );
                    (
                        program.attach(iface, XdpMode::Skb).map_err(attach_error)?,
                        XdpMode::Skb,
                    )
                }
            },
        };
        let link = program.take_link(id).map_err(attach_error)?;
        let fd_link = FdLink::try_from(link).map_err(|_| DatapathError::Unpinnable {
            iface: iface.to_owned(),
        })?;
        fd_link.pin(&link_path).map_err(|e| DatapathError::Pin {
            path: link_path.clone(),
            source: io::Error::other(e),
        })?;
        self.pin_program()?;
        Ok(Attached::New(used))
    }

    fn pin_program(&mut self) -> Result<()> {
        let path = self.pin_dir.join(PROGRAM_PIN);
        let _ = fs::remove_file(&path);
        program(&mut self.ebpf)?
            .pin(&path)
            .map_err(|e| DatapathError::Pin {
                path,
                source: io::Error::other(e),
            })
    }

    pub fn config(&self) -> Result<Config> {
        let map: Array<&MapData, Config> = Array::try_from(
            self.ebpf
                .map(map_names::CONFIG)
                .expect("SF_CONFIG in object"),
        )
        .map_err(map_error(map_names::CONFIG))?;
        map.get(&0, 0).map_err(map_error(map_names::CONFIG))
    }

    /// Writes a policy and the source lists that go with it. Order matters, because packets
    /// keep flowing: hints are widened before entries are added and narrowed only after stale
    /// ones are removed; new entries are added before old ones are removed (the allow set is
    /// never empty in between, and a newly trusted source is trusted before a port it needs is
    /// restricted); the config that switches features on is written last.
    pub fn apply(&mut self, policy: &CompiledPolicy, lists: &SourceLists) -> Result<()> {
        let stale = self.add_lists(lists)?;
        self.write_patterns(policy)?;
        self.write_toll(policy)?;
        self.write_ports(&policy.ports)?;
        self.remove_stale(lists, &stale)?;
        let mut config: Array<&mut MapData, Config> =
            Array::try_from(self.map_mut(map_names::CONFIG))
                .map_err(map_error(map_names::CONFIG))?;
        config
            .set(0, policy.config, 0)
            .map_err(map_error(map_names::CONFIG))
    }

    /// Makes the allow and deny tries hold exactly `lists`, in the same safe order as
    /// [`Datapath::apply`].
    pub fn apply_lists(&mut self, lists: &SourceLists) -> Result<()> {
        let stale = self.add_lists(lists)?;
        self.remove_stale(lists, &stale)
    }

    /// Adds or updates one allow entry (a learned source) without reading or rewriting the
    /// lists: a phone re-registering every few minutes must not cost a rewrite of a
    /// 10,000-entry blocklist each time.
    pub fn allow_one(&mut self, key: &TrieKey, expires_ns: u64) -> Result<()> {
        // Hint first, so the entry applies from the moment it is in the trie.
        self.add_hint(key, hint::ALLOW)?;
        self.write_trie(
            map_names::ALLOW_V4,
            map_names::ALLOW_V6,
            &BTreeMap::from([(*key, expires_ns)]),
        )
    }

    /// Widens the hints to old and new entries and adds or updates the new entries; returns the
    /// entries that were there before.
    fn add_lists(&mut self, lists: &SourceLists) -> Result<SourceLists> {
        let current = SourceLists {
            allow: self.trie_entries(map_names::ALLOW_V4, map_names::ALLOW_V6)?,
            deny: self.trie_entries(map_names::DENY_V4, map_names::DENY_V6)?,
        };
        let bans: Vec<TrieKey> = self.ban_keys()?.iter().map(ban_hint_key).collect();
        let widened = hint_blocks(
            current
                .hint_entries()
                .chain(lists.hint_entries())
                .chain(bans.iter().map(|key| (key, hint::BAN))),
        );
        self.write_hints(&widened)?;
        self.write_trie(map_names::ALLOW_V4, map_names::ALLOW_V6, &lists.allow)?;
        self.write_trie(map_names::DENY_V4, map_names::DENY_V6, &lists.deny)?;
        // After the trie, so a bit is never set before its entry is there; the bits of entries
        // on their way out are cleared here, before remove_stale takes the entries.
        self.write_deny_nets(
            &deny_net_blocks(&current.deny),
            &deny_net_blocks(&lists.deny),
        )?;
        Ok(current)
    }

    /// Writes `new` over the `SF_DENY4_NETS` blocks of `new` and `old` (those of `old` alone
    /// become empty); the rest of the 2 MB map is left as it is.
    fn write_deny_nets(
        &mut self,
        old: &BTreeMap<u32, NetBlock>,
        new: &BTreeMap<u32, NetBlock>,
    ) -> Result<()> {
        let mut map: Array<&mut MapData, NetBlock> =
            Array::try_from(self.map_mut(map_names::DENY_NETS_V4))
                .map_err(map_error(map_names::DENY_NETS_V4))?;
        for index in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
            let block = new.get(index).copied().unwrap_or_default();
            map.set(*index, block, 0)
                .map_err(map_error(map_names::DENY_NETS_V4))?;
        }
        Ok(())
    }

    fn remove_stale(&mut self, lists: &SourceLists, before: &SourceLists) -> Result<()> {
        let stale_allow: Vec<TrieKey> = before
            .allow
            .keys()
            .filter(|key| !lists.allow.contains_key(key))
            .copied()
            .collect();
        let stale_deny: Vec<TrieKey> = before
            .deny
            .keys()
            .filter(|key| !lists.deny.contains_key(key))
            .copied()
            .collect();
        self.remove_trie(map_names::ALLOW_V4, map_names::ALLOW_V6, &stale_allow)?;
        self.remove_trie(map_names::DENY_V4, map_names::DENY_V6, &stale_deny)?;
        let bans: Vec<TrieKey> = self.ban_keys()?.iter().map(ban_hint_key).collect();
        let exact = hint_blocks(
            lists
                .hint_entries()
                .chain(bans.iter().map(|key| (key, hint::BAN))),
        );
        self.write_hints(&exact)
    }

    fn map_mut(&mut self, name: &'static str) -> &mut aya::maps::Map {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("map {name} missing from the eBPF object"))
    }

    fn map(&self, name: &'static str) -> &aya::maps::Map {
        self.ebpf
            .map(name)
            .unwrap_or_else(|| panic!("map {name} missing from the eBPF object"))
    }

    fn write_hints(&mut self, blocks: &[HintBlock]) -> Result<()> {
        let mut map: Array<&mut MapData, HintBlock> =
            Array::try_from(self.map_mut(map_names::SRC_HINTS))
                .map_err(map_error(map_names::SRC_HINTS))?;
        for (index, block) in blocks.iter().enumerate() {
            map.set(index as u32, block, 0)
                .map_err(map_error(map_names::SRC_HINTS))?;
        }
        Ok(())
    }

    fn write_ports(&mut self, blocks: &[PortBlock]) -> Result<()> {
        let mut map: Array<&mut MapData, PortBlock> =
            Array::try_from(self.map_mut(map_names::PORTS)).map_err(map_error(map_names::PORTS))?;
        for (index, block) in blocks.iter().enumerate() {
            map.set(index as u32, block, 0)
                .map_err(map_error(map_names::PORTS))?;
        }
        Ok(())
    }

    fn write_patterns(&mut self, policy: &CompiledPolicy) -> Result<()> {
        let mut map: Array<&mut MapData, PatternSet> =
            Array::try_from(self.map_mut(map_names::PATTERNS))
                .map_err(map_error(map_names::PATTERNS))?;
        map.set(PatternSet::USER_AGENT, policy.user_agents.as_ref(), 0)
            .map_err(map_error(map_names::PATTERNS))?;
        map.set(PatternSet::FROM, policy.from.as_ref(), 0)
            .map_err(map_error(map_names::PATTERNS))
    }

    fn write_toll(&mut self, policy: &CompiledPolicy) -> Result<()> {
        let mut map: LpmTrie<&mut MapData, [u8; TOLL_PREFIX_MAX], u8> =
            LpmTrie::try_from(self.map_mut(map_names::TOLL)).map_err(map_error(map_names::TOLL))?;
        let wanted: BTreeSet<(u32, [u8; TOLL_PREFIX_MAX])> = policy.toll.iter().copied().collect();
        let current: Vec<(u32, [u8; TOLL_PREFIX_MAX])> = map
            .keys()
            .filter_map(|key| key.ok())
            .map(|key| (key.prefix_len(), key.data()))
            .collect();
        for (prefix_len, digits) in &wanted {
            map.insert(&Key::new(*prefix_len, *digits), 1, 0)
                .map_err(map_error(map_names::TOLL))?;
        }
        for entry in current.iter().filter(|entry| !wanted.contains(entry)) {
            map.remove(&Key::new(entry.0, entry.1))
                .map_err(map_error(map_names::TOLL))?;
        }
        Ok(())
    }

    fn trie_entries(&self, v4: &'static str, v6: &'static str) -> Result<BTreeMap<TrieKey, u64>> {
        let map4: LpmTrie<&MapData, [u8; 4], SourceRule> =
            LpmTrie::try_from(self.map(v4)).map_err(map_error(v4))?;
        let map6: LpmTrie<&MapData, [u8; 16], SourceRule> =
            LpmTrie::try_from(self.map(v6)).map_err(map_error(v6))?;
        let mut entries = BTreeMap::new();
        for entry in map4.iter() {
            let (key, rule) = entry.map_err(map_error(v4))?;
            entries.insert(
                TrieKey::V4 {
                    prefix_len: key.prefix_len(),
                    addr: key.data(),
                },
                rule.expires_ns,
            );
        }
        for entry in map6.iter() {
            let (key, rule) = entry.map_err(map_error(v6))?;
            entries.insert(
                TrieKey::V6 {
                    prefix_len: key.prefix_len(),
                    addr: key.data(),
                },
                rule.expires_ns,
            );
        }
        Ok(entries)
    }

    fn write_trie(
        &mut self,
        v4: &'static str,
        v6: &'static str,
        entries: &BTreeMap<TrieKey, u64>,
    ) -> Result<()> {
        for (key, &expires_ns) in entries {
            let rule = SourceRule { expires_ns };
            match *key {
                TrieKey::V4 { prefix_len, addr } => {
                    let mut map: LpmTrie<&mut MapData, [u8; 4], SourceRule> =
                        LpmTrie::try_from(self.map_mut(v4)).map_err(map_error(v4))?;
                    map.insert(&Key::new(prefix_len, addr), rule, 0)
                        .map_err(map_error(v4))?;
                }
                TrieKey::V6 { prefix_len, addr } => {
                    let mut map: LpmTrie<&mut MapData, [u8; 16], SourceRule> =
                        LpmTrie::try_from(self.map_mut(v6)).map_err(map_error(v6))?;
                    map.insert(&Key::new(prefix_len, addr), rule, 0)
                        .map_err(map_error(v6))?;
                }
            }
        }
        Ok(())
    }

    fn remove_trie(&mut self, v4: &'static str, v6: &'static str, keys: &[TrieKey]) -> Result<()> {
        for key in keys {
            let removed = match *key {
                TrieKey::V4 { prefix_len, addr } => {
                    let mut map: LpmTrie<&mut MapData, [u8; 4], SourceRule> =
                        LpmTrie::try_from(self.map_mut(v4)).map_err(map_error(v4))?;
                    map.remove(&Key::new(prefix_len, addr))
                }
                TrieKey::V6 { prefix_len, addr } => {
                    let mut map: LpmTrie<&mut MapData, [u8; 16], SourceRule> =
                        LpmTrie::try_from(self.map_mut(v6)).map_err(map_error(v6))?;
                    map.remove(&Key::new(prefix_len, addr))
                }
            };
            if let Err(error) = removed
                && !is_missing_key(&error)
            {
                return Err(map_error(v4)(error));
            }
        }
        Ok(())
    }

    fn ban_keys(&self) -> Result<Vec<SourceKey>> {
        let map: HashMap<&MapData, SourceKey, Ban> =
            HashMap::try_from(self.map(map_names::BANS)).map_err(map_error(map_names::BANS))?;
        map.keys()
            .map(|key| key.map_err(map_error(map_names::BANS)))
            .collect()
    }

    /// Bans `source` (its IPv6 prefix, for IPv6) until `expires_ns` on the `CLOCK_MONOTONIC`
    /// clock ([`monotonic_now_ns`]); the kernel ends the ban by itself.
    pub fn add_ban(&mut self, source: IpAddr, expires_ns: u64) -> Result<()> {
        let key = source_key(source, self.config()?.ipv6_prefix_len as u8);
        // Hint first, so the ban applies from the moment it is in the map.
        self.add_hint(&ban_hint_key(&key), hint::BAN)?;
        let mut map: HashMap<&mut MapData, SourceKey, Ban> =
            HashMap::try_from(self.map_mut(map_names::BANS)).map_err(map_error(map_names::BANS))?;
        map.insert(key, Ban { expires_ns }, 0)
            .map_err(map_error(map_names::BANS))
    }

    /// Lifts a ban (the hint bit stays until the next policy write; it only costs a lookup).
    pub fn remove_ban(&mut self, source: IpAddr) -> Result<()> {
        let key = source_key(source, self.config()?.ipv6_prefix_len as u8);
        let mut map: HashMap<&mut MapData, SourceKey, Ban> =
            HashMap::try_from(self.map_mut(map_names::BANS)).map_err(map_error(map_names::BANS))?;
        match map.remove(&key) {
            Err(error) if is_missing_key(&error) => Ok(()),
            other => other.map_err(map_error(map_names::BANS)),
        }
    }

    fn add_hint(&mut self, key: &TrieKey, bit: u8) -> Result<()> {
        let mut map: Array<&mut MapData, HintBlock> =
            Array::try_from(self.map_mut(map_names::SRC_HINTS))
                .map_err(map_error(map_names::SRC_HINTS))?;
        for (index, block) in hint_blocks([(key, bit)]).iter().enumerate() {
            if block.bits.iter().all(|&bits| bits == 0) {
                continue;
            }
            let mut current = map
                .get(&(index as u32), 0)
                .map_err(map_error(map_names::SRC_HINTS))?;
            for (slot, bits) in current.bits.iter_mut().zip(block.bits) {
                *slot |= bits;
            }
            map.set(index as u32, current, 0)
                .map_err(map_error(map_names::SRC_HINTS))?;
        }
        Ok(())
    }

    /// Entries against capacity of the source lists, bans and toll prefixes (the rate limiter's
    /// LRU is counted apart: [`pinned_rate_sources`]).
    pub fn occupancy(&self) -> Vec<(String, u64, u64)> {
        let mut maps = Vec::new();
        let mut count = |name: &'static str, used: Option<usize>, capacity: u32| {
            maps.push((
                name.to_owned(),
                used.unwrap_or(0) as u64,
                u64::from(capacity),
            ));
        };
        for (v4, v6) in [
            (map_names::ALLOW_V4, map_names::ALLOW_V6),
            (map_names::DENY_V4, map_names::DENY_V6),
        ] {
            let entries = self.trie_entries(v4, v6).ok();
            let v4_count = entries.as_ref().map(|entries| {
                entries
                    .keys()
                    .filter(|key| matches!(key, TrieKey::V4 { .. }))
                    .count()
            });
            let v6_count = entries.as_ref().map(|entries| {
                entries
                    .keys()
                    .filter(|key| matches!(key, TrieKey::V6 { .. }))
                    .count()
            });
            count(v4, v4_count, capacity::SOURCE_LISTS);
            count(v6, v6_count, capacity::SOURCE_LISTS);
        }
        count(
            map_names::BANS,
            self.ban_keys().ok().map(|keys| keys.len()),
            capacity::BANS,
        );
        let toll =
            LpmTrie::<&MapData, [u8; TOLL_PREFIX_MAX], u8>::try_from(self.map(map_names::TOLL))
                .ok()
                .map(|map| map.keys().count());
        count(map_names::TOLL, toll, capacity::TOLL_PREFIXES);
        maps
    }

    /// Capacity of the rate limiter's LRU as loaded (pinned maps keep their size).
    pub fn rate_capacity(&self) -> u32 {
        aya::maps::MapInfo::from_pin(self.pin_dir.join(map_names::RATE))
            .map_or(0, |info| info.max_entries())
    }

    /// Counters summed over CPUs, indexed as `sipfilter_common::stats`.
    pub fn counters(&self) -> Result<Vec<u64>> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(map_names::STATS))
            .map_err(map_error(map_names::STATS))?;
        sum_counters(&map)
    }

    /// The event ring. Takes it out of the object: call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(map_names::EVENTS)
            .expect("SF_EVENTS in object");
        RingBuf::try_from(map).map_err(map_error(map_names::EVENTS))
    }
}

/// Keys of the pinned rate-limiter map, counted one by one (slow for a full LRU: call it off
/// the hot path).
pub fn pinned_rate_sources(pin_dir: &Path) -> Result<u64> {
    let data =
        MapData::from_pin(pin_dir.join(map_names::RATE)).map_err(map_error(map_names::RATE))?;
    let map = aya::maps::Map::LruHashMap(data);
    let map: HashMap<&MapData, SourceKey, sipfilter_common::RateState> =
        HashMap::try_from(&map).map_err(map_error(map_names::RATE))?;
    Ok(map.keys().filter(|key| key.is_ok()).count() as u64)
}

fn sum_counters(map: &PerCpuArray<&MapData, u64>) -> Result<Vec<u64>> {
    (0..stats::LEN)
        .map(|index| {
            map.get(&index, 0)
                .map(|values| values.iter().sum())
                .map_err(map_error(map_names::STATS))
        })
        .collect()
}

/// The counters of the filter pinned under `pin_dir`, read without loading anything (for
/// `sipfilter stats` and tests while a daemon runs, or after it stopped).
pub fn pinned_counters(pin_dir: &Path) -> Result<Vec<u64>> {
    let path = pin_dir.join(map_names::STATS);
    let data = MapData::from_pin(&path).map_err(map_error(map_names::STATS))?;
    let map = aya::maps::Map::PerCpuArray(data);
    let map: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(&map).map_err(map_error(map_names::STATS))?;
    sum_counters(&map)
}

/// Now on `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`, in which the datapath's expiry
/// times are written.
pub fn monotonic_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let program = ebpf
        .program_mut(program_names::MAIN)
        .expect("the object holds the sipfilter program");
    Ok(program.try_into()?)
}

/// Puts the loaded program `name` at `index` of the program array `map`, where the program
/// before it tail-calls it.
fn install_stage(ebpf: &mut Ebpf, name: &str, map: &'static str, index: u32) -> Result<()> {
    let fd = ebpf
        .program(name)
        .expect("the object holds every stage")
        .fd()?
        .try_clone()
        .map_err(|e| DatapathError::Program(e.into()))?;
    let mut stages: ProgramArray<&mut MapData> =
        ProgramArray::try_from(ebpf.map_mut(map).expect("stage arrays in object"))
            .map_err(map_error(map))?;
    stages.set(index, &fd, 0).map_err(map_error(map))
}

fn egress_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    let program = ebpf
        .program_mut(program_names::EGRESS)
        .expect("the object holds the egress watcher");
    Ok(program.try_into()?)
}

fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link-{iface}"))
}

fn egress_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("egress-{iface}"))
}

/// Records that the egress watcher runs as a tc filter on `iface` (a pin of the program). Its
/// prefix shares no start with `link-` or `egress-`, so no interface's name can make it the pin
/// of another interface (`egress-tc-X` would be the TCX link of an interface named `tc-X`).
fn egress_tc_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("tc-egress-{iface}"))
}

/// Where the tc filter of the egress watcher sits on a kernel without TCX: `tc filter show dev
/// IFACE egress` lists it as `pref 49407 bpf ... handle 0x5f1 sipfilter_egress direct-action`.
/// A preference of its own, so it neither replaces nor is replaced by another tool's filter.
const EGRESS_TC_PRIORITY: u16 = 49_407;
const EGRESS_TC_HANDLE: TcHandle = TcHandle::new(0, 0x5f1);

/// A TCX attach that failed because the kernel has no TCX (before 6.6, `BPF_LINK_CREATE`
/// does not know the attach type).
fn tcx_unsupported(error: &ProgramError) -> bool {
    matches!(error, ProgramError::SyscallError(syscall) if syscall.io_error.raw_os_error() == Some(libc::EINVAL))
}

/// Adding the `clsact` qdisc failed because the interface has one (an earlier run's, or
/// another tool's), which serves as well.
fn clsact_exists(error: &TcError) -> bool {
    match error {
        TcError::AlreadyAttached => true,
        TcError::NetlinkError(error) => error.raw_os_error() == Some(libc::EEXIST),
        _ => false,
    }
}

/// The errno of a failed netlink request.
fn netlink_errno(error: &ProgramError) -> Option<i32> {
    match error {
        ProgramError::TcError(TcError::NetlinkError(error)) => error.raw_os_error(),
        ProgramError::NetlinkError(error) => error.raw_os_error(),
        _ => None,
    }
}

/// Deletes the egress watcher's tc filter from `iface`, if it is there.
fn detach_egress_tc(iface: &str) -> Result<()> {
    // The interface is gone, and its filters with it.
    let Ok(link) = SchedClassifierLink::attached(
        iface,
        TcAttachType::Egress,
        EGRESS_TC_PRIORITY,
        EGRESS_TC_HANDLE,
        None,
    ) else {
        return Ok(());
    };
    match link.detach() {
        Err(error) if netlink_errno(&error) != Some(libc::ENOENT) => {
            Err(DatapathError::AttachEgress {
                iface: iface.to_owned(),
                source: error,
            })
        }
        _ => Ok(()),
    }
}

/// Whether `iface` exists in this process's network namespace (not /sys/class/net, which shows
/// the namespace sysfs was mounted in, not the one `--netns` entered).
pub fn interface_exists(iface: &str) -> bool {
    let Ok(name) = CString::new(iface) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// Interfaces with a pinned sipfilter link under `pin_dir`.
pub fn attached_interfaces(pin_dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(pin_dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_prefix("link-"))
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

/// Removes sipfilter from `iface`. When no interface is left, the program and maps are unpinned
/// too, so nothing of sipfilter stays in the kernel.
pub fn detach(pin_dir: &Path, iface: &str) -> Result<()> {
    let path = link_pin(pin_dir, iface);
    if !path.exists() {
        return Err(DatapathError::NotAttached {
            iface: iface.to_owned(),
            path,
        });
    }
    fs::remove_file(&path).map_err(|source| DatapathError::Pin {
        path: path.clone(),
        source,
    })?;
    let tc_marker = egress_tc_pin(pin_dir, iface);
    if tc_marker.exists() {
        detach_egress_tc(iface)?;
        fs::remove_file(&tc_marker).map_err(|source| DatapathError::Pin {
            path: tc_marker,
            source,
        })?;
    }
    let egress = egress_pin(pin_dir, iface);
    match fs::remove_file(&egress) {
        // Pins of a version without the watcher have none.
        Err(source) if source.kind() != io::ErrorKind::NotFound => {
            return Err(DatapathError::Pin {
                path: egress,
                source,
            });
        }
        _ => {}
    }
    if attached_interfaces(pin_dir).is_empty() {
        remove_pins(pin_dir)?;
    }
    Ok(())
}

/// Unpins every link, the program and the maps under `pin_dir`, and removes the directory.
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    if !pin_dir.exists() {
        return Ok(());
    }
    fs::remove_dir_all(pin_dir).map_err(|source| DatapathError::Pin {
        path: pin_dir.to_owned(),
        source,
    })
}

/// Makes sure `pin_dir` can hold pins: its nearest existing ancestor must be on bpffs. Inside a
/// fresh mount namespace (`ip netns exec` gives one) `/sys/fs/bpf` is an empty directory, so
/// for the default location we mount bpffs there, and say so.
fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let mut existing = pin_dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if is_bpffs(existing) {
        return Ok(());
    }
    let mount_point = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(mount_point) && mount_point.is_dir() {
        log::warn!(
            "no bpf filesystem at {}: mounting one",
            mount_point.display()
        );
        let target = CString::new(mount_point.as_os_str().as_bytes()).expect("no NUL in path");
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        log::warn!("mounting bpffs failed: {}", io::Error::last_os_error());
    }
    Err(DatapathError::NotBpffs {
        path: pin_dir.to_owned(),
    })
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a load whose `call`-th try fails with `errno_of(call)` (or succeeds on `None`)
    /// ends well, and after how many tries.
    fn tries(errno_of: impl Fn(u32) -> Option<i32>) -> (bool, u32) {
        let mut calls = 0;
        let result = retry_interrupted(
            || {
                calls += 1;
                errno_of(calls).map_or(Ok(()), |errno| Err(io::Error::from_raw_os_error(errno)))
            },
            |error: &io::Error| error.kind() == io::ErrorKind::WouldBlock,
        );
        (result.is_ok(), calls)
    }

    #[test]
    fn an_interrupted_load_is_tried_again_up_to_the_limit() {
        assert_eq!(tries(|call| (call < 3).then_some(libc::EAGAIN)), (true, 3));
        assert_eq!(tries(|_| Some(libc::EAGAIN)), (false, PROG_LOAD_ATTEMPTS));
        // Another error is not tried again.
        assert_eq!(tries(|_| Some(libc::EPERM)), (false, 1));
    }
}
