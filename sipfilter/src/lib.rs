//! sipfilter's userspace: the policy file, its compilation into BPF map images, the loader that
//! attaches and pins the XDP datapath, and the event reader. The binary (`main.rs`) is the CLI.

pub mod bans;
pub mod compile;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod events;
pub mod learned;
pub mod metrics;
pub mod netns;
pub mod patterns;
pub mod resolve;
pub mod state;
