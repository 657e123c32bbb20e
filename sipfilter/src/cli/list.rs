//! `sipfilter list`: what the daemon allows, denies and bans, and why.

use std::path::Path;

use sipfilter::control::{ListFilter, Request};

use super::{JsonArgs, query};

/// Show allow and deny entries, bans and learned sources: origin (policy file, CLI, ban engine,
/// responsive mode), comment, expiry, and for host names the addresses they resolve to now.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this list.
    #[arg(value_enum)]
    pub which: Option<ListFilter>,
    #[command(flatten)]
    pub json: JsonArgs,
}

pub fn run(args: &ListArgs, socket: &Path) -> anyhow::Result<()> {
    let rows = query(socket, &Request::List { filter: args.which })?;
    if args.json.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let rows = rows.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("(no entries)");
        return Ok(());
    }
    let text = |row: &serde_json::Value, key: &str| row[key].as_str().unwrap_or("-").to_owned();
    println!(
        "{:<7} {:<40} {:<11} {:<21} COMMENT",
        "KIND", "ADDRESS", "ORIGIN", "EXPIRES"
    );
    for row in &rows {
        let mut address = text(row, "address");
        if let Some(addresses) = row["addresses"].as_array() {
            let resolved: Vec<&str> = addresses.iter().filter_map(|a| a.as_str()).collect();
            address = format!("{address} [{}]", resolved.join(" "));
        }
        let mut comment = text(row, "comment");
        if let Some(error) = row["error"].as_str() {
            comment = format!("{comment} (DNS: {error})");
        }
        println!(
            "{:<7} {:<40} {:<11} {:<21} {comment}",
            text(row, "kind"),
            address,
            text(row, "origin"),
            text(row, "expires")
        );
    }
    Ok(())
}
