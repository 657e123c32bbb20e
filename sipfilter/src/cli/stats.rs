//! `sipfilter stats`: the datapath's counters, summed over CPUs.

use std::path::Path;

use sipfilter::control::Request;

use super::{JsonArgs, query};

/// Show packet counts by verdict and reason, rule hits in monitor mode, SIP messages by method
/// and events.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub json: JsonArgs,
}

pub fn run(args: &StatsArgs, socket: &Path) -> anyhow::Result<()> {
    let stats = query(socket, &Request::Stats)?;
    if args.json.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    println!("packets by reason:");
    if let Some(packets) = stats["packets"].as_object() {
        for (reason, row) in packets {
            let count = row["packets"].as_u64().unwrap_or(0);
            if count > 0 {
                println!(
                    "  {:<5} {reason:<22} {count}",
                    row["verdict"].as_str().unwrap_or("?")
                );
            }
        }
    }
    let nonzero = |section: &str| -> Vec<(String, u64)> {
        stats[section]
            .as_object()
            .map(|map| {
                map.iter()
                    .filter_map(|(k, v)| v.as_u64().filter(|&n| n > 0).map(|n| (k.clone(), n)))
                    .collect()
            })
            .unwrap_or_default()
    };
    for (title, section) in [
        ("monitor mode (would have dropped):", "monitored"),
        ("SIP messages:", "sip_messages"),
    ] {
        let rows = nonzero(section);
        if !rows.is_empty() {
            println!("{title}");
            for (name, count) in rows {
                println!("  {name:<28} {count}");
            }
        }
    }
    println!(
        "events: {} sent, {} lost, {} received; bans active: {}",
        stats["events"]["sent"],
        stats["events"]["lost"],
        stats["events"]["received"],
        stats["bans"]["active"]
    );
    Ok(())
}
