//! The operator's channel to a running daemon: a Unix socket in its data directory,
//! readable only by its owner, carrying one JSON request and one JSON response per
//! connection.
//!
//! The daemon calls [`ControlServer::bind`] (mode 0600; refused while another process
//! answers on the socket; a stale socket is removed) and receives each well-formed request
//! as a [`Call`] on a channel, answering it with [`Call::reply`]. Framing: the client
//! writes its request and shuts its write side; the server reads to end of stream, at most
//! [`MAX_REQUEST`] bytes within [`TIMEOUT`], then writes the reply (`{"ok": ...}` or
//! `{"error": "..."}`) and closes. Connections from another user are refused (peer
//! credentials), root's too: a daemon run as root is asked by root, one run as a user by
//! that user, and nobody else (root can get around a socket's mode anyway, but a command
//! run with sudo against a user's daemon by mistake is told no rather than obeyed). The
//! client side is [`call`], blocking, for command-line tools. Generic over the request and
//! response types: `baton-nms` (its operator commands) and `baton-node` (`status`) both
//! serve theirs here, at [`socket_path`] of their data directory.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// The socket's file name in a daemon's data directory.
pub const SOCKET_NAME: &str = "control.sock";

/// Where the daemon with data directory `data_dir` listens.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// The largest request the server reads.
pub const MAX_REQUEST: usize = 64 << 10;
/// The largest response the client reads.
pub const MAX_RESPONSE: usize = 16 << 20;
/// How long one request may take, each way.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 16;

/// Why the control socket cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("is {daemon} running? (no socket at {})", .path.display())]
    NotRunning { daemon: String, path: PathBuf },
    #[error(
        "another process (a running {daemon}?) answers on {}: stop it, or give this one another --data-dir",
        .path.display()
    )]
    InUse { daemon: String, path: PathBuf },
    #[error("{} exists and is not a socket: move it away so that {daemon} can create its control socket there", .path.display())]
    NotASocket { daemon: String, path: PathBuf },
    #[error("control socket {}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{daemon} did not answer within {:?} on {}", TIMEOUT, .path.display())]
    Timeout { daemon: String, path: PathBuf },
    #[error("{daemon}'s answer on {} is not understood ({what}): is the command the same version as the daemon?", .path.display())]
    BadAnswer {
        daemon: String,
        path: PathBuf,
        what: String,
    },
    /// The daemon understood the request and refused it; the message says why.
    #[error("{0}")]
    Refused(String),
}

/// What travels back: the daemon's answer or its refusal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Reply<T> {
    Ok(T),
    Error(String),
}

/// One request received, with the way to answer it.
#[derive(Debug)]
pub struct Call<Req, Resp> {
    /// The request.
    pub request: Req,
    reply: oneshot::Sender<Result<Resp, String>>,
}

impl<Req, Resp> Call<Req, Resp> {
    /// Answers the request: the response, or a refusal saying what was wrong and what to do.
    pub fn reply(self, r: Result<Resp, String>) {
        let _ = self.reply.send(r);
    }
}

/// The daemon's control socket; removed when dropped.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ControlServer {
    /// Creates the socket at `path` (mode 0600) and serves it on the current tokio
    /// runtime; requests arrive on the returned channel. `daemon` names the program in
    /// messages. Refused if another process answers on `path`; a socket nobody answers on
    /// (left by a process that died) is replaced.
    pub fn bind<Req, Resp>(
        path: &Path,
        daemon: &str,
    ) -> Result<(ControlServer, mpsc::Receiver<Call<Req, Resp>>), ControlError>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
    {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(ControlError::InUse {
                        daemon: daemon.into(),
                        path: path.into(),
                    });
                }
                tracing::info!("removing the stale control socket {}", path.display());
                std::fs::remove_file(path).map_err(io(path))?;
            }
            Ok(_) => {
                return Err(ControlError::NotASocket {
                    daemon: daemon.into(),
                    path: path.into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(path)(e)),
        }
        // bound inside a private folder, made 0600 there, then moved into place: the socket
        // is never reachable by others, whatever the umask
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let private = tempfile::Builder::new()
            .prefix(".control-")
            .tempdir_in(parent)
            .map_err(io(path))?;
        std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).map_err(io(path))?;
        let tmp = private.path().join("s");
        let listener = UnixListener::bind(&tmp).map_err(io(path))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
        // the owner: only its connections are served
        let me = std::os::unix::fs::MetadataExt::uid(&std::fs::symlink_metadata(&tmp).map_err(io(path))?);
        std::fs::rename(&tmp, path).map_err(io(path))?;
        let (tx, rx) = mpsc::channel(MAX_CONNECTIONS);
        let task = tokio::spawn(accept_loop(listener, me, tx));
        Ok((
            ControlServer {
                path: path.to_path_buf(),
                task,
            },
            rx,
        ))
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

async fn accept_loop<Req, Resp>(listener: UnixListener, me: u32, tx: mpsc::Sender<Call<Req, Resp>>)
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if stream.peer_cred().map(|c| c.uid()).ok() != Some(me) {
            tracing::warn!("control socket: refused a connection from another user");
            continue;
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(2 * TIMEOUT, serve_one(stream, tx)).await;
        });
    }
}

async fn serve_one<Req, Resp>(mut stream: UnixStream, tx: mpsc::Sender<Call<Req, Resp>>)
where
    Req: DeserializeOwned,
    Resp: Serialize,
{
    let mut buf = Vec::new();
    let mut limited = (&mut stream).take(MAX_REQUEST as u64 + 1);
    let read = limited.read_to_end(&mut buf);
    let answer: Result<Resp, String> = match tokio::time::timeout(TIMEOUT, read).await {
        Err(_) => Err(format!(
            "no complete request within {TIMEOUT:?} (write one JSON request, then shut the write side)"
        )),
        Ok(Err(e)) => Err(format!("cannot read the request: {e}")),
        Ok(Ok(_)) if buf.len() > MAX_REQUEST => {
            // read a bounded rest, so that the client gets the answer rather than a reset
            let mut rest = (&mut stream).take(4 * MAX_REQUEST as u64);
            let _ = tokio::time::timeout(TIMEOUT, tokio::io::copy(&mut rest, &mut tokio::io::sink())).await;
            Err(format!("the request is larger than {MAX_REQUEST} bytes"))
        }
        Ok(Ok(_)) => match serde_json::from_slice::<Req>(&buf) {
            Err(e) => Err(format!(
                "the request is not understood ({e}): is the command the same version as the daemon?"
            )),
            Ok(request) => {
                let (rtx, rrx) = oneshot::channel();
                if tx.send(Call { request, reply: rtx }).await.is_err() {
                    return;
                }
                match tokio::time::timeout(TIMEOUT, rrx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err("the daemon is stopping".into()),
                    Err(_) => Err(format!("the daemon did not answer within {TIMEOUT:?}")),
                }
            }
        },
    };
    let reply = match answer {
        Ok(r) => Reply::Ok(r),
        Err(e) => Reply::Error(e),
    };
    let bytes = serde_json::to_vec(&reply).unwrap_or_else(|e| {
        serde_json::to_vec(&Reply::<()>::Error(format!("cannot encode the answer: {e}"))).unwrap_or_default()
    });
    let _ = tokio::time::timeout(TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}

/// Sends `request` to the daemon whose socket is `path` and returns its answer (blocking).
/// `daemon` names it in messages ("is baton-nms running? (no socket at PATH)").
pub fn call<Req, Resp>(path: &Path, daemon: &str, request: &Req) -> Result<Resp, ControlError>
where
    Req: Serialize,
    Resp: DeserializeOwned,
{
    let mut s = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NotRunning {
                daemon: daemon.into(),
                path: path.into(),
            });
        }
        Err(e) => return Err(io(path)(e)),
    };
    s.set_read_timeout(Some(TIMEOUT + Duration::from_secs(2)))
        .map_err(io(path))?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io(path))?;
    let timeout = |e: std::io::Error| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            ControlError::Timeout {
                daemon: daemon.into(),
                path: path.into(),
            }
        } else {
            io(path)(e)
        }
    };
    let bytes = serde_json::to_vec(request)
        .map_err(|e| ControlError::Refused(format!("cannot encode the request: {e}")))?;
    s.write_all(&bytes).map_err(timeout)?;
    s.shutdown(std::net::Shutdown::Write).map_err(timeout)?;
    let mut buf = Vec::new();
    (&mut s)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(timeout)?;
    let bad = |what: String| ControlError::BadAnswer {
        daemon: daemon.into(),
        path: path.into(),
        what,
    };
    if buf.len() > MAX_RESPONSE {
        return Err(bad(format!("larger than {MAX_RESPONSE} bytes")));
    }
    match serde_json::from_slice::<Reply<Resp>>(&buf).map_err(|e| bad(e.to_string()))? {
        Reply::Ok(r) => Ok(r),
        Reply::Error(e) => Err(ControlError::Refused(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Ping(u32);

    async fn echo(path: &Path) -> ControlServer {
        let (srv, mut rx) = ControlServer::bind::<Ping, Ping>(path, "testd").unwrap();
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                let n = c.request.0;
                c.reply(if n == 0 {
                    Err("zero is refused".into())
                } else {
                    Ok(Ping(n + 1))
                });
            }
        });
        srv
    }

    fn blocking_call(path: &Path, n: u32) -> Result<Ping, ControlError> {
        call::<Ping, Ping>(path, "testd", &Ping(n))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_gets_its_answer_over_an_owner_only_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("control.sock");
        let srv = echo(&path).await;
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777, 0o600);
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || (blocking_call(&p, 41), blocking_call(&p, 0)))
            .await
            .unwrap();
        assert_eq!(r.0.unwrap(), Ping(42));
        assert_eq!(r.1.unwrap_err().to_string(), "zero is refused");
        // nothing of the private folder is left behind
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        drop(srv);
        assert!(!path.exists(), "the socket outlived its server");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_server_is_refused_and_a_stale_socket_replaced() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("control.sock");
        let srv = echo(&path).await;
        let e = ControlServer::bind::<Ping, Ping>(&path, "testd").unwrap_err();
        assert!(matches!(e, ControlError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("answers on"), "{e}");
        drop(srv);
        // a socket left by a process that died: bound, never served, not removed
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let _srv = echo(&path).await;
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || blocking_call(&p, 1))
            .await
            .unwrap();
        assert_eq!(r.unwrap(), Ping(2));
        // anything else at that path is left alone
        let other = d.path().join("file");
        std::fs::write(&other, b"x").unwrap();
        let e = ControlServer::bind::<Ping, Ping>(&other, "testd").unwrap_err();
        assert!(matches!(e, ControlError::NotASocket { .. }), "{e}");
    }

    #[test]
    fn no_daemon_is_said_plainly() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("control.sock");
        let e = blocking_call(&path, 1).unwrap_err().to_string();
        assert_eq!(e, format!("is testd running? (no socket at {})", path.display()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversize_and_garbage_requests_are_refused_with_a_reason() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("control.sock");
        let _srv = echo(&path).await;
        let p = path.clone();
        let (big, garbage) = tokio::task::spawn_blocking(move || {
            let raw = |bytes: Vec<u8>| {
                let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
                // the server may stop reading once past the limit
                let _ = s.write_all(&bytes);
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            };
            (raw(vec![b' '; MAX_REQUEST + 10]), raw(b"{nope".to_vec()))
        })
        .await
        .unwrap();
        assert!(big.contains("larger than"), "{big}");
        assert!(garbage.contains("not understood"), "{garbage}");
    }
}
