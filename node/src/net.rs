//! The libp2p transport shared by `baton-node` and `baton-nms`: TCP + Noise + Yamux with
//! two request-response protocols, control (CBOR) and chunk (raw frames), both framed
//! with a u32 big-endian length prefix and bounded by the protocol's limits.

use std::io;
use std::time::Duration;

use baton_protocol::limits::{MAX_CHUNK_FRAME, MAX_CONTROL_MESSAGE};
use baton_protocol::wire::{CHUNK_PROTOCOL, CONTROL_PROTOCOL, decode_control, encode_control};
use baton_protocol::{ChunkRequest, ChunkResponse, Control, Keypair};
use futures::prelude::*;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Multiaddr, StreamProtocol, Swarm, noise, request_response, tcp, yamux};

/// How long a request may wait for its response. Chunk requests are held by a parent
/// that does not have the chunk yet (up to 15 s), then the chunk crosses a possibly slow
/// link: keep this generous.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {limit}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Control messages: one CBOR [`Control`] per request and per response.
#[derive(Debug, Clone, Default)]
pub struct ControlCodec;

impl request_response::Codec for ControlCodec {
    type Protocol = StreamProtocol;
    type Request = Control;
    type Response = Control;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Control> {
        decode_control(&read_frame(io, MAX_CONTROL_MESSAGE).await?).map_err(invalid)
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Control> {
        decode_control(&read_frame(io, MAX_CONTROL_MESSAGE).await?).map_err(invalid)
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Control,
    ) -> io::Result<()> {
        write_frame(io, &encode_control(&req)).await
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
    type Request = ChunkRequest;
    type Response = ChunkResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ChunkRequest> {
        ChunkRequest::decode(&read_frame(io, 8 * 1024).await?).map_err(invalid)
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ChunkResponse> {
        ChunkResponse::decode(&read_frame(io, MAX_CHUNK_FRAME).await?).map_err(invalid)
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: ChunkRequest,
    ) -> io::Result<()> {
        write_frame(io, &req.encode()).await
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
    pub control: request_response::Behaviour<ControlCodec>,
    pub chunk: request_response::Behaviour<ChunkCodec>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Behaviour")
    }
}

/// Builds the swarm and starts listening on `listen` (e.g. `/ip4/0.0.0.0/tcp/0`).
pub fn build_swarm(keypair: Keypair, listen: Multiaddr) -> anyhow::Result<Swarm<Behaviour>> {
    let cfg = || {
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(1024)
    };
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| Behaviour {
            control: request_response::Behaviour::new(
                [(
                    StreamProtocol::new(CONTROL_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                cfg(),
            ),
            chunk: request_response::Behaviour::new(
                [(
                    StreamProtocol::new(CHUNK_PROTOCOL),
                    request_response::ProtocolSupport::Full,
                )],
                cfg(),
            ),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    swarm.listen_on(listen)?;
    Ok(swarm)
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

/// Drives the swarm until its listener is up; returns the TCP port it listens on.
pub async fn wait_for_port(swarm: &mut Swarm<Behaviour>) -> anyhow::Result<u16> {
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = swarm.select_next_some() => {
                if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } = ev {
                    for p in address.iter() {
                        if let libp2p::multiaddr::Protocol::Tcp(port) = p {
                            return Ok(port);
                        }
                    }
                }
            }
            _ = &mut deadline => anyhow::bail!("the listener did not come up within 10 s; check the port setting"),
        }
    }
}
