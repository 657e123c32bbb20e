//! `sipfilter attach`: load the datapath, apply the policy, attach, and log events until
//! SIGINT or SIGTERM. The filter stays attached after the process exits.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sipfilter::{
    compile::compile,
    config::Policy,
    datapath::{AttachMode, Attached, Datapath},
    events::read_events,
};
use tokio::signal::unix::{SignalKind, signal};

/// Attach the filter to interfaces and run in the foreground, logging events.
///
/// The program, its links and its maps are pinned, so the filter keeps working with its last
/// policy after this process stops (SIGINT, SIGTERM, crash). Running `attach` again takes the
/// pinned filter over with the new policy, without a gap; `sipfilter detach` removes it.
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
}

pub fn run(args: &AttachArgs, pin_dir: &Path) -> anyhow::Result<()> {
    let policy = match &args.config {
        Some(path) => Policy::load(path)?,
        None => Policy::builtin(),
    };
    let compiled = compile(&policy).context("compiling the scanner patterns")?;
    for iface in &args.interfaces {
        if !Path::new("/sys/class/net").join(iface).exists() {
            bail!("interface {iface} does not exist (see `ip link`)");
        }
    }

    let mut datapath = Datapath::load(pin_dir, compiled.max_sources)
        .with_context(|| format!("loading the datapath (pins under {})", pin_dir.display()))?;
    datapath
        .apply(&compiled)
        .context("writing the policy into the datapath's maps")?;
    for iface in &args.interfaces {
        match datapath.attach(iface, args.mode)? {
            Attached::New(mode) => log::info!("{iface}: attached ({mode:?} mode)"),
            Attached::Adopted => log::info!("{iface}: took over the pinned filter"),
        }
    }
    let source = args
        .config
        .as_ref()
        .map_or("built-in policy".to_owned(), |path| {
            path.display().to_string()
        });
    log::info!("filtering with {source}; pins under {}", pin_dir.display());

    let ring = datapath.take_events()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            result = read_events(ring, |event| log::warn!("{event}")) => result?,
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        anyhow::Ok(())
    })?;
    log::info!("stopping; the filter stays attached (`sipfilter detach IFACE` removes it)");
    Ok(())
}
