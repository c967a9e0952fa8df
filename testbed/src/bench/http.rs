//! A tiny static-file HTTP/1.1 server and client, run by the benchmark
//! inside the namespaces as hidden subcommands of `baton-testbed`
//! (`http-serve`, `http-fetch`). Enough for the baselines (one file, GET
//! and HEAD, `Content-Length`, `Connection: close`) and for asking the
//! BitTorrent tracker whether the seeder has announced; nothing more.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Longest request or response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Most connections served at once.
const MAX_CONNECTIONS: usize = 2048;

/// `baton-testbed http-serve`: serves one file to every GET, until killed.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpServeArgs {
    /// The file to serve (whatever the request path).
    #[arg(long)]
    pub file: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// TCP port to listen on.
    #[arg(long)]
    pub port: u16,
    /// Created once the server listens (for whoever waits for it).
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

/// `baton-testbed http-fetch`: downloads a URL into a file.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpFetchArgs {
    /// `http://HOST:PORT/PATH` (no TLS, no redirects).
    #[arg(long)]
    pub url: String,
    /// Where to write the body; written to `<out>.part` and renamed into
    /// place when complete.
    #[arg(long)]
    pub out: PathBuf,
    /// Seconds without progress before giving up.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// Runs the server; returns only on a fatal error.
pub fn http_serve(args: &HttpServeArgs) -> Result<()> {
    let meta =
        std::fs::metadata(&args.file).with_context(|| format!("cannot serve {}", args.file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", args.file.display());
    }
    let listener = TcpListener::bind(SocketAddr::new(args.bind, args.port))
        .with_context(|| format!("cannot listen on {}:{}", args.bind, args.port))?;
    if let Some(ready) = &args.ready_file {
        std::fs::write(ready, b"ready\n").with_context(|| format!("cannot write {}", ready.display()))?;
    }
    let active = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(err) => {
                eprintln!("http-serve: accept: {err}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        use std::sync::atomic::Ordering;
        if active.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let file = args.file.clone();
        let active = std::sync::Arc::clone(&active);
        std::thread::spawn(move || {
            let peer = stream.peer_addr().ok();
            if let Err(err) = serve_one(stream, &file) {
                eprintln!("http-serve: {peer:?}: {err:#}");
            }
            active.fetch_sub(1, Ordering::Relaxed);
        });
    }
    Ok(())
}

fn serve_one(stream: TcpStream, file: &Path) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let head = read_head(&mut reader)?;
    let mut stream = stream;
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (method, path, version) = (parts.next(), parts.next(), parts.next());
    let ok_shape =
        path.is_some_and(|p| p.starts_with('/')) && version.is_some_and(|v| v.starts_with("HTTP/1."));
    if !ok_shape {
        respond_error(&mut stream, "400 Bad Request")?;
        return Ok(());
    }
    let head_only = match method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => {
            respond_error(&mut stream, "405 Method Not Allowed")?;
            return Ok(());
        }
    };
    let mut f = std::fs::File::open(file)?;
    let len = f.metadata()?.len();
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    if !head_only {
        // File to socket: std uses sendfile(2) here.
        let sent = io::copy(&mut f, &mut stream)?;
        if sent != len {
            bail!("sent {sent} of {len} bytes");
        }
    }
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}

fn respond_error(stream: &mut TcpStream, status: &str) -> Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    Ok(())
}

/// Reads up to and including the blank line that ends a head.
fn read_head<R: BufRead>(r: &mut R) -> Result<String> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = r.by_ref().take(MAX_HEAD as u64).read_until(b'\n', &mut head)?;
        if n == 0 {
            bail!("connection closed in the middle of the head");
        }
        if head.len() > MAX_HEAD {
            bail!("head longer than {MAX_HEAD} bytes");
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    String::from_utf8(head).context("head is not UTF-8")
}

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub host: String,
    pub port: u16,
    pub path: String,
}

pub(crate) fn parse_url(url: &str) -> Result<Url> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .with_context(|| format!("{url:?}: bad port {p:?}"))?,
        ),
        None => (authority, 80),
    };
    if host.is_empty() {
        bail!("{url:?}: no host");
    }
    Ok(Url {
        host: host.to_owned(),
        port,
        path: path.to_owned(),
    })
}

/// Downloads `args.url` into `args.out`.
pub fn http_fetch(args: &HttpFetchArgs) -> Result<()> {
    let url = parse_url(&args.url)?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let addr = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", url.host))?
        .next()
        .with_context(|| format!("no address for {}", url.host))?;
    let stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut w = stream.try_clone()?;
    write!(
        w,
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: baton-testbed\r\nConnection: close\r\n\r\n",
        url.path, url.host, url.port
    )?;
    w.flush()?;
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    let head = read_head(&mut reader).with_context(|| format!("reading the answer of {addr}"))?;
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        bail!("{}: {status}", args.url);
    }
    let mut length: Option<u64> = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().context("bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") && !value.eq_ignore_ascii_case("identity") {
            bail!("{}: Transfer-Encoding {value} is not supported", args.url);
        }
    }
    let part = {
        let mut p = args.out.clone().into_os_string();
        p.push(".part");
        PathBuf::from(p)
    };
    let mut file =
        std::fs::File::create(&part).with_context(|| format!("cannot create {}", part.display()))?;
    let got = match length {
        Some(len) => io::copy(&mut reader.by_ref().take(len), &mut file)?,
        None => io::copy(&mut reader, &mut file)?,
    };
    if let Some(len) = length
        && got != len
    {
        let _ = std::fs::remove_file(&part);
        bail!("{}: got {got} of {len} bytes", args.url);
    }
    file.sync_data().ok();
    drop(file);
    std::fs::rename(&part, &args.out)
        .with_context(|| format!("cannot rename {} into place", part.display()))?;
    Ok(())
}

/// The hidden subcommands as one command line, for running them from a
/// binary other than baton-testbed's (the unit tests do).
#[derive(clap::Parser, Debug)]
#[command(name = "baton-testbed")]
enum HelperCli {
    HttpServe(HttpServeArgs),
    HttpFetch(HttpFetchArgs),
}

/// Runs `http-serve ...` or `http-fetch ...` given as arguments (without
/// the program name).
pub fn helper_main(args: &[String]) -> Result<()> {
    use clap::Parser;
    let cli =
        HelperCli::try_parse_from(std::iter::once("baton-testbed".to_owned()).chain(args.iter().cloned()))?;
    match cli {
        HelperCli::HttpServe(a) => http_serve(&a),
        HelperCli::HttpFetch(a) => http_fetch(&a),
    }
}

/// `%XX` for every byte (for a raw info hash in a tracker URL).
pub(crate) fn percent_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}
