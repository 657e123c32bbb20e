//! `sipfilter detach`: remove the filter from interfaces.

use std::path::Path;

use anyhow::bail;
use sipfilter::{
    control::{ClientError, Request},
    datapath::{attached_interfaces, detach, remove_pins},
};

use super::send;

/// Remove the filter from interfaces (all of them when none is named). A running daemon
/// detaches them itself (and stops when no interface is left); without one, the pins are
/// removed directly. When no interface is left, the pinned program and maps are removed too.
#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// Interfaces to detach from; every attached interface when left out.
    #[arg(value_name = "IFACE")]
    pub interfaces: Vec<String>,

    /// Detach from every interface and remove every pin, also maps left without a link.
    #[arg(long, conflicts_with = "interfaces")]
    pub all: bool,
}

pub fn run(args: &DetachArgs, pin_dir: &Path, socket: &Path) -> anyhow::Result<()> {
    let request = Request::Detach {
        interfaces: args.interfaces.clone(),
    };
    match send(socket, &request, false) {
        Ok(()) => {
            if args.all {
                remove_pins(pin_dir)?;
            }
            return Ok(());
        }
        Err(error)
            if !matches!(
                error.downcast_ref::<ClientError>(),
                Some(ClientError::NoDaemon { .. })
            ) =>
        {
            return Err(error);
        }
        Err(_) => {}
    }
    if args.all || args.interfaces.is_empty() {
        for iface in attached_interfaces(pin_dir) {
            log::info!("{iface}: detached");
        }
        remove_pins(pin_dir)?;
        return Ok(());
    }
    let attached = attached_interfaces(pin_dir);
    for iface in &args.interfaces {
        if !attached.contains(iface) {
            bail!(
                "sipfilter is not attached to {iface} (attached: {})",
                if attached.is_empty() {
                    "none".to_owned()
                } else {
                    attached.join(", ")
                }
            );
        }
    }
    for iface in &args.interfaces {
        detach(pin_dir, iface)?;
        log::info!("{iface}: detached");
    }
    Ok(())
}
