//! `sipfilter status`: where the filter runs and how full its maps are.

use std::path::Path;

use sipfilter::control::Request;

use super::{JsonArgs, query};

/// Show attached interfaces and modes, the program id, the policy file, uptime and map
/// occupancy.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub json: JsonArgs,
}

pub fn run(args: &StatusArgs, socket: &Path) -> anyhow::Result<()> {
    let status = query(socket, &Request::Status)?;
    if args.json.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let interfaces: Vec<String> = status["interfaces"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|i| {
                    format!(
                        "{} ({}, egress watcher on {})",
                        i["name"].as_str().unwrap_or("?"),
                        i["mode"].as_str().unwrap_or("?"),
                        i["egress"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!("interfaces:  {}", interfaces.join(", "));
    println!("program id:  {}", status["program_id"]);
    println!(
        "policy:      {}",
        status["policy_file"].as_str().unwrap_or("built-in")
    );
    println!("pins:        {}", status["pin_dir"].as_str().unwrap_or("?"));
    println!(
        "uptime:      {} s (since {})",
        status["uptime_seconds"],
        status["started"].as_str().unwrap_or("?")
    );
    println!(
        "reloads:     {} ({} refused)",
        status["reloads"], status["reload_failures"]
    );
    println!("maps:");
    for map in status["maps"].as_array().cloned().unwrap_or_default() {
        println!(
            "  {:<14} {:>8} / {}",
            map["map"].as_str().unwrap_or("?"),
            map["entries"],
            map["capacity"]
        );
    }
    Ok(())
}
