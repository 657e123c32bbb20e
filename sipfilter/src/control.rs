//! The control socket between the CLI and the running daemon: one JSON request per connection,
//! one JSON response back. A Unix socket, mode 0600 and owned by root, so only root can change
//! the filter; the daemon also checks the peer's credentials, in case the socket's directory is
//! opened up by mistake.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub const DEFAULT_SOCKET: &str = "/run/sipfilter/sipfilter.sock";

/// Longest request the daemon reads; a request is a few hundred bytes.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// How long a client waits for the daemon to answer (a reload recompiles the policy).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which list an entry belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    Allow,
    Deny,
}

/// What `sipfilter list` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ListFilter {
    Allow,
    Deny,
    Bans,
    /// Sources trusted for a registration the PBX granted (responsive mode).
    Learned,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Adds an allow or deny entry: an address, a CIDR or (allow only) a host name.
    Add {
        kind: ListKind,
        target: String,
        ttl_secs: Option<u64>,
        comment: Option<String>,
    },
    /// Removes CLI entries for the target and lifts its ban.
    Remove {
        target: String,
    },
    Unban {
        address: String,
    },
    List {
        filter: Option<ListFilter>,
    },
    Stats,
    Status,
    Reload,
    /// Detaches from these interfaces (all when empty) and stops the daemon when none is left.
    Detach {
        interfaces: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Human-readable summary of what happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn done(message: impl Into<String>) -> Response {
        Response {
            ok: true,
            error: None,
            message: Some(message.into()),
            data: serde_json::Value::Null,
        }
    }

    pub fn data(data: serde_json::Value) -> Response {
        Response {
            ok: true,
            error: None,
            message: None,
            data,
        }
    }

    pub fn failed(error: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(error.into()),
            message: None,
            data: serde_json::Value::Null,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no sipfilter daemon is running (nothing at {path}); start one with `sipfilter attach IFACE`"
    )]
    NoDaemon { path: PathBuf },
    #[error("permission denied on {path}: only root may control sipfilter")]
    PermissionDenied { path: PathBuf },
    #[error("talking to the daemon at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the daemon at {path} sent an answer this sipfilter does not understand: {source}")]
    Protocol {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Sends one request to the daemon behind `socket` and returns its answer.
pub fn request(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let io_error = |source: io::Error| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NoDaemon {
            path: socket.to_owned(),
        },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
            path: socket.to_owned(),
        },
        _ => ClientError::Io {
            path: socket.to_owned(),
            source,
        },
    };
    let mut stream = UnixStream::connect(socket).map_err(io_error)?;
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io_error)?;
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    stream.write_all(&line).map_err(io_error)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(io_error)?;
    serde_json::from_str(&answer).map_err(|source| ClientError::Protocol {
        path: socket.to_owned(),
        source,
    })
}

/// Reads one request from a daemon-side connection.
pub async fn read_request(stream: &mut tokio::net::UnixStream) -> io::Result<Request> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
    let mut line = String::new();
    tokio::io::BufReader::new(stream.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await?;
    serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub async fn write_response(
    stream: &mut tokio::net::UnixStream,
    response: &Response,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut line = serde_json::to_vec(response).expect("responses serialize");
    line.push(b'\n');
    stream.write_all(&line).await
}

/// Binds the daemon's socket: creates its directory (0755, so only the socket's own mode
/// matters), replaces a stale socket left by a crash, and restricts the socket to root (0600).
pub fn bind(path: &Path) -> io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match UnixStream::connect(path) {
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "another sipfilter daemon is running (it answers on {})",
                    path.display()
                ),
            ));
        }
        Err(_) => {
            let _ = std::fs::remove_file(path);
        }
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The uid of the process at the other end of `stream`.
pub fn peer_uid(stream: &tokio::net::UnixStream) -> io::Result<u32> {
    Ok(stream.peer_cred()?.uid())
}
