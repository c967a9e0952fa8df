//! The libp2p transport shared by `baton-node` and `baton-nms`: TCP + Noise + Yamux with
//! two request-response protocols, control (CBOR) and chunk (raw frames), both framed
//! with a u32 big-endian length prefix and bounded by the protocol's limits; plus
//! `identify` and `ping` so that standard libp2p tools can talk to a Baton process, and
//! connection limits.
//!
//! Everything a peer sends is bounded before it is buffered (see `docs/security.md`):
//! - a frame's buffer grows as its bytes arrive, never from the announced length alone;
//! - only an offer may be larger than [`MAX_SMALL_CONTROL`]; the first bytes of a frame
//!   tell (see [`control_frame_limit`]);
//! - the large inbound frames (offers over [`MAX_SMALL_CONTROL`]) being read at once
//!   share one byte budget ([`Limits::inbound_control_bytes`]); one that does not fit is
//!   refused at once, so small messages never wait behind them;
//! - an inbound request must arrive within [`FRAME_HEADER_TIME`] plus its length at
//!   [`FRAME_MIN_RATE`];
//! - streams per connection, connections per peer and in total are capped;
//! - a request that cannot be read reaches the shell as [`Inbound::Unreadable`], with the
//!   peer's id, so that it is logged (libp2p itself only traces it at debug level).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baton_protocol::limits::{MAX_CHUNK_FRAME, MAX_CHUNK_REQUEST, MAX_CONTROL_MESSAGE, MAX_SMALL_CONTROL};
use baton_protocol::wire::{
    CHUNK_PROTOCOL, CONTROL_PROTOCOL, OFFER_PREFIX, control_frame_limit, decode_control, encode_control,
};
use baton_protocol::{ChunkRequest, ChunkResponse, Control, Keypair};
use futures::prelude::*;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, connection_limits, identify, noise, ping, request_response,
    tcp, yamux,
};

/// How long a request may wait for its response. Chunk requests are held by a parent
/// that does not have the chunk yet (up to 15 s), then the chunk crosses a possibly slow
/// link: keep this generous.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an inbound request may take to arrive, beyond its size at [`FRAME_MIN_RATE`].
pub const FRAME_HEADER_TIME: Duration = Duration::from_secs(10);
/// The slowest rate, in bytes per second, at which an inbound request may arrive.
pub const FRAME_MIN_RATE: u64 = 512 * 1024;
/// Bytes read at a time into a growing frame buffer.
const READ_STEP: usize = 64 * 1024;
/// The libp2p identify protocol version of Baton processes.
pub const IDENTIFY_PROTOCOL: &str = "/baton/1";

/// An inbound request as the codecs deliver it: the message, or why it could not be read
/// (malformed, over a limit, too slow, refused for lack of budget). Outbound requests are
/// always `Msg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<T> {
    Msg(T),
    Unreadable(String),
}

impl<T> Inbound<T> {
    fn from_read(r: io::Result<T>) -> io::Result<Self> {
        Ok(match r {
            Ok(m) => Inbound::Msg(m),
            Err(e) => Inbound::Unreadable(e.to_string()),
        })
    }

    fn outbound(self) -> io::Result<T> {
        match self {
            Inbound::Msg(m) => Ok(m),
            Inbound::Unreadable(_) => Err(io::Error::other("an unreadable request is never sent")),
        }
    }
}

/// Caps on what peers can make this process hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Established connections with one peer.
    pub per_peer: u32,
    /// Established inbound connections in total.
    pub incoming: u32,
    /// Inbound connections still in their handshake.
    pub pending_incoming: u32,
    /// Concurrent control streams per connection (both directions).
    pub control_streams: usize,
    /// Concurrent chunk streams per connection (both directions).
    pub chunk_streams: usize,
    /// Bytes of large inbound control frames (offers over [`MAX_SMALL_CONTROL`]) being
    /// read at once, over all peers.
    pub inbound_control_bytes: usize,
}

impl Limits {
    /// A node talks to its parent, its children, the NMS and a few ancestors.
    pub fn node() -> Self {
        Limits {
            per_peer: 3,
            incoming: 64,
            pending_incoming: 32,
            control_streams: 16,
            chunk_streams: 64,
            inbound_control_bytes: MAX_CONTROL_MESSAGE,
        }
    }

    /// The NMS hears from every node of the fleet (authentication, progress, reports).
    pub fn nms() -> Self {
        Limits {
            incoming: 1024,
            pending_incoming: 128,
            ..Limits::node()
        }
    }
}

/// A byte budget shared by the frames being read; a reservation is given back on drop.
#[derive(Debug, Default)]
pub struct FrameBudget {
    used: AtomicUsize,
    limit: usize,
}

/// Bytes reserved from a [`FrameBudget`].
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<FrameBudget>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl FrameBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(FrameBudget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Reserves `bytes`, or `None` if the budget cannot hold them now.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + bytes <= self.limit).then_some(u + bytes)
            })
            .ok()
            .map(|_| Reservation {
                budget: self.clone(),
                bytes,
            })
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

async fn read_len<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<usize> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    Ok(u32::from_be_bytes(len) as usize)
}

/// Reads the rest of a frame of `len` bytes into `buf` (which may hold its first bytes),
/// growing the buffer as the bytes arrive.
async fn read_body<T: AsyncRead + Unpin + Send>(io: &mut T, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    while buf.len() < len {
        let at = buf.len();
        let step = (len - at).min(READ_STEP);
        buf.resize(at + step, 0);
        io.read_exact(&mut buf[at..]).await?;
    }
    Ok(())
}

/// Reads a frame of at most `limit` bytes, growing the buffer as bytes arrive.
async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let len = read_len(io).await?;
    if len > limit {
        return Err(invalid(format!(
            "frame of {len} bytes is over the limit of {limit}"
        )));
    }
    let mut buf = Vec::new();
    read_body(io, &mut buf, len).await?;
    Ok(buf)
}

/// The time an inbound request of `len` bytes may take to arrive.
pub fn frame_time(len: usize) -> Duration {
    FRAME_HEADER_TIME + Duration::from_millis(len as u64 * 1000 / FRAME_MIN_RATE)
}

/// Runs `read` under the inbound time limit for a frame of up to `len` bytes.
async fn in_time<F: Future<Output = io::Result<R>>, R>(len: usize, read: F) -> io::Result<R> {
    match tokio::time::timeout(frame_time(len), read).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "a frame of {len} bytes did not arrive within {:?}",
                frame_time(len)
            ),
        )),
    }
}

/// Reads an inbound control frame: small unless it is an offer; a large one within the
/// shared budget.
async fn read_control_request<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    budget: &Arc<FrameBudget>,
) -> io::Result<Control> {
    let len = in_time(0, read_len(io)).await?;
    if len > MAX_CONTROL_MESSAGE {
        return Err(invalid(format!(
            "control frame of {len} bytes is over the limit of {MAX_CONTROL_MESSAGE}"
        )));
    }
    let mut buf = Vec::new();
    if len > MAX_SMALL_CONTROL {
        buf.resize(OFFER_PREFIX.len(), 0);
        in_time(0, io.read_exact(&mut buf)).await?;
        let limit = control_frame_limit(&buf);
        if len > limit {
            return Err(invalid(format!(
                "control frame of {len} bytes that is not an offer (limit {limit})"
            )));
        }
    }
    let _reserved = if len > MAX_SMALL_CONTROL {
        let Some(r) = budget.try_reserve(len) else {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "busy: {} bytes of large control frames are being read; refused one of {len} bytes",
                    budget.used()
                ),
            ));
        };
        Some(r)
    } else {
        None
    };
    in_time(len, read_body(io, &mut buf, len)).await?;
    decode_control(&buf).map_err(invalid)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

/// Control messages: one CBOR [`Control`] per request and per response.
#[derive(Debug, Clone)]
pub struct ControlCodec {
    budget: Arc<FrameBudget>,
}

impl ControlCodec {
    pub fn new(budget: Arc<FrameBudget>) -> Self {
        ControlCodec { budget }
    }
}

impl request_response::Codec for ControlCodec {
    type Protocol = StreamProtocol;
    type Request = Inbound<Control>;
    type Response = Control;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Inbound<Control>> {
        Inbound::from_read(read_control_request(io, &self.budget).await)
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Control> {
        // every answer (OfferReply, ReceiptAck, AuthReply, Ack, ProbeReply, Error) is small
        decode_control(&read_frame(io, MAX_SMALL_CONTROL).await?).map_err(invalid)
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Inbound<Control>,
    ) -> io::Result<()> {
        write_frame(io, &encode_control(&req.outbound()?)).await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Control,
    ) -> io::Result<()> {
        write_frame(io, &encode_control(&res)).await
    }
}

/// Chunk requests and responses as raw frames.
#[derive(Debug, Clone, Default)]
pub struct ChunkCodec;

impl request_response::Codec for ChunkCodec {
    type Protocol = StreamProtocol;
    type Request = Inbound<ChunkRequest>;
    type Response = ChunkResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Inbound<ChunkRequest>> {
        let read = async {
            let frame = in_time(MAX_CHUNK_REQUEST, read_frame(io, MAX_CHUNK_REQUEST)).await?;
            ChunkRequest::decode(&frame).map_err(invalid)
        };
        Inbound::from_read(read.await)
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ChunkResponse> {
        // a response to this process's own request, from a source it chose; the request
        // timeout bounds it (a parent may hold the request until it has the chunk)
        ChunkResponse::decode(&read_frame(io, MAX_CHUNK_FRAME).await?).map_err(invalid)
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Inbound<ChunkRequest>,
    ) -> io::Result<()> {
        write_frame(io, &req.outbound()?.encode()).await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: ChunkResponse,
    ) -> io::Result<()> {
        let mut head = Vec::with_capacity(ChunkResponse::HEADER_LEN);
        res.encode_header_into(&mut head);
        io.write_all(&((head.len() + res.data.len()) as u32).to_be_bytes())
            .await?;
        io.write_all(&head).await?;
        io.write_all(&res.data).await?;
        io.close().await
    }
}

/// The libp2p behaviour of every Baton process.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub control: request_response::Behaviour<ControlCodec>,
    pub chunk: request_response::Behaviour<ChunkCodec>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Behaviour")
    }
}

/// Fails if a TCP port other than 0 is already taken. libp2p listens with SO_REUSEPORT,
/// so a second daemon on a taken port would otherwise start and share its connections.
pub fn check_port_free(listen: &Multiaddr) -> anyhow::Result<()> {
    let mut ip = None;
    let mut port = None;
    for p in listen.iter() {
        match p {
            libp2p::multiaddr::Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            libp2p::multiaddr::Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            libp2p::multiaddr::Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    if let (Some(ip), Some(port)) = (ip, port)
        && port != 0
        && let Err(e) = std::net::TcpListener::bind((ip, port))
    {
        anyhow::bail!(
            "cannot listen on TCP port {port} of {ip}: {e}; another program (perhaps another baton-node or baton-nms) holds it: stop it or give another port with --listen"
        );
    }
    Ok(())
}

/// Builds the swarm and starts listening on `listen` (e.g. `/ip4/0.0.0.0/tcp/0`).
/// `agent` is the identify agent version, e.g. `baton-node/0.1.0`.
pub fn build_swarm(
    keypair: Keypair,
    listen: Multiaddr,
    agent: &str,
    limits: Limits,
) -> anyhow::Result<Swarm<Behaviour>> {
    check_port_free(&listen)?;
    let cfg = |streams| {
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(streams)
    };
    let budget = FrameBudget::new(limits.inbound_control_bytes);
    let conn_limits = connection_limits::ConnectionLimits::default()
        .with_max_established_per_peer(Some(limits.per_peer))
        .with_max_established_incoming(Some(limits.incoming))
        .with_max_pending_incoming(Some(limits.pending_incoming));
    let agent = agent.to_string();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            move || {
                let mut y = yamux::Config::default();
                y.set_max_num_streams(limits.control_streams + limits.chunk_streams + 16);
                y
            },
        )?
        .with_behaviour(|key| Behaviour {
            limits: connection_limits::Behaviour::new(conn_limits),
            control: request_response::Behaviour::with_codec(
                ControlCodec::new(budget),
                [(
                    StreamProtocol::new(CONTROL_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                cfg(limits.control_streams),
            ),
            chunk: request_response::Behaviour::new(
                [(
                    StreamProtocol::new(CHUNK_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                cfg(limits.chunk_streams),
            ),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                    .with_agent_version(agent)
                    .with_push_listen_addr_updates(false),
            ),
            ping: ping::Behaviour::default(),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    swarm.listen_on(listen)?;
    Ok(swarm)
}

/// The TCP port `baton-node` listens on unless told otherwise.
pub const NODE_PORT: u16 = 4100;
/// The TCP port `baton-nms` listens on unless told otherwise.
pub const NMS_PORT: u16 = 4101;

/// A `--listen` value: `IP:PORT` (`0.0.0.0:4100`, `[::]:4100`) or a bare IP, which
/// gets `default_port`. Port 0 picks any free port. The error says what to give.
pub fn parse_listen(s: &str, default_port: u16) -> Result<std::net::SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, default_port));
    }
    let port = match s.parse::<u16>() {
        Ok(p) => format!("{p}"),
        Err(_) => format!("{default_port}"),
    };
    Err(format!(
        "`{s}` is not a listen address: give an IP address and a TCP port, e.g. 0.0.0.0:{port} (every IPv4 address) or [::]:{port} (every IPv6 and IPv4 address)"
    ))
}

/// The IP and TCP port of a `/ip4|ip6/.../tcp/...` multiaddr.
pub fn socket_of(addr: &Multiaddr) -> Option<std::net::SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            libp2p::multiaddr::Protocol::Ip4(a) => ip = Some(std::net::IpAddr::V4(a)),
            libp2p::multiaddr::Protocol::Ip6(a) => ip = Some(std::net::IpAddr::V6(a)),
            libp2p::multiaddr::Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Some(std::net::SocketAddr::new(ip?, port?))
}

/// The addresses discovery should advertise for a daemon listening on `listen`: its IP
/// when it is a specific one, none (discovery then publishes every interface's) when it
/// is `0.0.0.0` or `::`.
pub fn advertised_ips(listen: &Multiaddr) -> Vec<std::net::IpAddr> {
    socket_of(listen)
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
        .into_iter()
        .collect()
}

/// The addresses a daemon gives back to its swarm after a dial to a peer failed: libp2p
/// forgets an address that failed (a restarting peer refuses connections for a moment),
/// and discovery reports an advert it already reported only when it changes. Holds the
/// peers named with `--peer` and the latest addresses discovery gave for each peer (as
/// many as discovery tracks: it bounds its instances).
#[derive(Debug, Default)]
pub struct AddressBook {
    static_peers: Vec<(libp2p::PeerId, Multiaddr)>,
    discovered: HashMap<libp2p::PeerId, Vec<Multiaddr>>,
}

impl AddressBook {
    /// A peer named on the command line, with its address.
    pub fn add_static(&mut self, peer: libp2p::PeerId, addr: Multiaddr) {
        self.static_peers.push((peer, addr));
    }

    /// Discovery found `peer` at `addrs` (replacing what it said before).
    pub fn discovered(&mut self, peer: libp2p::PeerId, addrs: Vec<Multiaddr>) {
        self.discovered.insert(peer, addrs);
    }

    /// Discovery lost `peer`.
    pub fn lost(&mut self, peer: &libp2p::PeerId) {
        self.discovered.remove(peer);
    }

    /// Every address known for `peer`, to give back after a failed dial.
    pub fn of<'a>(&'a self, peer: &'a libp2p::PeerId) -> impl Iterator<Item = &'a Multiaddr> + 'a {
        let named = self
            .static_peers
            .iter()
            .filter(move |(p, _)| p == peer)
            .map(|(_, a)| a);
        named.chain(self.discovered.get(peer).into_iter().flatten())
    }
}

/// `/ip4/<ip>/tcp/<port>` (or ip6).
pub fn tcp_addr(ip: std::net::IpAddr, port: u16) -> Multiaddr {
    let mut a = Multiaddr::from(ip);
    a.push(libp2p::multiaddr::Protocol::Tcp(port));
    a
}

/// The peer id at the end of a multiaddr (`.../p2p/<id>`), if any.
pub fn peer_of(addr: &Multiaddr) -> Option<libp2p::PeerId> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

/// Drives the swarm until its listener on `listen` (the address given to
/// [`build_swarm`]) is up; returns the TCP port it listens on. libp2p opens IPv6 sockets
/// IPv6-only, so a listener on `[::]` gets a second one on `0.0.0.0` at the same port:
/// `[::]` means every address, IPv4 too, as elsewhere, and the IPv4 addresses mDNS
/// advertises can be reached. If that port is taken on IPv4, a warning says it listens on
/// IPv6 only.
pub async fn wait_for_port(swarm: &mut Swarm<Behaviour>, listen: &Multiaddr) -> anyhow::Result<u16> {
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    let port = loop {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } => {
                    if let Some(port) = address.iter().find_map(|p| match p {
                        libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                        _ => None,
                    }) {
                        break port;
                    }
                }
                libp2p::swarm::SwarmEvent::ListenerError { error, .. } => {
                    anyhow::bail!("cannot listen: {error}; check the --listen address")
                }
                libp2p::swarm::SwarmEvent::ListenerClosed { reason: Err(error), .. } => {
                    anyhow::bail!("cannot listen: {error}; check the --listen address")
                }
                _ => {}
            },
            _ = &mut deadline => anyhow::bail!("the listener did not come up within 10 s; check the --listen address"),
        }
    };
    let any_v6 = listen
        .iter()
        .next()
        .is_some_and(|p| p == libp2p::multiaddr::Protocol::Ip6(std::net::Ipv6Addr::UNSPECIFIED));
    if any_v6 {
        let v4 = tcp_addr(std::net::Ipv4Addr::UNSPECIFIED.into(), port);
        let why = match swarm.listen_on(v4.clone()) {
            Err(e) => Some(e.to_string()),
            Ok(id) => loop {
                tokio::select! {
                    ev = swarm.select_next_some() => match ev {
                        libp2p::swarm::SwarmEvent::NewListenAddr { listener_id, .. } if listener_id == id => break None,
                        libp2p::swarm::SwarmEvent::ListenerError { listener_id, error } if listener_id == id => {
                            break Some(error.to_string())
                        }
                        libp2p::swarm::SwarmEvent::ListenerClosed { listener_id, reason, .. } if listener_id == id => {
                            break Some(reason.err().map_or("closed".into(), |e| e.to_string()))
                        }
                        _ => {}
                    },
                    _ = &mut deadline => break Some("no answer within 10 s".into()),
                }
            },
        };
        if let Some(why) = why {
            tracing::warn!(
                port,
                "listening on IPv6 only: cannot also listen on {v4} ({why}); nodes on IPv4 cannot reach this one"
            );
        }
    }
    Ok(port)
}

/// What a request-response event means to a daemon, once the transport's bookkeeping is
/// done: a request to answer, or the answer or failure of one it sent (by its own id).
#[derive(Debug)]
pub enum Incoming<Req, Resp, Id> {
    /// A readable request; answer it through `channel`.
    Request {
        from: PeerId,
        msg: Req,
        channel: request_response::ResponseChannel<Resp>,
    },
    /// The answer to the request this process sent as `id`.
    Response { id: Id, msg: Resp },
    /// The request this process sent as `id` failed (dial, stream, timeout).
    Failed { id: Id, reason: String },
}

/// The outstanding requests of one protocol, written once for both daemons: it maps
/// libp2p's request ids to the daemon's own, and logs unreadable and failed inbound
/// requests (rate-limited, with the peer id).
#[derive(Debug)]
pub struct Requests<Id> {
    what: &'static str,
    out: HashMap<request_response::OutboundRequestId, Id>,
}

impl<Id> Requests<Id> {
    /// `what` names the protocol in logs (`control`, `chunk`).
    pub fn new(what: &'static str) -> Self {
        Requests {
            what,
            out: HashMap::new(),
        }
    }

    /// Remembers that libp2p's request `rid` is the daemon's `id`.
    pub fn sent(&mut self, rid: request_response::OutboundRequestId, id: Id) {
        self.out.insert(rid, id);
    }

    /// Requests sent and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.out.len()
    }

    /// Turns a swarm event of this protocol into what the daemon acts on; unreadable
    /// requests and inbound failures are logged to `log` and yield nothing.
    pub fn classify<Req, Resp>(
        &mut self,
        ev: request_response::Event<Inbound<Req>, Resp>,
        log: &mut FailureLog,
    ) -> Option<Incoming<Req, Resp, Id>> {
        use request_response::{Event, Message};
        match ev {
            Event::Message { peer, message, .. } => match message {
                Message::Request {
                    request: Inbound::Msg(msg),
                    channel,
                    ..
                } => Some(Incoming::Request {
                    from: peer,
                    msg,
                    channel,
                }),
                Message::Request {
                    request: Inbound::Unreadable(why),
                    ..
                } => {
                    log.unreadable(peer, self.what, &why);
                    None
                }
                Message::Response { request_id, response } => self
                    .out
                    .remove(&request_id)
                    .map(|id| Incoming::Response { id, msg: response }),
            },
            Event::OutboundFailure {
                request_id, error, ..
            } => self.out.remove(&request_id).map(|id| Incoming::Failed {
                id,
                reason: error.to_string(),
            }),
            Event::InboundFailure { peer, error, .. } => {
                log.inbound(peer, self.what, &error);
                None
            }
            Event::ResponseSent { .. } => None,
        }
    }
}

/// How often at most a peer's failed inbound requests are logged.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Peers remembered by [`FailureLog`]; beyond this the oldest entries are forgotten.
const FAILURE_LOG_PEERS: usize = 1024;

/// Logs failed inbound requests at warn with the peer id, at most once per
/// [`FAILURE_LOG_INTERVAL`] per peer (with the count of those not logged in between).
#[derive(Debug, Default)]
pub struct FailureLog {
    peers: HashMap<PeerId, (Instant, u64)>,
}

impl FailureLog {
    /// Records a failure; returns the line to log, if one is due.
    pub fn record(
        &mut self,
        now: Instant,
        peer: PeerId,
        what: &str,
        error: &dyn std::fmt::Display,
    ) -> Option<String> {
        if self.peers.len() >= FAILURE_LOG_PEERS && !self.peers.contains_key(&peer) {
            let cutoff = now.checked_sub(FAILURE_LOG_INTERVAL).unwrap_or(now);
            self.peers.retain(|_, (at, _)| *at > cutoff);
            if self.peers.len() >= FAILURE_LOG_PEERS {
                self.peers.clear();
            }
        }
        match self.peers.get_mut(&peer) {
            Some((at, skipped)) if now.duration_since(*at) < FAILURE_LOG_INTERVAL => {
                *skipped += 1;
                None
            }
            entry => {
                let skipped = entry.map(|(_, s)| *s).unwrap_or(0);
                self.peers.insert(peer, (now, 0));
                let more = if skipped > 0 {
                    format!(" ({skipped} more from this peer not logged)")
                } else {
                    String::new()
                };
                Some(format!(
                    "failed inbound {what} request from {peer}: {error}{more}"
                ))
            }
        }
    }

    /// Logs a request that could not be read, rate-limited.
    pub fn unreadable(&mut self, peer: PeerId, what: &str, why: &str) {
        if let Some(line) = self.record(Instant::now(), peer, what, &why) {
            tracing::warn!("{line}");
        }
    }

    /// Logs an inbound failure of a request-response protocol, rate-limited.
    pub fn inbound(&mut self, peer: PeerId, what: &str, error: &request_response::InboundFailure) {
        // a dropped response channel is this process's own choice, not the peer's doing
        if matches!(error, request_response::InboundFailure::ResponseOmission) {
            return;
        }
        if let Some(line) = self.record(Instant::now(), peer, what, error) {
            tracing::warn!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_book_gives_back_named_and_discovered_addresses_until_lost() {
        let (a, b) = (libp2p::PeerId::random(), libp2p::PeerId::random());
        let addr = |p: u16| tcp_addr("198.18.0.2".parse().unwrap(), p);
        let mut book = AddressBook::default();
        book.add_static(a, addr(1));
        book.discovered(a, vec![addr(2)]);
        book.discovered(b, vec![addr(3)]);
        assert_eq!(book.of(&a).cloned().collect::<Vec<_>>(), vec![addr(1), addr(2)]);
        // a new advert replaces the addresses; a lost peer keeps only what --peer named
        book.discovered(b, vec![addr(4)]);
        assert_eq!(book.of(&b).cloned().collect::<Vec<_>>(), vec![addr(4)]);
        book.lost(&a);
        book.lost(&b);
        assert_eq!(book.of(&a).cloned().collect::<Vec<_>>(), vec![addr(1)]);
        assert_eq!(book.of(&b).count(), 0);
    }
    use futures::io::Cursor;

    fn framed(body: &[u8], announced: usize) -> Vec<u8> {
        let mut v = (announced as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn a_large_frame_that_is_not_an_offer_is_refused_before_buffering() {
        let budget = FrameBudget::new(MAX_CONTROL_MESSAGE);
        // announces 24 MiB but starts like an error message: refused after 7 bytes
        let msg = Control::Error {
            reason: "x".repeat(100),
        };
        let mut io = Cursor::new(framed(&encode_control(&msg), MAX_CONTROL_MESSAGE));
        let e = read_control_request(&mut io, &budget).await.unwrap_err();
        assert!(e.to_string().contains("not an offer"), "{e}");
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn the_budget_refuses_what_it_cannot_hold_and_is_given_back() {
        let budget = FrameBudget::new(100_000);
        let held = budget.try_reserve(90_000).unwrap();
        let mut big = OFFER_PREFIX.to_vec();
        big.resize(70_000, 0);
        let mut io = Cursor::new(framed(&big, big.len()));
        let e = read_control_request(&mut io, &budget).await.unwrap_err();
        assert!(e.to_string().contains("busy"), "{e}");
        drop(held);
        assert_eq!(budget.used(), 0);
        // a good small message goes through, and gives its reservation back
        let mut io = Cursor::new(framed(
            &encode_control(&Control::Ack),
            encode_control(&Control::Ack).len(),
        ));
        assert_eq!(
            read_control_request(&mut io, &budget).await.unwrap(),
            Control::Ack
        );
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_truncated_frame_holds_only_what_arrived() {
        // announces an offer of 24 MiB, sends 100 KiB and ends: the buffer never got to
        // 24 MiB (the read fails at the end of the stream after growing step by step)
        let budget = FrameBudget::new(MAX_CONTROL_MESSAGE);
        let mut body = OFFER_PREFIX.to_vec();
        body.resize(100 * 1024, 0);
        let mut io = Cursor::new(framed(&body, MAX_CONTROL_MESSAGE));
        assert!(read_control_request(&mut io, &budget).await.is_err());
        assert_eq!(budget.used(), 0);
    }

    /// A stream that sends `bytes` and then stalls forever.
    struct Stall(Vec<u8>);

    impl AsyncRead for Stall {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            if self.0.is_empty() {
                return std::task::Poll::Pending;
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            std::task::Poll::Ready(Ok(n))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_frames_time_out() {
        let budget = FrameBudget::new(MAX_CONTROL_MESSAGE);
        // a length, then nothing
        let e = read_control_request(&mut Stall(1000u32.to_be_bytes().to_vec()), &budget)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        // an open stream that never sends its length
        let e = read_control_request(&mut Stall(Vec::new()), &budget)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        // an offer trickled in part: the reservation is given back at the time-out
        let mut part = (1_000_000u32).to_be_bytes().to_vec();
        part.extend_from_slice(OFFER_PREFIX);
        part.resize(200_000, 0);
        let e = read_control_request(&mut Stall(part), &budget).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn an_unreadable_request_reaches_the_shell_to_be_logged() {
        use request_response::Codec;
        let proto = StreamProtocol::new(CONTROL_PROTOCOL);
        let mut codec = ControlCodec::new(FrameBudget::new(MAX_CONTROL_MESSAGE));
        let mut io = Cursor::new(framed(b"garbage", 7));
        let got = codec.read_request(&proto, &mut io).await.unwrap();
        assert!(
            matches!(got, Inbound::Unreadable(ref why) if why.contains("malformed")),
            "{got:?}"
        );
        let mut chunk = ChunkCodec;
        let mut io = Cursor::new(framed(&[0; 4], MAX_CHUNK_REQUEST + 1));
        let got = chunk
            .read_request(&StreamProtocol::new(CHUNK_PROTOCOL), &mut io)
            .await
            .unwrap();
        assert!(
            matches!(got, Inbound::Unreadable(ref why) if why.contains("over the limit")),
            "{got:?}"
        );
    }

    #[test]
    fn failures_are_logged_once_per_interval_per_peer() {
        let mut log = FailureLog::default();
        let a = PeerId::random();
        let b = PeerId::random();
        let t0 = Instant::now();
        let line = log.record(t0, a, "control", &"garbage").unwrap();
        assert!(
            line.contains(&a.to_string()) && line.contains("garbage"),
            "{line}"
        );
        assert!(
            log.record(t0 + Duration::from_secs(1), a, "control", &"garbage")
                .is_none()
        );
        assert!(
            log.record(t0 + Duration::from_secs(2), a, "control", &"garbage")
                .is_none()
        );
        assert!(
            log.record(t0 + Duration::from_secs(2), b, "chunk", &"oversize")
                .is_some()
        );
        let later = log
            .record(t0 + FAILURE_LOG_INTERVAL, a, "control", &"garbage")
            .unwrap();
        assert!(later.contains("2 more"), "{later}");
    }

    #[test]
    fn a_taken_port_is_refused() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let e = check_port_free(&addr).unwrap_err().to_string();
        assert!(
            e.contains(&port.to_string()) && e.contains("another program"),
            "{e}"
        );
        drop(held);
        check_port_free(&addr).unwrap();
    }

    #[test]
    fn listen_addresses_are_ip_and_port() {
        let ok = |s: &str| parse_listen(s, NODE_PORT).unwrap().to_string();
        assert_eq!(ok("0.0.0.0:4200"), "0.0.0.0:4200");
        assert_eq!(ok("[::]:4200"), "[::]:4200");
        assert_eq!(ok(" 192.0.2.7:0 "), "192.0.2.7:0");
        // a bare IP gets the default port
        assert_eq!(ok("10.1.2.3"), "10.1.2.3:4100");
        assert_eq!(ok("::1"), "[::1]:4100");
        assert_eq!(ok("[fe80::1]"), "[fe80::1]:4100");
        // a port alone is shown how to write it
        let e = parse_listen("4200", NMS_PORT).unwrap_err();
        assert!(e.contains("e.g. 0.0.0.0:4200") && e.contains("[::]:4200"), "{e}");
        for bad in ["localhost:4200", "0.0.0.0:99999", "eth0", "", "0.0.0.0:"] {
            let e = parse_listen(bad, NMS_PORT).unwrap_err();
            assert!(
                e.contains("not a listen address") && e.contains("0.0.0.0:4101") && e.contains("[::]:4101"),
                "{bad}: {e}"
            );
        }
        let m = tcp_addr("198.18.0.1".parse().unwrap(), 4100);
        assert_eq!(socket_of(&m).unwrap().to_string(), "198.18.0.1:4100");
        assert_eq!(socket_of(&"/ip4/1.2.3.4".parse().unwrap()), None);
        // a daemon bound to one address advertises that one only
        assert_eq!(
            advertised_ips(&m),
            ["198.18.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(advertised_ips(&tcp_addr("0.0.0.0".parse().unwrap(), 4100)).is_empty());
        assert!(advertised_ips(&tcp_addr("::".parse().unwrap(), 4100)).is_empty());
    }
}
