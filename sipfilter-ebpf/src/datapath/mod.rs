//! The datapath, one module per protocol layer and one per policy concern: the XDP program's
//! pipeline and the TC egress watcher (`egress`), which share the parsers.
//! Every read of packet memory goes through `cursor`.

pub mod cursor;
pub mod egress;
pub mod eth;
pub mod events;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod l4;
pub mod maps;
pub mod policy;
pub mod rate;
pub mod sip;
pub mod source;
pub mod stats;
