//! `sipfilter reload`: re-read the policy file (as SIGHUP does).

use std::path::Path;

use sipfilter::control::Request;

use super::send;

/// Re-read the policy file and apply the difference. A file with an error is refused with the
/// reason, and the running policy stays.
#[derive(Debug, clap::Args)]
pub struct ReloadArgs {}

pub fn run(_args: &ReloadArgs, socket: &Path) -> anyhow::Result<()> {
    send(socket, &Request::Reload, false)
}
