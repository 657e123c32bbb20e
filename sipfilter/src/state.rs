//! The state file: what the daemon must not lose on a restart or a reboot, that is the list
//! entries added from the CLI, the ban engine's bans and history (so a source banned before a
//! restart stays banned and is still escalated after it) and learned trust. The policy file is the operator's and
//! is never written.
//!
//! The file is JSON with a top-level `"version": 1`, times as RFC 3339 and durations as humantime
//! text (`"2h"`), so that it can be read and, with care, edited. Times are absolute wall-clock
//! times, so an expiry means the same after a reboot. [`save`] replaces the file atomically (a
//! crash leaves the old file or the new one, never a mix); [`load`] moves a file it cannot read
//! aside rather than failing the daemon, which then starts from the policy file alone.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::{bans::BanEngineState, config::is_host_name, control::ListKind, learned::Learned};

/// The format [`save`] writes and the only one [`load`] reads.
pub const VERSION: u32 = 1;

/// What is persisted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    pub entries: Vec<ListEntry>,
    pub bans: BanEngineState,
    /// Learned trust (responsive mode).
    pub learned: Vec<Learned>,
}

/// An allow or deny entry added from the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListEntry {
    pub kind: ListKind,
    pub target: Target,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// `None`: until removed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "format::rfc3339_option"
    )]
    pub expires: Option<SystemTime>,
    #[serde(with = "format::rfc3339")]
    pub added: SystemTime,
}

/// What an entry matches. Written as one string: the network (always with its prefix length)
/// or the host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Net(IpNet),
    /// Resolved by the daemon; only allow entries take host names.
    Host(String),
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Target::Net(net) => serializer.collect_str(net),
            Target::Host(name) => serializer.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.parse::<IpNet>() {
            Ok(net) if net.trunc() == net => Ok(Target::Net(net)),
            Ok(_) => Err(de::Error::custom(format!("{text:?} has host bits set"))),
            Err(_) if is_host_name(&text) => Ok(Target::Host(text)),
            Err(_) => Err(de::Error::custom(format!(
                "{text:?} is neither a network (address/prefix) nor a host name"
            ))),
        }
    }
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file is not a state file this version can read. It has been renamed to `moved_to`,
    /// so the daemon can start afresh and the next save does not destroy the evidence.
    #[error(
        "state file {}: {reason}; moved it aside to {}",
        .path.display(),
        .moved_to.display()
    )]
    Corrupt {
        path: PathBuf,
        moved_to: PathBuf,
        reason: String,
    },
    /// A file system operation failed; `action` says which.
    #[error("state file {}: {action}: {source}", .path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    /// The state holds a value the format cannot write (a time past year 9999).
    #[error("state file {}: cannot encode the state: {source}", .path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The file as written: `State` plus the version.
#[derive(Serialize)]
struct FileOut<'a> {
    version: u32,
    entries: &'a [ListEntry],
    bans: &'a BanEngineState,
    learned: &'a [Learned],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    #[serde(rename = "version")]
    _version: u32,
    entries: Vec<ListEntry>,
    bans: BanEngineState,
    /// Absent in files written before responsive mode existed.
    #[serde(default)]
    learned: Vec<Learned>,
}

/// Only the version, read first so that a future format is reported as such rather than as
/// whatever field it renamed.
#[derive(Deserialize)]
struct Probe {
    version: Option<serde_json::Value>,
}

/// Reads the state file at `path`: `Ok(None)` if there is none. Entries whose expiry has passed
/// are dropped. A file that cannot be parsed (bad JSON, truncated, another version, invalid
/// values) is renamed to `<name>.corrupt-<unix seconds>` beside it and reported as
/// [`StateError::Corrupt`].
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_owned(),
                action: "cannot read it",
                source,
            });
        }
    };
    let mut state = match parse(&bytes) {
        Ok(state) => state,
        Err(reason) => {
            let moved_to = move_aside(path)?;
            return Err(StateError::Corrupt {
                path: path.to_owned(),
                moved_to,
                reason,
            });
        }
    };
    let now = SystemTime::now();
    state
        .entries
        .retain(|entry| entry.expires.is_none_or(|expires| expires > now));
    state.learned.retain(|entry| entry.until > now);
    Ok(Some(state))
}

/// Writes `state` to `path` atomically: into a temporary file in the same directory (mode
/// 0600), synced, renamed over the old file, and the directory synced, so that after a crash
/// or power loss the file is the old state or the new one. Creates the directory (mode 0700)
/// if needed. Not for concurrent writers: the daemon saves from one task.
pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let io_error = |action| {
        move |source| StateError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    };
    let file = FileOut {
        version: VERSION,
        entries: &state.entries,
        bans: &state.bans,
        learned: &state.learned,
    };
    // Encoded before anything touches the disk, so an encoding error leaves no trace.
    let mut bytes = serde_json::to_vec_pretty(&file).map_err(|source| StateError::Encode {
        path: path.to_owned(),
        source,
    })?;
    bytes.push(b'\n');

    let temp = temp_path(path).map_err(io_error("not a file path"))?;
    let dir = directory(path);
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error("cannot create its directory"))?;
    // Left by a crash during an earlier save; never the state itself.
    if let Err(e) = fs::remove_file(&temp)
        && e.kind() != io::ErrorKind::NotFound
    {
        return Err(io_error("cannot remove a stale temporary file")(e));
    }
    let written = write_synced(&temp, &bytes)
        .map_err(io_error("cannot write the temporary file"))
        .and_then(|()| fs::rename(&temp, path).map_err(io_error("cannot replace it")));
    if let Err(error) = written {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    // The rename is durable only once the directory is.
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("cannot sync its directory"))
}

fn parse(bytes: &[u8]) -> Result<State, String> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!("not a state file: {e}"),
        _ => format!("not valid JSON: {e}"),
    })?;
    match probe.version {
        Some(version) if version == VERSION => {}
        Some(version) => {
            return Err(format!(
                "unknown version {version} (this sipfilter reads version {VERSION})"
            ));
        }
        None => return Err("no \"version\"".to_owned()),
    }
    let file: FileIn = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(State {
        entries: file.entries,
        bans: file.bans,
        learned: file.learned,
    })
}

fn move_aside(path: &Path) -> Result<PathBuf, StateError> {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".corrupt-{seconds}"));
    let moved_to = path.with_file_name(name);
    fs::rename(path, &moved_to).map_err(|source| StateError::Io {
        path: path.to_owned(),
        action: "cannot move the unreadable file aside",
        source,
    })?;
    Ok(moved_to)
}

/// `.<name>.tmp` beside `path`: hidden, and one name, so a crash leaves at most one behind.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or(io::ErrorKind::InvalidInput)?;
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(".tmp");
    Ok(path.with_file_name(temp))
}

fn directory(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    // create_new: never follows a planted link; the mode holds the state from the first byte.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Serde formats of the state file, shared with [`crate::bans`]: times as RFC 3339 (UTC, with
/// as many fractional digits as needed), durations as humantime text.
pub(crate) mod format {
    use std::time::SystemTime;

    use serde::{Deserialize as _, Deserializer, Serializer, de, ser};

    fn to_text<E: ser::Error>(time: SystemTime) -> Result<jiff::Timestamp, E> {
        jiff::Timestamp::try_from(time).map_err(E::custom)
    }

    fn from_text<E: de::Error>(text: &str) -> Result<SystemTime, E> {
        text.parse::<jiff::Timestamp>()
            .map(SystemTime::from)
            .map_err(|e| E::custom(format!("{text:?} is not an RFC 3339 time: {e}")))
    }

    pub mod rfc3339 {
        use super::*;

        pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&to_text::<S::Error>(*time)?)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
            from_text(&String::deserialize(d)?)
        }
    }

    pub mod rfc3339_option {
        use super::*;

        pub fn serialize<S: Serializer>(
            time: &Option<SystemTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => s.collect_str(&to_text::<S::Error>(*time)?),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|text| from_text(&text))
                .transpose()
        }
    }

    pub mod duration {
        use std::time::Duration;

        use super::*;

        pub fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(&humantime::format_duration(*duration))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            let text = String::deserialize(d)?;
            humantime::parse_duration(&text)
                .map_err(|e| de::Error::custom(format!("{text:?} is not a duration: {e}")))
        }
    }
}

#[cfg(test)]
mod tests;
