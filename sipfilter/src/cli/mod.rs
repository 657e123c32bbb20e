//! Command-line interface: one module per subcommand. Arguments become a validated plan before
//! anything touches the kernel.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sipfilter::datapath::DEFAULT_PIN_DIR;

mod attach;
mod check;
mod detach;

/// sipfilter: an inline SIP-aware packet filter. An XDP program drops denied, banned and
/// non-allowlisted sources, SIP scanners, toll-fraud INVITEs and REGISTER/INVITE floods at the
/// earliest point of the receive path.
#[derive(Debug, Parser)]
#[command(name = "sipfilter", version, propagate_version = true)]
pub struct Cli {
    /// Directory on bpffs where the program, its links and its maps are pinned.
    #[arg(long, global = true, env = "SIPFILTER_PIN_DIR", default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,

    /// Run inside the named network namespace (/var/run/netns/NAME), as `ip netns exec` would,
    /// but keeping the host's bpffs so pins outlive the process.
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,

    /// More log output: -v debug, -vv trace (or set SIPFILTER_LOG).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Attach(attach::AttachArgs),
    Detach(detach::DetachArgs),
    Check(check::CheckArgs),
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        if let Some(name) = &self.netns {
            sipfilter::netns::enter(name)?;
        }
        match &self.command {
            Command::Attach(args) => attach::run(args, &self.pin_dir),
            Command::Detach(args) => detach::run(args, &self.pin_dir),
            Command::Check(args) => check::run(args),
        }
    }
}
