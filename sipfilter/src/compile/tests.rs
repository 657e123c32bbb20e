use super::*;
use crate::config::Policy;

fn policy(toml: &str) -> Policy {
    Policy::from_toml_str(toml, "test.toml").expect("valid policy")
}

fn class(compiled: &CompiledPolicy, transport: u32, port: u16) -> u8 {
    compiled.ports[(transport * 256 + u32::from(port >> 8)) as usize].class
        [usize::from(port & 0xff)]
}

#[test]
fn ports_get_their_class_per_transport() {
    let compiled = compile(&policy(
        "[sip]\nudp_ports = [5060, 5080]\ntcp_ports = [5060]\ntls_ports = [5061]\n[restricted]\ntcp = [22]\nudp = [4569]\n",
    ))
    .unwrap();
    assert_eq!(class(&compiled, TRANSPORT_UDP, 5060), port_class::SIP);
    assert_eq!(class(&compiled, TRANSPORT_UDP, 5080), port_class::SIP);
    assert_eq!(class(&compiled, TRANSPORT_TCP, 5080), port_class::NONE);
    assert_eq!(class(&compiled, TRANSPORT_TCP, 5061), port_class::TLS);
    assert_eq!(class(&compiled, TRANSPORT_UDP, 5061), port_class::NONE);
    assert_eq!(class(&compiled, TRANSPORT_TCP, 22), port_class::RESTRICTED);
    assert_eq!(
        class(&compiled, TRANSPORT_UDP, 4569),
        port_class::RESTRICTED
    );
    assert_eq!(class(&compiled, TRANSPORT_UDP, 22), port_class::NONE);
}

#[test]
fn rate_parameters_admit_the_burst_then_the_rate() {
    let params = rate_params(Some(&Rate {
        rate: 5.0,
        burst: 10,
    }));
    assert_eq!(params.interval_ns, 200_000_000);
    assert_eq!(params.tolerance_ns, 9 * 200_000_000);
    let half = rate_params(Some(&Rate {
        rate: 0.5,
        burst: 1,
    }));
    assert_eq!(half.interval_ns, 2_000_000_000);
    assert_eq!(half.tolerance_ns, 0);
    assert_eq!(rate_params(None), RateParams::default());
}

#[test]
fn modes_and_flags() {
    let compiled = compile(&policy(
        "[sources]\nuntrusted_sip = \"drop\"\ndeny_mode = \"monitor\"\n[scanners]\nmode = \"monitor\"\nuser_agents = []\nfrom = [\"x\"]\n[toll_fraud]\ndeny_prefixes = [\"00\"]\n",
    ))
    .unwrap();
    let config = compiled.config;
    assert_eq!(config.abi_version, ABI_VERSION);
    assert_ne!(config.flags & config_flags::UNTRUSTED_SIP_DROP, 0);
    assert_eq!(config.flags & config_flags::SCAN_USER_AGENT, 0);
    assert_ne!(config.flags & config_flags::SCAN_FROM, 0);
    assert_ne!(config.flags & config_flags::TOLL_FRAUD, 0);
    assert_eq!(config.flags & config_flags::RESPONSIVE, 0);
    let responsive = compile(&policy("[responsive]\nenabled = true\n")).unwrap();
    assert_ne!(responsive.config.flags & config_flags::RESPONSIVE, 0);
    assert_eq!(
        config.monitor_mask,
        RuleKind::Deny.bit() | RuleKind::Scanner.bit()
    );
    assert_eq!(
        compiled.toll,
        vec![(16, *b"00\0\0\0\0\0\0\0\0\0\0\0\0\0\0")]
    );
}

fn hinted(blocks: &[HintBlock], family: u32, slot: u32) -> u8 {
    blocks[(family * 256 + (slot >> 8)) as usize].bits[(slot & 0xff) as usize]
}

#[test]
fn hints_cover_exactly_the_slots_an_entry_can_match() {
    let v4_24 = TrieKey::from_net(&"203.0.113.0/24".parse().unwrap());
    let v4_12 = TrieKey::from_net(&"10.16.0.0/12".parse().unwrap());
    let v6_48 = TrieKey::from_net(&"2001:db8:100::/48".parse().unwrap());
    let v6_20 = TrieKey::from_net(&"2001:1000::/20".parse().unwrap());
    let blocks = hint_blocks([
        (&v4_24, hint::DENY),
        (&v4_12, hint::ALLOW),
        (&v6_48, hint::ALLOW),
        (&v6_20, hint::DENY),
    ]);
    assert_eq!(hinted(&blocks, hint::FAMILY_V4, 203 << 8), hint::DENY);
    assert_eq!(hinted(&blocks, hint::FAMILY_V4, 203 << 8 | 1), 0);
    // 10.16.0.0/12 covers 10.16 to 10.31.
    assert_eq!(hinted(&blocks, hint::FAMILY_V4, 10 << 8 | 16), hint::ALLOW);
    assert_eq!(hinted(&blocks, hint::FAMILY_V4, 10 << 8 | 31), hint::ALLOW);
    assert_eq!(hinted(&blocks, hint::FAMILY_V4, 10 << 8 | 32), 0);
    assert_eq!(hinted(&blocks, hint::FAMILY_V4, 10 << 8 | 15), 0);
    assert_eq!(hinted(&blocks, hint::FAMILY_V6, 0x0db8), hint::ALLOW);
    // 2001:1000::/20 fixes the top 4 bits of the second hextet.
    assert_eq!(hinted(&blocks, hint::FAMILY_V6, 0x1000), hint::DENY);
    assert_eq!(hinted(&blocks, hint::FAMILY_V6, 0x1fff), hint::DENY);
    assert_eq!(hinted(&blocks, hint::FAMILY_V6, 0x2000), 0);
}

/// The /24 networks marked in `blocks`.
fn marked_nets(blocks: &BTreeMap<u32, NetBlock>) -> Vec<u32> {
    let mut nets = Vec::new();
    for (entry, block) in blocks {
        for (word, bits) in block.words.iter().enumerate() {
            for bit in 0..64 {
                if bits >> bit & 1 != 0 {
                    nets.push(entry << 11 | (word as u32) << 6 | bit);
                }
            }
        }
    }
    nets
}

#[test]
fn permanent_v4_denies_of_24_or_shorter_mark_their_networks() {
    let key = |net: &str| TrieKey::from_net(&net.parse().unwrap());
    let deny = BTreeMap::from([
        (key("203.0.113.0/24"), 0),
        (key("198.51.0.0/22"), 0),
        // Two whole words of the map.
        (key("10.0.0.0/17"), 0),
        // Longer than /24, timed, IPv6: the trie alone decides these.
        (key("192.0.2.128/25"), 0),
        (key("192.0.2.7/32"), 0),
        (key("100.64.0.0/16"), 1_000),
        (key("2001:db8::/32"), 0),
    ]);
    let blocks = deny_net_blocks(&deny);
    let net = |a: u32, b: u32, c: u32| a << 16 | b << 8 | c;
    let mut expected = vec![net(203, 0, 113)];
    expected.extend((0..4).map(|c| net(198, 51, c)));
    expected.extend((0..128).map(|c| net(10, 0, c)));
    expected.sort_unstable();
    assert_eq!(marked_nets(&blocks), expected);
    // Each network's bit lies where the datapath looks for it.
    let (entry, word, bit) = deny_nets::position(net(203, 0, 113));
    assert_eq!(blocks[&entry].words[word] >> bit & 1, 1);
}

#[test]
fn a_deny_of_everything_marks_every_network() {
    let all = TrieKey::from_net(&"0.0.0.0/0".parse().unwrap());
    let blocks = deny_net_blocks(&BTreeMap::from([(all, 0)]));
    assert_eq!(blocks.len(), deny_nets::BLOCKS as usize);
    assert!(
        blocks
            .values()
            .all(|block| block.words.iter().all(|&word| word == u64::MAX))
    );
    assert!(deny_net_blocks(&BTreeMap::new()).is_empty());
}

#[test]
fn short_ipv6_prefixes_hint_every_slot() {
    let all = TrieKey::from_net(&"2000::/3".parse().unwrap());
    let blocks = hint_blocks([(&all, hint::DENY)]);
    assert!((0..1 << 16).all(|slot| hinted(&blocks, hint::FAMILY_V6, slot) == hint::DENY));
    assert!((0..1 << 16).all(|slot| hinted(&blocks, hint::FAMILY_V4, slot) == 0));
}

#[test]
fn source_keys_match_the_datapath() {
    let v4 = source_key("192.0.2.7".parse().unwrap(), 64);
    assert_eq!(
        v4.addr,
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7]
    );
    let v6 = source_key("2001:db8:1:2:3:4:5:6".parse().unwrap(), 64);
    assert_eq!(
        v6.addr,
        "2001:db8:1:2::"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
    );
    let v6_56 = source_key("2001:db8:1:2ff:3:4:5:6".parse().unwrap(), 56);
    assert_eq!(
        v6_56.addr,
        "2001:db8:1:200::"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
    );
    let v6_128 = source_key("2001:db8::1".parse().unwrap(), 128);
    assert_eq!(
        ban_hint_key(&v6_128),
        TrieKey::V6 {
            prefix_len: 128,
            addr: v6_128.addr
        }
    );
    assert_eq!(
        ban_hint_key(&v4),
        TrieKey::V4 {
            prefix_len: 32,
            addr: [192, 0, 2, 7]
        }
    );
}

#[test]
fn trie_keys_drop_host_bits() {
    let key = TrieKey::from_net(&"198.51.100.0/24".parse().unwrap());
    assert_eq!(
        key,
        TrieKey::V4 {
            prefix_len: 24,
            addr: [198, 51, 100, 0]
        }
    );
}
