//! `sipfilter check`: validate a policy file as `attach` would, without touching the kernel, and
//! summarise what it sets.

use std::path::PathBuf;

use anyhow::Context as _;
use sipfilter::{
    config::{Mode, Policy, Rate, UntrustedSip},
    patterns,
};

/// Validate a policy file without attaching anything.
///
/// Checks what `attach --config FILE` checks, including that the scanner patterns fit in the
/// datapath's automata, and prints a summary of the policy. See docs/policy.md.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy file (TOML) to validate.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

pub fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let policy = Policy::load(&args.file)?;
    let origin = args.file.display();
    // The policy parser already refused lists beyond the matcher's width; compiling is the last
    // word on what the datapath will be given.
    patterns::compile(&policy.scanners.user_agents)
        .with_context(|| format!("{origin}: scanners.user_agents"))?;
    patterns::compile(&policy.scanners.from).with_context(|| format!("{origin}: scanners.from"))?;
    print!("{origin}: OK\n{}", summary(&policy));
    Ok(())
}

fn summary(policy: &Policy) -> String {
    let ports = |ports: &[u16]| match ports {
        [] => "none".to_owned(),
        _ => ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mode = |mode: Mode| match mode {
        Mode::Enforce => "enforce",
        Mode::Monitor => "monitor",
    };
    let rate = |rate: Option<Rate>| match rate {
        None => "off".to_owned(),
        Some(Rate { rate, burst }) => format!("{rate}/s burst {burst}"),
    };
    let (sip, sources, limits) = (&policy.sip, &policy.sources, &policy.rate_limit);
    let untrusted_sip = match sources.untrusted_sip {
        UntrustedSip::Inspect => "inspect",
        UntrustedSip::Drop => "drop",
    };
    let lines = [
        format!(
            "SIP ports    UDP {}; TCP {}; TLS {}",
            ports(&sip.udp),
            ports(&sip.tcp),
            ports(&sip.tls)
        ),
        format!(
            "restricted   UDP {}; TCP {} ({})",
            ports(&policy.restricted.udp),
            ports(&policy.restricted.tcp),
            mode(policy.restricted.mode)
        ),
        format!(
            "sources      allow {} and {}; deny {} ({}); untrusted SIP sources: {untrusted_sip}",
            count(sources.allow.len(), "network"),
            count(sources.allow_hosts.len(), "host name"),
            count(sources.deny.len(), "network"),
            mode(sources.deny_mode),
        ),
        format!(
            "rate limits  per source (IPv6: per /{}): REGISTER {}, INVITE {}; all untrusted \
             sources together: {}; {} sources tracked ({})",
            limits.ipv6_prefix,
            rate(limits.register),
            rate(limits.invite),
            rate(limits.total),
            limits.max_sources,
            mode(limits.mode)
        ),
        format!(
            "scanners     {} and {} ({})",
            count(policy.scanners.user_agents.len(), "User-Agent pattern"),
            count(policy.scanners.from.len(), "From pattern"),
            mode(policy.scanners.mode)
        ),
        format!(
            "toll fraud   {} ({})",
            count(policy.toll_fraud.deny_prefixes.len(), "denied prefix"),
            mode(policy.toll_fraud.mode)
        ),
        if policy.bans.enabled {
            let bans = &policy.bans;
            format!(
                "bans         after {} offence units, {} unanswered challenges or {} rejected \
                 user names within {}: {}, doubling up to {}",
                bans.max_failures,
                bans.max_challenges + 1,
                bans.max_users + 1,
                humantime::format_duration(bans.find_time),
                humantime::format_duration(bans.ban_time),
                humantime::format_duration(bans.max_ban_time)
            )
        } else {
            "bans         off".to_owned()
        },
        if policy.responsive.enabled {
            format!(
                "responsive   sources the PBX registers are trusted for the registration + {}",
                humantime::format_duration(policy.responsive.grace)
            )
        } else {
            "responsive   off".to_owned()
        },
        format!(
            "metrics      {}",
            policy
                .daemon
                .metrics
                .map_or("off".to_owned(), |address| format!(
                    "http://{address}/metrics"
                ))
        ),
    ];
    lines.iter().map(|line| format!("  {line}\n")).collect()
}

fn count(n: usize, noun: &str) -> String {
    match (n, noun.ends_with('x')) {
        (1, _) => format!("1 {noun}"),
        (_, true) => format!("{n} {noun}es"),
        (_, false) => format!("{n} {noun}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_the_builtin_policy() {
        let text = summary(&Policy::builtin());
        assert!(text.contains("UDP 5060; TCP 5060; TLS 5061"), "{text}");
        assert!(
            text.contains("restricted   UDP none; TCP none (enforce)"),
            "{text}"
        );
        assert!(
            text.contains("REGISTER 5/s burst 10, INVITE 2/s burst 5"),
            "{text}"
        );
        assert!(
            text.contains("11 User-Agent patterns and 1 From pattern"),
            "{text}"
        );
        assert!(
            text.contains("allow 0 networks and 0 host names; deny 0 networks"),
            "{text}"
        );
        assert!(text.contains("0 denied prefixes"), "{text}");
        assert!(
            text.contains(
                "after 5 offence units, 11 unanswered challenges or 4 rejected user names"
            ),
            "{text}"
        );
        assert!(text.contains("responsive   off"), "{text}");
        assert!(
            text.contains("all untrusted sources together: off"),
            "{text}"
        );
    }
}
