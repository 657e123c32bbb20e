//! Proves the test infrastructure itself: the topology carries UDP, TCP and crafted frames; its
//! namespaces disappear when the guards drop, panics included; and nothing changes in the root
//! namespace.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::Command;
use std::time::Duration;

use sipfilter_tests::netns::remove_stale;
use sipfilter_tests::sip_messages::{invite, register};
use sipfilter_tests::tcp::{accept_and_read, tcp_listener, tcp_send};
use sipfilter_tests::udp::{count_received, receive_udp, send_udp, udp_listener};
use sipfilter_tests::{ExtHeader, NetNs, Packet, Topology, raw, require_bpf};

const TIMEOUT: Duration = Duration::from_secs(5);

fn netns_names() -> BTreeSet<String> {
    let output = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(output.status.success(), "ip netns list failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[track_caller]
fn assert_gone(names: &[String]) {
    let present = netns_names();
    for name in names {
        assert!(!present.contains(name), "namespace {name} still exists");
    }
}

/// What identifies the root namespace's interfaces and addresses, leaving out what changes by
/// itself (state, counters, address lifetimes).
fn root_network() -> (BTreeSet<String>, BTreeSet<String>) {
    let run = |args: &[&str]| {
        let output = Command::new("ip").args(args).output().unwrap();
        assert!(output.status.success(), "ip {args:?} failed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // `N: name: <FLAGS> ...` -> `N: name`
    let links = run(&["-o", "link", "show"])
        .lines()
        .map(|line| {
            line.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    // `N: name family address/len ...` -> `name family address/len`
    let addrs = run(&["-o", "addr", "show"])
        .lines()
        .map(|line| {
            line.split_whitespace()
                .skip(1)
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    (links, addrs)
}

fn register_burst(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            register(
                "alice",
                "example.com",
                &format!("self-{i}"),
                1,
                Some("selftest"),
                None,
            )
        })
        .collect()
}

#[test]
fn udp_over_ipv4_and_ipv6_arrives_complete() {
    if !require_bpf("udp_over_ipv4_and_ipv6_arrives_complete") {
        return;
    }
    let topology = Topology::new("udp").unwrap();
    let burst = register_burst(200);
    for (from, to) in [
        (
            SocketAddr::from((Topology::CLIENT_V4, 0)),
            SocketAddr::from((Topology::SERVER_V4, 5060)),
        ),
        (
            SocketAddr::from((Topology::CLIENT_V6, 0)),
            SocketAddr::from((Topology::SERVER_V6, 5060)),
        ),
    ] {
        let listener = udp_listener(&topology.server, to).unwrap();
        let sent = send_udp(&topology.client, from, to, &burst, TIMEOUT).unwrap();
        assert_eq!(sent, burst.len(), "{to}: send stopped early");
        let received = count_received(&listener, sent, TIMEOUT).unwrap();
        assert_eq!(received, sent, "{to}: datagrams lost");
    }
}

#[test]
fn tcp_message_arrives_whole() {
    if !require_bpf("tcp_message_arrives_whole") {
        return;
    }
    let topology = Topology::new("tcp").unwrap();
    let message = invite("alice", "bob", "example.com", "tcp-1", 1);
    for to in [
        SocketAddr::from((Topology::SERVER_V4, 5060)),
        SocketAddr::from((Topology::SERVER_V6, 5060)),
    ] {
        let listener = tcp_listener(&topology.server, to).unwrap();
        tcp_send(&topology.client, to, &message, TIMEOUT).unwrap();
        let (peer, data) = accept_and_read(&listener, TIMEOUT).unwrap();
        assert_eq!(data, message, "{to}: message altered");
        assert!(
            peer.ip() == Topology::CLIENT_V4 || peer.ip() == Topology::CLIENT_V6,
            "unexpected peer {peer}"
        );
    }
}

#[test]
fn crafted_frames_reach_a_socket() {
    if !require_bpf("crafted_frames_reach_a_socket") {
        return;
    }
    let topology = Topology::new("raw").unwrap();
    let client_mac = topology.client.mac(Topology::CLIENT_IF).unwrap();
    let server_mac = topology.server.mac(Topology::SERVER_IF).unwrap();
    let payload = register("alice", "example.com", "raw-1", 1, None, None);
    let v4 = Packet::udp4(
        Topology::CLIENT_V4,
        Topology::SERVER_V4,
        40000,
        5070,
        &payload,
    )
    .macs(client_mac, server_mac)
    .ipv4_options(&[1, 1, 1, 0])
    .build();
    let v6 = Packet::udp6(
        Topology::CLIENT_V6,
        Topology::SERVER_V6,
        40000,
        5070,
        &payload,
    )
    .macs(client_mac, server_mac)
    .ext_header(ExtHeader::HopByHop { len: 0 })
    .ext_header(ExtHeader::DestinationOptions { len: 1 })
    .build();
    for (frame, to, from) in [
        (
            v4,
            SocketAddr::from((Topology::SERVER_V4, 5070)),
            SocketAddr::from((Topology::CLIENT_V4, 40000)),
        ),
        (
            v6,
            SocketAddr::from((Topology::SERVER_V6, 5070)),
            SocketAddr::from((Topology::CLIENT_V6, 40000)),
        ),
    ] {
        let listener = udp_listener(&topology.server, to).unwrap();
        let sent = raw::send_frames(&topology.client, Topology::CLIENT_IF, &[frame], TIMEOUT);
        assert_eq!(sent.unwrap(), 1);
        let datagrams = receive_udp(&listener, 1, TIMEOUT).unwrap();
        assert_eq!(datagrams.len(), 1, "{to}: crafted frame not delivered");
        assert_eq!(datagrams[0], (from, payload.clone()));
    }
}

#[test]
fn namespaces_are_removed_on_drop_and_on_panic() {
    if !require_bpf("namespaces_are_removed_on_drop_and_on_panic") {
        return;
    }
    let names = {
        let topology = Topology::new("drop").unwrap();
        let names = vec![
            topology.client.name().to_owned(),
            topology.server.name().to_owned(),
        ];
        let present = netns_names();
        assert!(
            names.iter().all(|n| present.contains(n)),
            "namespaces not created"
        );
        names
    };
    assert_gone(&names);

    let mut names = Vec::new();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let topology = Topology::new("panic").unwrap();
        names.push(topology.client.name().to_owned());
        names.push(topology.server.name().to_owned());
        // Unwinding out of `run` must also drop the guards of the caller.
        topology.server.run(|| panic!("test body failed"));
    }));
    assert!(outcome.is_err(), "the body should have panicked");
    assert_eq!(names.len(), 2);
    assert_gone(&names);
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    if !require_bpf("stale_namespaces_of_dead_processes_are_removed") {
        return;
    }
    let live = NetNs::new("live").unwrap();
    // Pids grow until they wrap, so a child that exited is a pid that nothing runs as.
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let stale = format!("sft-stale-{dead_pid}-0");
    let added = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(added.success(), "cannot create {stale}");

    let result = remove_stale();
    // Clean up even if remove_stale is broken, so a failure does not leak a namespace.
    if netns_names().contains(&stale) {
        let _ = Command::new("ip").args(["netns", "del", &stale]).status();
        panic!("remove_stale left {stale}: {result:?}");
    }
    result.unwrap();
    assert!(
        netns_names().contains(live.name()),
        "a live process's namespace was removed"
    );
}

#[test]
fn root_namespace_is_untouched() {
    if !require_bpf("root_namespace_is_untouched") {
        return;
    }
    let before = root_network();
    {
        let topology = Topology::new("root").unwrap();
        let to = SocketAddr::from((Topology::SERVER_V4, 5060));
        let listener = udp_listener(&topology.server, to).unwrap();
        let from = SocketAddr::from((Topology::CLIENT_V4, 0));
        let burst = register_burst(10);
        let sent = send_udp(&topology.client, from, to, &burst, TIMEOUT).unwrap();
        assert_eq!(count_received(&listener, sent, TIMEOUT).unwrap(), sent);
        assert_eq!(
            root_network(),
            before,
            "root namespace changed while the topology is up"
        );
    }
    assert_eq!(
        root_network(),
        before,
        "root namespace changed after teardown"
    );
}

/// Stands for every privileged test: the subject of
/// `privileged_tests_fail_in_ci_and_skip_elsewhere`, which runs it without privileges.
#[test]
fn needs_bpf() {
    // What a privileged test would do next, were it allowed to.
    let _ = require_bpf("needs_bpf");
}

/// `require_bpf` under an unprivileged user: with `CI=true` the test fails, naming what is
/// missing; without it, the test is skipped with a note and passes. The child is this test
/// binary, copied where the unprivileged user can run it, running only [`needs_bpf`].
#[test]
fn privileged_tests_fail_in_ci_and_skip_elsewhere() {
    if !require_bpf("privileged_tests_fail_in_ci_and_skip_elsewhere") {
        return;
    }
    const NOBODY: &str = "65534";
    let dir = std::env::temp_dir().join(format!("sft-privileges-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join("selftest");
    std::fs::copy(std::env::current_exe().expect("own path"), &copy).expect("copy");
    let run = |ci: bool| {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
            .arg(&copy)
            .args(["--exact", "needs_bpf", "--nocapture", "--test-threads=1"])
            .current_dir(&dir)
            .env_remove("CI");
        if ci {
            command.env("CI", "true");
        }
        command.output().expect("running the copy as nobody")
    };
    let (in_ci, elsewhere) = (run(true), run(false));
    let _ = std::fs::remove_dir_all(&dir);
    let text = |output: &std::process::Output| {
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    };
    assert!(!in_ci.status.success(), "CI=true passed:\n{}", text(&in_ci));
    assert!(
        text(&in_ci)
            .contains("needs_bpf needs root and BPF, which CI must provide: not running as root"),
        "{}",
        text(&in_ci)
    );
    assert!(elsewhere.status.success(), "{}", text(&elsewhere));
    assert!(
        text(&elsewhere).contains("skipping needs_bpf: needs root and BPF (not running as root)"),
        "{}",
        text(&elsewhere)
    );
}
