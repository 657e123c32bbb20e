//! A tiny authoritative DNS responder for tests: answers A and AAAA queries over UDP from a
//! table the test can change while it runs, with a fixed TTL; a name that is not in the table
//! gets NXDOMAIN, a name in it without a record of the asked family gets an empty answer.
//!
//! It runs inside a test's namespace (bound on its loopback), so the code under test resolves
//! host names without any real DNS server ever being asked. The serving thread is bounded: it
//! checks a stop flag at least every 50 ms and is stopped and joined when the guard drops.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::NetNs;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;

/// What the responder knows and what it was asked.
#[derive(Debug, Default)]
struct Zone {
    /// Lower-case names without the trailing dot.
    records: BTreeMap<String, Vec<IpAddr>>,
    ttl: u32,
    /// Queries received, by lower-case name.
    queries: BTreeMap<String, u64>,
}

/// A running responder; stopped (and its thread joined) on drop.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Starts a responder on `bind` (port 0 picks a free one) inside `ns`, answering with `ttl`.
    pub fn start(ns: &NetNs, bind: SocketAddr, ttl: u32) -> Result<DnsServer> {
        let socket = ns
            .run(|| UdpSocket::bind(bind))
            .with_context(|| format!("cannot bind the DNS responder to {bind} in {}", ns.name()))?;
        let addr = socket.local_addr()?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let zone = Arc::new(Mutex::new(Zone {
            ttl,
            ..Zone::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (zone, stop) = (Arc::clone(&zone), Arc::clone(&stop));
            thread::Builder::new()
                .name("dns-responder".into())
                .spawn(move || serve(&socket, &zone, &stop))?
        };
        Ok(DnsServer {
            addr,
            zone,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens (in its namespace).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn zone(&self) -> MutexGuard<'_, Zone> {
        self.zone.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `name` resolve to `addresses` (replacing what it had); an empty list makes the
    /// name exist without addresses.
    pub fn set(&self, name: &str, addresses: &[IpAddr]) {
        self.zone()
            .records
            .insert(normalize(name), addresses.to_vec());
    }

    /// Makes `name` unknown (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        self.zone().records.remove(&normalize(name));
    }

    /// Changes the TTL of the answers from now on.
    pub fn set_ttl(&self, ttl: u32) {
        self.zone().ttl = ttl;
    }

    /// How many queries (of any type) for `name` have arrived.
    pub fn queries(&self, name: &str) -> u64 {
        self.zone()
            .queries
            .get(&normalize(name))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn serve(socket: &UdpSocket, zone: &Mutex<Zone>, stop: &AtomicBool) {
    let mut buffer = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let (len, from) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            Err(err)
                if matches!(
                    err.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(err) => {
                eprintln!("dns responder: receive failed: {err}");
                return;
            }
        };
        let answer = {
            let mut zone = zone.lock().unwrap_or_else(|e| e.into_inner());
            answer(&buffer[..len], &mut zone)
        };
        if let Some(answer) = answer
            && let Err(err) = socket.send_to(&answer, from)
        {
            eprintln!("dns responder: answering {from}: {err}");
        }
    }
}

/// The question of a query: the name's labels as received, the lower-case dotted name, the
/// type, and where the question section ends.
struct Question {
    name: String,
    qtype: u16,
    qclass: u16,
    end: usize,
}

fn parse_question(query: &[u8]) -> Option<Question> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // Queries carry no compression pointers; anything above 63 is not a plain label.
        if len > 63 {
            return None;
        }
        let label = query.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let qclass = u16::from_be_bytes([*query.get(at + 2)?, *query.get(at + 3)?]);
    Some(Question {
        name: labels.join("."),
        qtype,
        qclass,
        end: at + 4,
    })
}

/// The response to `query`, or `None` for something that is not a query at all.
fn answer(query: &[u8], zone: &mut Zone) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let id = [query[0], query[1]];
    let opcode = (query[2] >> 3) & 0x0f;
    let recursion_desired = query[2] & 0x01;
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    let header = |rcode: u8, qdcount: u16, ancount: u16| {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&id);
        // QR, the query's opcode, AA, the query's RD.
        out.push(0x80 | (opcode << 3) | 0x04 | recursion_desired);
        // RA, rcode.
        out.push(0x80 | rcode);
        out.extend_from_slice(&qdcount.to_be_bytes());
        out.extend_from_slice(&ancount.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out
    };
    if opcode != 0 {
        return Some(header(RCODE_NOTIMP, 0, 0));
    }
    let question = match parse_question(query) {
        Some(question) if qdcount == 1 => question,
        _ => return Some(header(RCODE_FORMERR, 0, 0)),
    };
    *zone.queries.entry(question.name.clone()).or_default() += 1;
    let Some(addresses) = zone.records.get(&question.name) else {
        let mut out = header(RCODE_NXDOMAIN, 1, 0);
        out.extend_from_slice(&query[12..question.end]);
        return Some(out);
    };
    let rdata: Vec<Vec<u8>> = if question.qclass != CLASS_IN {
        Vec::new()
    } else {
        addresses
            .iter()
            .filter_map(|address| match (address, question.qtype) {
                (IpAddr::V4(v4), TYPE_A) => Some(v4.octets().to_vec()),
                (IpAddr::V6(v6), TYPE_AAAA) => Some(v6.octets().to_vec()),
                _ => None,
            })
            .collect()
    };
    let mut out = header(0, 1, u16::try_from(rdata.len()).ok()?);
    out.extend_from_slice(&query[12..question.end]);
    for data in rdata {
        // The name: a pointer to the question's name at offset 12.
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&question.qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&zone.ttl.to_be_bytes());
        out.extend_from_slice(&u16::try_from(data.len()).ok()?.to_be_bytes());
        out.extend_from_slice(&data);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` of `qtype` with id 0x1234 and RD set, plus an EDNS OPT record, as
    /// stub resolvers send it.
    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut out = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        for label in name.split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        out
    }

    fn zone() -> Zone {
        let mut zone = Zone {
            ttl: 7,
            ..Zone::default()
        };
        zone.records.insert(
            "trunk.test".into(),
            vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
        );
        zone
    }

    #[test]
    fn answers_a_with_ttl() {
        let mut zone = zone();
        let q = query("Trunk.Test", TYPE_A);
        let a = answer(&q, &mut zone).unwrap();
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(a[2] & 0x80, 0x80, "QR");
        assert_eq!(a[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1, "one answer");
        let question_end = q.len() - 11;
        assert_eq!(&a[12..question_end], &q[12..question_end]);
        let record = &a[question_end..];
        assert_eq!(&record[..2], &[0xc0, 0x0c]);
        assert_eq!(u16::from_be_bytes([record[2], record[3]]), TYPE_A);
        assert_eq!(
            u32::from_be_bytes([record[6], record[7], record[8], record[9]]),
            7
        );
        assert_eq!(&record[12..], &[192, 0, 2, 1]);
        assert_eq!(zone.queries["trunk.test"], 1);
    }

    #[test]
    fn answers_aaaa_nxdomain_and_nodata() {
        let mut zone = zone();
        let a = answer(&query("trunk.test", TYPE_AAAA), &mut zone).unwrap();
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1);
        assert_eq!(
            &a[a.len() - 16..],
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        let a = answer(&query("ghost.test", TYPE_A), &mut zone).unwrap();
        assert_eq!(a[3] & 0x0f, RCODE_NXDOMAIN);
        zone.records
            .insert("v4only.test".into(), vec!["192.0.2.9".parse().unwrap()]);
        let a = answer(&query("v4only.test", TYPE_AAAA), &mut zone).unwrap();
        assert_eq!(a[3] & 0x0f, 0);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 0, "NODATA");
    }
}
