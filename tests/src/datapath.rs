//! The datapath under `BPF_PROG_TEST_RUN`: the real eBPF object, loaded with a policy into
//! maps pinned in a private directory, fed crafted packets without any interface.
//!
//! Shared by the golden-table tests and the benchmark, so both measure the same thing.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, Map, MapData},
    programs::{TestRun, TestRunOptions, TestRunResult},
};
use sipfilter::{
    compile::{CompiledPolicy, SourceLists, compile},
    config::Policy,
    datapath::{self, Datapath},
};
use sipfilter_common::{NetBlock, Reason, deny_nets, map_names, stats};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// A loaded datapath; its pins are removed on drop.
pub struct TestDatapath {
    pub datapath: Datapath,
    pin_dir: PathBuf,
}

static LOADED: AtomicU32 = AtomicU32::new(0);

/// A pin directory of this process that no other test uses.
pub fn private_pin_dir(tag: &str) -> PathBuf {
    let n = LOADED.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(format!("/sys/fs/bpf/sft-{tag}-{}-{n}", std::process::id()))
}

/// The policy in `toml` (the policy file's syntax), compiled for the maps.
fn compiled(toml: &str) -> Result<CompiledPolicy> {
    Ok(compile(&Policy::from_toml_str(toml, "test policy")?)?)
}

impl TestDatapath {
    /// Loads the datapath with the policy in `toml` (the policy file's syntax).
    pub fn load(toml: &str) -> Result<TestDatapath> {
        TestDatapath::load_in(private_pin_dir("dp"), toml)
    }

    /// [`TestDatapath::load`] into `pin_dir`, which may hold pins already.
    pub fn load_in(pin_dir: PathBuf, toml: &str) -> Result<TestDatapath> {
        let compiled = compiled(toml)?;
        let datapath = match Datapath::load(&pin_dir, compiled.max_sources) {
            Ok(datapath) => datapath,
            Err(error) => {
                let _ = datapath::remove_pins(&pin_dir);
                return Err(error).context("loading the datapath");
            }
        };
        // From here on, dropping it removes the pins.
        let mut loaded = TestDatapath { datapath, pin_dir };
        loaded
            .apply_compiled(&compiled)
            .context("loading the datapath")?;
        Ok(loaded)
    }

    /// Applies the policy in `toml` to the loaded programs, as `sipfilter reload` does: maps
    /// are rewritten, the programs stay.
    pub fn apply(&mut self, toml: &str) -> Result<()> {
        self.apply_compiled(&compiled(toml)?)
    }

    fn apply_compiled(&mut self, compiled: &CompiledPolicy) -> Result<()> {
        Ok(self
            .datapath
            .apply(compiled, &SourceLists::from_policy(compiled))?)
    }

    /// Runs the XDP program once on `packet`; returns the XDP action.
    pub fn run(&mut self, packet: &[u8]) -> Result<u32> {
        Ok(run(self.datapath.program()?, packet, 1)?.0)
    }

    /// Runs the egress watcher once on `packet` (a frame the host sends); returns the TC
    /// action as the kernel reports it (`TC_ACT_UNSPEC`, -1, reads as `u32::MAX`) and whether
    /// the frame came out unchanged.
    pub fn run_egress(&mut self, packet: &[u8]) -> Result<(u32, bool)> {
        let mut out = vec![0u8; packet.len() + 256];
        let result = self
            .datapath
            .egress()?
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN (egress)")?;
        let unchanged =
            result.data_size_out as usize == packet.len() && out[..packet.len()] == *packet;
        Ok((result.return_value, unchanged))
    }

    /// Runs `packet` and returns the action with the reason the datapath counted for it.
    pub fn verdict(&mut self, packet: &[u8]) -> Result<(u32, Reason)> {
        let before = self.datapath.counters()?;
        let action = self.run(packet)?;
        let after = self.datapath.counters()?;
        let counted: Vec<Reason> = Reason::ALL
            .into_iter()
            .filter(|reason| {
                let slot = (stats::REASON_BASE + *reason as u32) as usize;
                after[slot] != before[slot]
            })
            .collect();
        match counted.as_slice() {
            [reason] => Ok((action, *reason)),
            _ => anyhow::bail!("expected exactly one reason counted, got {counted:?}"),
        }
    }

    /// Where the maps are pinned.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Whether `SF_DENY4_NETS` marks the /24 network of `source` as denied whole.
    pub fn denied_net_marked(&self, source: Ipv4Addr) -> Result<bool> {
        let pin = self.pin_dir.join(map_names::DENY_NETS_V4);
        let map: Array<MapData, NetBlock> = Array::try_from(Map::Array(MapData::from_pin(&pin)?))?;
        let (entry, word, bit) = deny_nets::position(u32::from(source) >> 8);
        Ok(map.get(&entry, 0)?.words[word] >> bit & 1 != 0)
    }

    /// Counters summed over CPUs (`sipfilter_common::stats` layout).
    pub fn counters(&self) -> Result<Vec<u64>> {
        Ok(self.datapath.counters()?)
    }
}

impl Drop for TestDatapath {
    fn drop(&mut self) {
        if let Err(error) = datapath::remove_pins(&self.pin_dir) {
            eprintln!("removing {}: {error}", self.pin_dir.display());
        }
    }
}

/// Runs `program` (XDP or TC) on `packet` `repeat` times in the kernel; returns the action of
/// the last run and the kernel's mean time per run.
pub fn run<P>(program: &mut P, packet: &[u8], repeat: u32) -> Result<(u32, Duration)>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut out = vec![0u8; packet.len() + 256];
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((result.return_value, result.duration))
}
