//! Command-line interface: one module per subcommand. Arguments become a validated plan before
//! anything touches the kernel or the daemon.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Parser, Subcommand};
use sipfilter::{
    control::{self, DEFAULT_SOCKET, Request},
    datapath::DEFAULT_PIN_DIR,
};

mod attach;
mod check;
mod detach;
mod entries;
mod list;
mod reload;
mod stats;
mod status;

/// sipfilter: an inline SIP-aware packet filter. An XDP program drops denied, banned and
/// non-allowlisted sources, SIP scanners, toll-fraud INVITEs and REGISTER/INVITE floods at the
/// earliest point of the receive path; `sipfilter attach` runs it and the daemon that keeps it
/// in sync, and the other commands talk to that daemon.
#[derive(Debug, Parser)]
#[command(name = "sipfilter", version, propagate_version = true)]
pub struct Cli {
    /// Directory on bpffs where the program, its links and its maps are pinned.
    #[arg(long, global = true, env = "SIPFILTER_PIN_DIR", default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,

    /// The daemon's control socket.
    #[arg(long, global = true, env = "SIPFILTER_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,

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
    Allow(entries::AllowArgs),
    Deny(entries::DenyArgs),
    Remove(entries::RemoveArgs),
    Unban(entries::UnbanArgs),
    List(list::ListArgs),
    Stats(stats::StatsArgs),
    Status(status::StatusArgs),
    Reload(reload::ReloadArgs),
    Check(check::CheckArgs),
}

/// `--json` for commands that print data.
#[derive(Debug, clap::Args)]
pub struct JsonArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Cli {
    pub fn run(self) -> anyhow::Result<()> {
        if let Some(name) = &self.netns {
            sipfilter::netns::enter(name)?;
        }
        let socket = self.socket.as_path();
        match &self.command {
            Command::Attach(args) => attach::run(args, &self.pin_dir, socket),
            Command::Detach(args) => detach::run(args, &self.pin_dir, socket),
            Command::Allow(args) => entries::allow(args, socket),
            Command::Deny(args) => entries::deny(args, socket),
            Command::Remove(args) => entries::remove(args, socket),
            Command::Unban(args) => entries::unban(args, socket),
            Command::List(args) => list::run(args, socket),
            Command::Stats(args) => stats::run(args, socket),
            Command::Status(args) => status::run(args, socket),
            Command::Reload(args) => reload::run(args, socket),
            Command::Check(args) => check::run(args),
        }
    }
}

/// Sends a request that changes something and prints the daemon's answer.
fn send(socket: &Path, request: &Request, quiet: bool) -> anyhow::Result<()> {
    let response = control::request(socket, request)?;
    if !response.ok {
        bail!(
            "{}",
            response
                .error
                .unwrap_or_else(|| "the daemon refused without a reason".into())
        );
    }
    if let Some(message) = response.message
        && !quiet
    {
        println!("{message}");
    }
    Ok(())
}

/// Sends a request that reads something and returns the daemon's data.
fn query(socket: &Path, request: &Request) -> anyhow::Result<serde_json::Value> {
    let response = control::request(socket, request)?;
    if !response.ok {
        bail!(
            "{}",
            response
                .error
                .unwrap_or_else(|| "the daemon refused without a reason".into())
        );
    }
    Ok(response.data)
}
