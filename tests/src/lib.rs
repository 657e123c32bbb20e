//! Test infrastructure for sipfilter: throw-away network namespaces joined by veth pairs,
//! bounded UDP/TCP/raw-frame traffic inside them, a builder for crafted (and deliberately
//! malformed) packets, and generators of realistic SIP messages.
//!
//! Everything that touches the network stays inside namespaces this crate creates, so a test can
//! never disturb the machine's own interfaces, addresses or routes.

pub mod daemon;
pub mod datapath;
pub mod dns;
pub mod e2e;
pub mod flood;
pub mod flood_xdp;
pub mod floodlab;
pub mod lab;
pub mod netns;
pub mod packet;
pub mod privileges;
pub mod raw;
pub mod sip_messages;
pub mod tcp;
pub mod udp;

pub use netns::{NetNs, NsChild, Topology, link};
pub use packet::{ExtHeader, Packet};
pub use privileges::require_bpf;
