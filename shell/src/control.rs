//! The local control socket: a Unix socket in a daemon's data directory through which its
//! owner asks it things (`baton-node status`). Only the owner may connect: the socket is
//! made mode 0600 before it gets its name, and a peer of another user (root aside) is
//! refused by its credentials. One JSON request and one JSON answer per connection, each
//! one line, each with a size limit and a time limit.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The socket's name in the data directory.
pub const SOCKET_NAME: &str = "control.sock";
/// Largest request accepted.
pub const MAX_REQUEST: usize = 16 * 1024;
/// Largest answer read by a client.
pub const MAX_ANSWER: usize = 1024 * 1024;
/// Time to read a request or an answer, and to write one.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound control socket; removes its file when dropped.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

/// Binds the control socket at `dir/control.sock`, mode 0600. A socket file left by a
/// process that is gone is replaced; one that answers is not (another daemon uses it).
pub async fn bind(dir: &Path) -> Result<ControlSocket> {
    let path = dir.join(SOCKET_NAME);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            bail!("{} is in use by a running process; stop it first", path.display());
        }
        std::fs::remove_file(&path).with_context(|| format!("cannot remove the stale {}", path.display()))?;
    }
    // bound under a name nobody knows, made 0600, then renamed into place
    let tmp = dir.join(format!(".{SOCKET_NAME}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).with_context(|| format!("cannot bind {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(ControlSocket { listener, path })
}

impl ControlSocket {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next connection from this user (or root); others are closed unanswered.
    pub async fn accept(&self) -> Result<UnixStream> {
        loop {
            let (s, _) = self.listener.accept().await?;
            let me = owner_uid(&self.path);
            match s.peer_cred() {
                Ok(c) if c.uid() == me || c.uid() == 0 => return Ok(s),
                Ok(c) => tracing::warn!(
                    "control socket: refused a connection from uid {} (only uid {me} may ask)",
                    c.uid()
                ),
                Err(e) => tracing::warn!("control socket: cannot read the peer's credentials: {e}"),
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The user who made the socket (this process's user).
fn owner_uid(path: &Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}

async fn read_line(s: &mut (impl tokio::io::AsyncRead + Unpin), max: usize) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut r = BufReader::new(s).take(max as u64 + 1);
    tokio::time::timeout(IO_TIMEOUT, r.read_until(b'\n', &mut buf))
        .await
        .context("timed out")??;
    if buf.len() > max {
        bail!("message over {max} bytes");
    }
    Ok(buf)
}

/// Reads one request (a JSON line) from a connection.
pub async fn read_request<T: DeserializeOwned>(s: &mut UnixStream) -> Result<T> {
    let line = read_line(s, MAX_REQUEST).await?;
    serde_json::from_slice(&line).context("the request is not valid JSON for this daemon")
}

/// Writes one answer (a JSON line) and closes the connection.
pub async fn write_answer<T: Serialize>(mut s: UnixStream, answer: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec(answer)?;
    bytes.push(b'\n');
    tokio::time::timeout(IO_TIMEOUT, async {
        s.write_all(&bytes).await?;
        s.shutdown().await
    })
    .await
    .context("timed out")??;
    Ok(())
}

/// Asks the daemon whose data directory is `dir`: one request, one answer.
pub async fn call<Q: Serialize, A: DeserializeOwned>(dir: &Path, request: &Q) -> Result<A> {
    let path = dir.join(SOCKET_NAME);
    let mut s = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "cannot connect to {}: is the daemon running with data directory {}, and are you its user?",
            path.display(),
            dir.display()
        )
    })?;
    let mut bytes = serde_json::to_vec(request)?;
    bytes.push(b'\n');
    tokio::time::timeout(IO_TIMEOUT, s.write_all(&bytes))
        .await
        .context("timed out sending the request")??;
    let line = read_line(&mut s, MAX_ANSWER)
        .await
        .context("no answer from the daemon")?;
    serde_json::from_slice(&line).context("the daemon's answer is not valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[tokio::test]
    async fn one_request_one_answer_private_socket_limits() {
        let d = tempfile::tempdir().unwrap();
        let sock = bind(d.path()).await.unwrap();
        let mode = std::fs::metadata(sock.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let mut s = sock.accept().await.unwrap();
                match read_request::<Value>(&mut s).await {
                    Ok(q) => write_answer(s, &json!({"echo": q})).await.unwrap(),
                    Err(e) => write_answer(s, &json!({"error": format!("{e:#}")}))
                        .await
                        .unwrap(),
                }
            }
            sock
        });
        let a: Value = call(d.path(), &json!({"cmd": "status"})).await.unwrap();
        assert_eq!(a, json!({"echo": {"cmd": "status"}}));
        // an oversized request is refused with a reason
        let mut s = UnixStream::connect(d.path().join(SOCKET_NAME)).await.unwrap();
        s.write_all(&vec![b' '; MAX_REQUEST + 10]).await.unwrap();
        let line = read_line(&mut s, MAX_ANSWER).await.unwrap();
        assert!(String::from_utf8_lossy(&line).contains("over 16384 bytes"));
        let sock = server.await.unwrap();
        // a second daemon cannot take a socket in use
        let e = format!("{:#}", bind(d.path()).await.unwrap_err());
        assert!(e.contains("in use"), "{e}");
        drop(sock);
        assert!(!d.path().join(SOCKET_NAME).exists(), "removed on drop");
        // a stale socket file (its process gone) is replaced
        drop(std::os::unix::net::UnixListener::bind(d.path().join(SOCKET_NAME)).unwrap());
        let _again = bind(d.path()).await.unwrap();
        // nobody listening: a clear error
        let e = format!(
            "{:#}",
            call::<_, Value>(&d.path().join("nothing"), &json!({}))
                .await
                .unwrap_err()
        );
        assert!(e.contains("is the daemon running"), "{e}");
    }
}
