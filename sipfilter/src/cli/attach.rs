//! `sipfilter attach`: run the filter and its daemon in the foreground.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use sipfilter::{
    daemon::{self, Options},
    datapath::AttachMode,
};

/// Attach the filter to interfaces and run its daemon in the foreground.
///
/// The daemon applies the policy, serves the control socket (`sipfilter allow`, `deny`, `list`,
/// ...), turns offences seen by the datapath into bans, exports Prometheus metrics, and keeps
/// CLI entries and bans in a state file. The program, its links and its maps are pinned, so the
/// filter keeps working with its last policy after this process stops (SIGINT, SIGTERM, crash);
/// running `attach` again takes it over without a gap, and `sipfilter detach` removes it.
/// SIGHUP reloads the policy file.
#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// Interfaces to filter, e.g. eth0.
    #[arg(required = true, value_name = "IFACE")]
    pub interfaces: Vec<String>,

    /// Policy file (TOML). Without it, the built-in policy: SIP on 5060 (UDP and TCP) and 5061
    /// (TLS), scanner User-Agents dropped, REGISTER 5/s burst 10 and INVITE 2/s burst 5 per
    /// source. See `sipfilter check` and docs/policy.md.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// XDP mode: `driver` (native, fastest; needs driver support), `skb` (generic, works on
    /// any interface), or `auto` (driver where the NIC supports it, else skb).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub mode: AttachMode,

    /// Where CLI entries and bans are kept across restarts and reboots.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/lib/sipfilter/state.json"
    )]
    pub state_file: PathBuf,

    /// Resolve host names with this DNS server instead of the system's resolver.
    #[arg(long, value_name = "ADDR:PORT")]
    pub dns_server: Option<SocketAddr>,
}

pub fn run(args: &AttachArgs, pin_dir: &Path, socket: &Path) -> anyhow::Result<()> {
    daemon::run(Options {
        interfaces: args.interfaces.clone(),
        mode: args.mode,
        policy_path: args.config.clone(),
        pin_dir: pin_dir.to_owned(),
        socket: socket.to_owned(),
        state_path: args.state_file.clone(),
        dns_server: args.dns_server,
    })
}
