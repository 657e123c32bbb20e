//! `sipfilter allow`, `deny`, `remove` and `unban`: change the running daemon's lists. The
//! change is in the datapath when the command returns.

use std::{path::Path, time::Duration};

use anyhow::bail;
use sipfilter::{
    control::{ListKind, Request},
    daemon::{is_hostname, parse_net},
};

use super::send;

/// Longest TTL accepted: longer is a permanent entry, which is what leaving out --ttl means.
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Trust a source: it skips every check (a trunk, an office network, a provider's host name).
///
/// Host names are resolved at once (IPv4 and IPv6) and re-resolved when their DNS records
/// expire; a name that does not resolve is kept and retried. Allowing an address also lifts
/// its ban.
#[derive(Debug, clap::Args)]
pub struct AllowArgs {
    /// Address, CIDR or host name, e.g. 198.51.100.7, 203.0.113.0/24, 2001:db8::/48,
    /// trunk.example.com.
    #[arg(value_name = "ADDR|CIDR|HOSTNAME")]
    pub target: String,
    #[command(flatten)]
    pub entry: EntryArgs,
}

/// Drop everything from a source, on every protected port.
#[derive(Debug, clap::Args)]
pub struct DenyArgs {
    /// Address or CIDR, e.g. 203.0.113.66 or 2001:db8:bad::/48.
    #[arg(value_name = "ADDR|CIDR")]
    pub target: String,
    #[command(flatten)]
    pub entry: EntryArgs,
}

#[derive(Debug, clap::Args)]
pub struct EntryArgs {
    /// Remove the entry after this long (e.g. 30m, 2h, 1d); permanent without it. Expiry is
    /// enforced in the kernel, also while the daemon is down.
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// A note shown by `sipfilter list`.
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
}

/// Remove entries added with allow/deny for a target, forget its learned trust, and lift its ban.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    #[arg(value_name = "ADDR|CIDR|HOSTNAME")]
    pub target: String,
}

/// Lift the ban of an address (its IPv6 prefix, for IPv6).
#[derive(Debug, clap::Args)]
pub struct UnbanArgs {
    #[arg(value_name = "ADDR")]
    pub address: String,
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl =
        humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (e.g. 30m, 2h, 1d)"))?;
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(format!(
            "{text:?}: must be between 1s and 10 years (leave --ttl out for a permanent entry)"
        ));
    }
    Ok(ttl)
}

fn add(socket: &Path, kind: ListKind, target: &str, entry: &EntryArgs) -> anyhow::Result<()> {
    // Checked here too, so a typo gets its answer even when no daemon runs.
    if let Err(error) = parse_net(target)
        && !(kind == ListKind::Allow && is_hostname(target))
    {
        bail!("{error}");
    }
    let request = Request::Add {
        kind,
        target: target.to_owned(),
        ttl_secs: entry.ttl.map(|ttl| ttl.as_secs().max(1)),
        comment: entry.comment.clone(),
    };
    send(socket, &request, false)
}

pub fn allow(args: &AllowArgs, socket: &Path) -> anyhow::Result<()> {
    add(socket, ListKind::Allow, &args.target, &args.entry)
}

pub fn deny(args: &DenyArgs, socket: &Path) -> anyhow::Result<()> {
    add(socket, ListKind::Deny, &args.target, &args.entry)
}

pub fn remove(args: &RemoveArgs, socket: &Path) -> anyhow::Result<()> {
    if let Err(error) = parse_net(&args.target)
        && !is_hostname(&args.target)
    {
        bail!("{error}");
    }
    send(
        socket,
        &Request::Remove {
            target: args.target.clone(),
        },
        false,
    )
}

pub fn unban(args: &UnbanArgs, socket: &Path) -> anyhow::Result<()> {
    if args.address.parse::<std::net::IpAddr>().is_err() {
        bail!("{:?} is not an IP address", args.address);
    }
    send(
        socket,
        &Request::Unban {
            address: args.address.clone(),
        },
        false,
    )
}
