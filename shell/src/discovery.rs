//! Local-link peer discovery with DNS-SD over mDNS.
//!
//! Every Baton process (role `node` or `nms`) advertises itself as a
//! [`SERVICE_TYPE`] service instance (standard PTR, SRV, TXT and A/AAAA
//! records, so `avahi-browse -r _baton._tcp` lists it) and browses for the
//! others. The service type is `_tcp` because the SRV port is the libp2p TCP
//! port (RFC 6763 section 7). Loopback interfaces are never used, so no
//! loopback address is advertised, and a loopback address in someone else's
//! advert is ignored (a peer must not make us dial our own machine). The TXT
//! record carries:
//!
//! | key    | value                                                    |
//! |--------|----------------------------------------------------------|
//! | `id`   | libp2p peer id (base58, at most 128 characters)          |
//! | `role` | `node` or `nms`                                          |
//! | `v`    | protocol version (decimal `u32`)                         |
//! | `port` | libp2p TCP listen port (decimal, non-zero)               |
//! | `tags` | optional comma-separated tags, each `[A-Za-z0-9_.-]{1,64}` |
//!
//! [`Discovery::start`] spawns the mdns-sd daemon (its own thread) plus one
//! small forwarding thread, and hands back a tokio channel of
//! [`DiscoveryEvent`]s. Our own advert is filtered out; adverts with another
//! protocol version are reported as they are (the caller decides).
//!
//! `Found` is an upsert: it is sent again for the same peer when its advert or
//! its address set changes. `Lost` is sent when the last instance of a peer is
//! removed (goodbye packet, TTL expiry, or it stopped being a valid advert).
//! The channel closes (`recv()` returns `None`) once the daemon has shut down,
//! or if the daemon dropped the subscription because events were not drained:
//! keep reading the receiver.
//!
//! Caveat: `ServiceDaemon::new()` joins the mDNS group on every interface
//! before [`Interfaces::Only`] takes effect (selection is applied a moment
//! later, on the daemon thread), so `Only` limits what we send and answer,
//! not which interfaces briefly see a group join. Tests never start the
//! daemon; try it by hand only inside a network namespace of your own.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::thread;
use std::time::Duration;

use baton_protocol::gate::RelayHint;
use mdns_sd::{DaemonEvent, IfKind, RecvTimeoutError, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;

/// DNS-SD service type every Baton process registers and browses.
pub const SERVICE_TYPE: &str = "_baton._tcp.local.";

/// TXT key of the libp2p peer id.
pub const TXT_ID: &str = "id";
/// TXT key of the role (`node` / `nms`).
pub const TXT_ROLE: &str = "role";
/// TXT key of the protocol version.
pub const TXT_VERSION: &str = "v";
/// TXT key of the libp2p TCP listen port.
pub const TXT_PORT: &str = "port";
/// TXT key of the optional comma-separated tags.
pub const TXT_TAGS: &str = "tags";
/// TXT key of a node's relay state (`open`, `restricted`, `gated`), present when its
/// owner set a relay policy: the NMS plans nodes that do not relay now at the leaves.
pub const TXT_RELAY: &str = "relay";
/// TXT key of the optional agent version (a node's `baton-node` version).
pub const TXT_AGENT: &str = "agent";
/// TXT key of the optional agent build id (BLAKE3 of the node's own executable, hex).
pub const TXT_BUILD: &str = "build";
/// Longest agent version accepted in an advert.
pub const MAX_AGENT_VERSION_LEN: usize = 64;

/// Longest accepted peer id, in characters.
pub const MAX_PEER_ID_LEN: usize = 128;
/// Most tags an advert may carry.
pub const MAX_TAGS: usize = 16;
/// Longest accepted tag, in characters.
pub const MAX_TAG_LEN: usize = 64;
/// Capacity of the event channel returned by [`Discovery::start`].
pub const EVENT_CHANNEL_CAPACITY: usize = 256;

/// A TXT entry (`key=value`) is prefixed by one length byte on the wire.
const MAX_TXT_ENTRY_LEN: usize = 255;
/// How many peer-id characters go into the instance name.
const INSTANCE_ID_CHARS: usize = 12;
/// Upper bound on remote instances tracked at once (hostile-LAN guard).
const MAX_TRACKED_INSTANCES: usize = 1024;
/// How long shutdown waits for each daemon acknowledgement.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the forwarding thread checks whether the caller went away.
const FORWARD_POLL: Duration = Duration::from_millis(250);

const BASE58_ALPHABET: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Role of an advertising Baton process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Node,
    Nms,
}

impl Role {
    /// The TXT value for this role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Nms => "nms",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = AdvertError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "node" => Ok(Role::Node),
            "nms" => Ok(Role::Nms),
            other => Err(AdvertError::UnknownRole(other.to_owned())),
        }
    }
}

/// What a Baton process advertises about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    /// libp2p peer id, base58.
    pub peer_id: String,
    pub role: Role,
    /// Baton protocol version.
    pub version: u32,
    /// libp2p TCP listen port.
    pub port: u16,
    pub tags: Vec<String>,
    /// Whether the node relays now under its owner's policy (`None`: it does not say).
    pub relay: Option<RelayHint>,
    /// The agent's version and build id (nodes; optional, older agents have none).
    pub agent: Option<AgentBuild>,
}

/// Which agent a node runs: its version and build id (BLAKE3 of its own executable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBuild {
    /// The `baton-node` version (Cargo's).
    pub version: String,
    /// BLAKE3 of the running executable, 64 lower-case hex digits.
    pub build: String,
}

impl AgentBuild {
    /// The version and build if both are well formed (else `None`: an odd value is ignored,
    /// not a reason to drop the node).
    pub fn parse(version: &str, build: &str) -> Option<AgentBuild> {
        let version_ok = !version.is_empty()
            && version.len() <= MAX_AGENT_VERSION_LEN
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-' | b'_'));
        let build_ok = build.len() == 64 && build.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        (version_ok && build_ok).then(|| AgentBuild {
            version: version.to_owned(),
            build: build.to_owned(),
        })
    }
}

impl Advert {
    /// Checks everything [`parse_advert`] checks, so that a valid advert
    /// always survives a `txt_properties` / `parse_advert` round trip.
    pub fn validate(&self) -> Result<(), AdvertError> {
        validate_peer_id(&self.peer_id)?;
        if self.port == 0 {
            return Err(AdvertError::InvalidPort("0".to_owned()));
        }
        validate_tags(&self.tags)?;
        for (key, value) in txt_properties(self) {
            let len = key.len() + 1 + value.len();
            if len > MAX_TXT_ENTRY_LEN {
                return Err(AdvertError::TxtEntryTooLong { key, len });
            }
        }
        Ok(())
    }

    /// DNS-SD instance name: `baton-<role>-<last 12 chars of the peer id>`.
    ///
    /// The tail is used rather than the head because libp2p peer ids share a
    /// fixed multihash prefix (`12D3KooW` for Ed25519, `Qm` for SHA-256
    /// ones), so the first 12 characters carry only 4 distinguishing ones.
    pub fn instance_name(&self) -> String {
        let n = self.peer_id.chars().count();
        let tail: String = self
            .peer_id
            .chars()
            .skip(n.saturating_sub(INSTANCE_ID_CHARS))
            .collect();
        format!("baton-{}-{}", self.role, tail)
    }

    /// mDNS host name used for the A/AAAA records: `<instance>.local.`.
    pub fn host_name(&self) -> String {
        format!("{}.local.", self.instance_name())
    }

    /// Full DNS-SD service instance name: `<instance>._baton._tcp.local.`.
    pub fn fullname(&self) -> String {
        format!("{}.{}", self.instance_name(), SERVICE_TYPE)
    }
}

/// Which network interfaces mDNS may use.
#[derive(Clone, Debug)]
pub enum Interfaces {
    /// Every interface the host has (mdns-sd's default).
    All,
    /// Only the named interfaces, e.g. `"eth0"`, `"lo"`.
    Only(Vec<String>),
}

/// What discovery reports to its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// A peer was resolved, or its advert / addresses changed (upsert).
    /// `addrs` is sorted, deduplicated, non-empty, and holds no IPv6
    /// link-local addresses (they are useless without a scope id).
    Found { advert: Advert, addrs: Vec<IpAddr> },
    /// The last advertised instance of this peer went away.
    Lost { peer_id: String },
}

/// Why a set of TXT properties is not a valid Baton advert.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    #[error("missing TXT key `{0}`")]
    Missing(&'static str),
    #[error("invalid peer id: {0}")]
    InvalidPeerId(&'static str),
    #[error("unknown role {0:?}")]
    UnknownRole(String),
    #[error("invalid protocol version {0:?}")]
    InvalidVersion(String),
    #[error("invalid port {0:?}")]
    InvalidPort(String),
    #[error("too many tags: {0} (at most {MAX_TAGS})")]
    TooManyTags(usize),
    #[error("invalid tag {0:?} (1..={MAX_TAG_LEN} chars of [A-Za-z0-9_.-])")]
    InvalidTag(String),
    #[error("TXT entry `{key}` is {len} bytes, over the {MAX_TXT_ENTRY_LEN}-byte limit")]
    TxtEntryTooLong { key: String, len: usize },
}

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("invalid local advert: {0}")]
    InvalidAdvert(#[from] AdvertError),
    #[error("interface selection is empty")]
    NoInterfaces,
    #[error("invalid interface name {0:?}")]
    InvalidInterfaceName(String),
    #[error(
        "this host has no network interface named {name:?} (interfaces with an address: {present}); give one of these to --interface, or leave --interface out to use all"
    )]
    UnknownInterface { name: String, present: String },
    #[error("cannot list this host's network interfaces: {0}")]
    ListInterfaces(#[source] std::io::Error),
    #[error("mDNS daemon: {0}")]
    Mdns(#[from] mdns_sd::Error),
    #[error("spawning the discovery thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// TXT properties for `a`, in a fixed order. `tags` is omitted when empty.
pub fn txt_properties(a: &Advert) -> Vec<(String, String)> {
    let mut props = vec![
        (TXT_ID.to_owned(), a.peer_id.clone()),
        (TXT_ROLE.to_owned(), a.role.as_str().to_owned()),
        (TXT_VERSION.to_owned(), a.version.to_string()),
        (TXT_PORT.to_owned(), a.port.to_string()),
    ];
    if !a.tags.is_empty() {
        props.push((TXT_TAGS.to_owned(), a.tags.join(",")));
    }
    if let Some(r) = a.relay {
        props.push((TXT_RELAY.to_owned(), r.as_str().to_owned()));
    }
    if let Some(agent) = &a.agent {
        props.push((TXT_AGENT.to_owned(), agent.version.clone()));
        props.push((TXT_BUILD.to_owned(), agent.build.clone()));
    }
    props
}

/// Parses and validates TXT properties (keys in lower case, as produced by
/// [`txt_properties`]). Unknown keys are ignored for forward compatibility.
pub fn parse_advert(props: &HashMap<String, String>) -> Result<Advert, AdvertError> {
    let get = |key: &'static str| props.get(key).ok_or(AdvertError::Missing(key));

    let peer_id = get(TXT_ID)?.clone();
    validate_peer_id(&peer_id)?;
    let role: Role = get(TXT_ROLE)?.parse()?;
    let version_str = get(TXT_VERSION)?;
    let version =
        parse_decimal::<u32>(version_str).ok_or_else(|| AdvertError::InvalidVersion(version_str.clone()))?;
    let port_str = get(TXT_PORT)?;
    let port = parse_decimal::<u16>(port_str)
        .filter(|p| *p != 0)
        .ok_or_else(|| AdvertError::InvalidPort(port_str.clone()))?;
    let tags = match props.get(TXT_TAGS).map(String::as_str) {
        None | Some("") => Vec::new(),
        Some(s) => s.split(',').map(str::to_owned).collect(),
    };

    // an unknown relay word (a newer node) says nothing rather than hiding the node
    let relay = props.get(TXT_RELAY).and_then(|r| r.parse().ok());
    let agent = match (props.get(TXT_AGENT), props.get(TXT_BUILD)) {
        (Some(v), Some(b)) => AgentBuild::parse(v, b),
        _ => None,
    };
    let advert = Advert {
        peer_id,
        role,
        version,
        port,
        tags,
        relay,
        agent,
    };
    advert.validate()?;
    Ok(advert)
}

/// Plain ASCII digits only (`u32::from_str` would also take a leading `+`).
fn parse_decimal<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn validate_peer_id(id: &str) -> Result<(), AdvertError> {
    if id.is_empty() {
        return Err(AdvertError::InvalidPeerId("empty"));
    }
    if id.chars().count() > MAX_PEER_ID_LEN {
        return Err(AdvertError::InvalidPeerId("longer than 128 characters"));
    }
    if !id.chars().all(|c| BASE58_ALPHABET.contains(c)) {
        return Err(AdvertError::InvalidPeerId("not base58"));
    }
    Ok(())
}

fn validate_tags(tags: &[String]) -> Result<(), AdvertError> {
    if tags.len() > MAX_TAGS {
        return Err(AdvertError::TooManyTags(tags.len()));
    }
    for tag in tags {
        let ok = !tag.is_empty()
            && tag.len() <= MAX_TAG_LEN
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Err(AdvertError::InvalidTag(tag.clone()));
        }
    }
    Ok(())
}

/// TXT properties as a map: keys lower-cased (RFC 6763 6.4: keys are
/// case-insensitive), first occurrence wins (6.4 again), a key without `=`
/// maps to an empty value, non-UTF-8 values are replaced lossily (and then
/// fail validation).
fn txt_map(props: &mdns_sd::TxtProperties) -> HashMap<String, String> {
    let mut map = HashMap::with_capacity(props.len());
    for p in props.iter() {
        map.entry(p.key().to_ascii_lowercase()).or_insert_with(|| {
            p.val()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        });
    }
    map
}

/// Addresses worth reporting: no unspecified, multicast or IPv6 link-local
/// ones; sorted and deduplicated.
fn usable_addrs(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = addrs
        .into_iter()
        .filter(|ip| {
            !ip.is_unspecified()
                && !ip.is_multicast()
                && !ip.is_loopback()
                && match ip {
                    IpAddr::V4(_) => true,
                    IpAddr::V6(v6) => !v6.is_unicast_link_local(),
                }
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[derive(Debug)]
struct Known {
    advert: Advert,
    addrs: Vec<IpAddr>,
}

/// Turns mdns-sd browse results into [`DiscoveryEvent`]s. Pure state
/// machine, keyed by lower-cased instance fullname.
#[derive(Debug)]
struct Tracker {
    own_peer_id: String,
    known: HashMap<String, Known>,
}

impl Tracker {
    fn new(own_peer_id: &str) -> Self {
        Tracker {
            own_peer_id: own_peer_id.to_owned(),
            known: HashMap::new(),
        }
    }

    fn resolved(
        &mut self,
        fullname: &str,
        props: &HashMap<String, String>,
        addrs: impl IntoIterator<Item = IpAddr>,
    ) -> Vec<DiscoveryEvent> {
        let key = fullname.to_ascii_lowercase();
        let advert = match parse_advert(props) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(instance = %fullname, error = %e, "ignoring invalid Baton advert");
                return self.removed(&key);
            }
        };
        if advert.peer_id == self.own_peer_id {
            return Vec::new();
        }
        let addrs = usable_addrs(addrs);
        if addrs.is_empty() {
            tracing::debug!(instance = %fullname, "ignoring Baton advert without usable address");
            return self.removed(&key);
        }

        let mut events = Vec::new();
        if let Some(prev) = self.known.get(&key) {
            if prev.advert == advert && prev.addrs == addrs {
                return events;
            }
            if prev.advert.peer_id != advert.peer_id {
                events.extend(self.removed(&key));
            }
        } else if self.known.len() >= MAX_TRACKED_INSTANCES {
            tracing::warn!(instance = %fullname, "too many Baton instances tracked; ignoring");
            return events;
        }
        self.known.insert(
            key,
            Known {
                advert: advert.clone(),
                addrs: addrs.clone(),
            },
        );
        events.push(DiscoveryEvent::Found { advert, addrs });
        events
    }

    fn removed(&mut self, key: &str) -> Vec<DiscoveryEvent> {
        let Some(prev) = self.known.remove(&key.to_ascii_lowercase()) else {
            return Vec::new();
        };
        let peer_id = prev.advert.peer_id;
        if self.known.values().any(|k| k.advert.peer_id == peer_id) {
            // Still reachable through another instance name.
            return Vec::new();
        }
        vec![DiscoveryEvent::Lost { peer_id }]
    }

    fn handle(&mut self, event: ServiceEvent) -> Vec<DiscoveryEvent> {
        match event {
            ServiceEvent::ServiceResolved(svc) => {
                let props = txt_map(svc.get_properties());
                let addrs = svc.get_addresses().iter().map(|ip| ip.to_ip_addr());
                self.resolved(svc.get_fullname(), &props, addrs)
            }
            ServiceEvent::ServiceRemoved(_ty, fullname) => self.removed(&fullname),
            other => {
                tracing::trace!(event = ?other, "mdns browse event");
                Vec::new()
            }
        }
    }
}

/// Running discovery: owns the mdns-sd daemon. Dropping it (or calling
/// [`Discovery::shutdown`]) unregisters our service (goodbye packets) and
/// stops the daemon; that blocks for at most about two seconds, so from async
/// code prefer [`Discovery::shutdown_async`].
pub struct Discovery {
    daemon: Option<ServiceDaemon>,
    fullname: String,
    peer_id: String,
    /// What [`Discovery::update`] publishes again with a new advert.
    addrs: Vec<IpAddr>,
    interfaces: Interfaces,
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("fullname", &self.fullname)
            .field("peer_id", &self.peer_id)
            .field("running", &self.daemon.is_some())
            .finish()
    }
}

impl Discovery {
    /// Starts advertising `me` and browsing for other Baton processes.
    ///
    /// `addrs` are published in the A/AAAA records; when empty, mdns-sd
    /// publishes the addresses of the selected interfaces and follows changes.
    /// Does not need a tokio runtime; events arrive on the returned channel
    /// from a plain thread.
    pub fn start(
        me: &Advert,
        addrs: &[IpAddr],
        interfaces: &Interfaces,
    ) -> Result<(Discovery, mpsc::Receiver<DiscoveryEvent>), DiscoveryError> {
        // Everything that can be checked is checked before the daemon (and
        // its sockets) exists.
        let (info, selected) = prepare(me, addrs, interfaces)?;

        let daemon = ServiceDaemon::new()?;
        // From here on, Drop shuts the daemon down on any early return.
        let disco = Discovery {
            daemon: Some(daemon.clone()),
            fullname: info.get_fullname().to_owned(),
            peer_id: me.peer_id.clone(),
            addrs: addrs.to_vec(),
            interfaces: interfaces.clone(),
        };

        // Commands run in order on the daemon thread, so the selection is in
        // force before anything is registered or queried.
        if let Some(kinds) = selected {
            daemon.disable_interface(IfKind::All)?;
            daemon.enable_interface(kinds)?;
        }
        // mdns-sd enables loopback by default: never advertise 127.0.0.1 or ::1
        daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?;
        let monitor = daemon.monitor()?;
        daemon.register(info)?;
        let browse = daemon.browse(SERVICE_TYPE)?;

        let (tx, rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let tracker = Tracker::new(&me.peer_id);
        thread::Builder::new()
            .name("baton-discovery".to_owned())
            .spawn(move || forward(browse, monitor, tracker, tx))
            .map_err(DiscoveryError::Thread)?;

        tracing::info!(instance = %disco.fullname, "mDNS discovery started");
        Ok((disco, rx))
    }

    /// Publishes `me` again (same instance, new TXT properties, e.g. the relay state):
    /// peers browsing see the change in the announcements that follow.
    pub fn update(&self, me: &Advert) -> Result<(), DiscoveryError> {
        let (info, _) = prepare(me, &self.addrs, &self.interfaces)?;
        if let Some(d) = &self.daemon {
            d.register(info)?;
        }
        Ok(())
    }

    /// Full DNS-SD name of our own service instance.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }

    /// Our own peer id (filtered out of the events).
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// Unregisters our service and stops the daemon, blocking up to about
    /// two seconds for the daemon's acknowledgements.
    pub fn shutdown(mut self) {
        self.stop_blocking();
    }

    /// Same as [`Discovery::shutdown`] without blocking the executor.
    pub async fn shutdown_async(mut self) {
        let Some(daemon) = self.daemon.take() else {
            return;
        };
        match daemon.unregister(&self.fullname) {
            Ok(rx) => {
                let r = tokio::time::timeout(SHUTDOWN_TIMEOUT, rx.recv_async()).await;
                tracing::debug!(result = ?r, "mDNS unregister");
            }
            Err(e) => tracing::debug!(error = %e, "mDNS unregister failed"),
        }
        match daemon.shutdown() {
            Ok(rx) => {
                let r = tokio::time::timeout(SHUTDOWN_TIMEOUT, rx.recv_async()).await;
                tracing::debug!(result = ?r, "mDNS daemon shutdown");
            }
            Err(e) => tracing::debug!(error = %e, "mDNS daemon shutdown failed"),
        }
    }

    fn stop_blocking(&mut self) {
        let Some(daemon) = self.daemon.take() else {
            return;
        };
        match daemon.unregister(&self.fullname) {
            Ok(rx) => {
                let r = rx.recv_timeout(SHUTDOWN_TIMEOUT);
                tracing::debug!(result = ?r, "mDNS unregister");
            }
            Err(e) => tracing::debug!(error = %e, "mDNS unregister failed"),
        }
        match daemon.shutdown() {
            Ok(rx) => {
                let r = rx.recv_timeout(SHUTDOWN_TIMEOUT);
                tracing::debug!(result = ?r, "mDNS daemon shutdown");
            }
            Err(e) => tracing::debug!(error = %e, "mDNS daemon shutdown failed"),
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop_blocking();
    }
}

/// The names of this host's network interfaces that have an address, sorted, each once.
pub fn host_interfaces() -> Result<Vec<String>, DiscoveryError> {
    let mut names: Vec<String> = if_addrs::get_if_addrs()
        .map_err(DiscoveryError::ListInterfaces)?
        .into_iter()
        .map(|i| i.name)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Refuses an interface selection naming an interface that is not in `present` (see
/// [`host_interfaces`]); the error lists those that are.
pub fn check_interfaces(selection: &Interfaces, present: &[String]) -> Result<(), DiscoveryError> {
    let Interfaces::Only(names) = selection else {
        return Ok(());
    };
    if names.is_empty() {
        return Err(DiscoveryError::NoInterfaces);
    }
    match names.iter().find(|n| !present.contains(n)) {
        None => Ok(()),
        Some(name) => Err(DiscoveryError::UnknownInterface {
            name: name.clone(),
            present: if present.is_empty() {
                "none".to_string()
            } else {
                present.join(", ")
            },
        }),
    }
}

/// Pure part of [`Discovery::start`]: validates the input and builds the
/// service record and the interface selection, without touching the network.
fn prepare(
    me: &Advert,
    addrs: &[IpAddr],
    interfaces: &Interfaces,
) -> Result<(ServiceInfo, Option<Vec<IfKind>>), DiscoveryError> {
    me.validate()?;
    let selected: Option<Vec<IfKind>> = match interfaces {
        Interfaces::All => None,
        Interfaces::Only(names) if names.is_empty() => return Err(DiscoveryError::NoInterfaces),
        Interfaces::Only(names) => {
            if let Some(bad) = names.iter().find(|n| n.is_empty() || n.contains('\0')) {
                return Err(DiscoveryError::InvalidInterfaceName(bad.clone()));
            }
            Some(names.iter().map(|n| IfKind::Name(n.clone())).collect())
        }
    };

    let props = txt_properties(me);
    let mut info = ServiceInfo::new(
        SERVICE_TYPE,
        &me.instance_name(),
        &me.host_name(),
        addrs,
        me.port,
        props.as_slice(),
    )?;
    if addrs.is_empty() {
        info = info.enable_addr_auto();
    }
    if let Some(kinds) = &selected {
        info.set_interfaces(kinds.clone());
    }
    Ok((info, selected))
}

/// Body of the forwarding thread. Ends when the daemon drops the browse
/// subscription (shutdown, or its channel overflowed) or the caller drops the
/// event receiver; dropping `tx` then closes the caller's channel.
fn forward(
    browse: mdns_sd::Receiver<ServiceEvent>,
    monitor: mdns_sd::Receiver<DaemonEvent>,
    mut tracker: Tracker,
    tx: mpsc::Sender<DiscoveryEvent>,
) {
    loop {
        while let Ok(ev) = monitor.try_recv() {
            log_daemon_event(ev);
        }
        if tx.is_closed() {
            break;
        }
        match browse.recv_timeout(FORWARD_POLL) {
            Ok(ev) => {
                for out in tracker.handle(ev) {
                    tracing::debug!(event = ?out, "discovery event");
                    if tx.blocking_send(out).is_err() {
                        return;
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    tracing::debug!("discovery forwarding thread finished");
}

fn log_daemon_event(ev: DaemonEvent) {
    match ev {
        DaemonEvent::Error(e) => tracing::warn!(error = %e, "mDNS daemon error"),
        DaemonEvent::NameChange(change) => {
            tracing::info!(change = ?change, "mDNS name conflict resolved by renaming");
        }
        other => tracing::trace!(event = ?other, "mDNS daemon event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const PEER: &str = "12D3KooWGzh7s5ZDmnT9yXexXv5ZRLpxbzBMo5NvwYxQaTq3hVjR";
    const OTHER: &str = "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE";

    fn advert(peer: &str) -> Advert {
        Advert {
            peer_id: peer.to_owned(),
            role: Role::Node,
            version: 1,
            port: 4001,
            tags: vec!["lab".to_owned(), "rack-2".to_owned(), "v1.2_x".to_owned()],
            relay: Some(RelayHint::Gated),
            agent: None,
        }
    }

    #[test]
    fn the_agent_version_and_build_round_trip_and_odd_ones_are_ignored() {
        let mut a = advert(PEER);
        let build = "ab".repeat(32);
        a.agent = Some(AgentBuild {
            version: "0.1.0".to_owned(),
            build: build.clone(),
        });
        assert_eq!(a.validate(), Ok(()));
        let back = parse_advert(&map(&a)).unwrap();
        assert_eq!(back, a);
        // an older agent advertises neither key; an odd value is dropped, the node stays
        let mut m = map(&a);
        m.insert("build".to_owned(), "xyz".to_owned());
        assert_eq!(parse_advert(&m).unwrap().agent, None);
        let mut m = map(&a);
        m.insert("agent".to_owned(), "1 0".to_owned());
        assert_eq!(parse_advert(&m).unwrap().agent, None);
        let mut m = map(&a);
        m.remove("agent");
        assert_eq!(parse_advert(&m).unwrap().agent, None);
    }

    fn map(a: &Advert) -> HashMap<String, String> {
        txt_properties(a).into_iter().collect()
    }

    fn with(a: &Advert, key: &str, val: &str) -> HashMap<String, String> {
        let mut m = map(a);
        m.insert(key.to_owned(), val.to_owned());
        m
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn txt_properties_layout() {
        let props = txt_properties(&advert(PEER));
        let keys: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["id", "role", "v", "port", "tags", "relay"]);
        assert_eq!(props[1].1, "node");
        assert_eq!(props[2].1, "1");
        assert_eq!(props[3].1, "4001");
        assert_eq!(props[4].1, "lab,rack-2,v1.2_x");
        assert_eq!(props[5].1, "gated");

        let mut bare = advert(PEER);
        bare.tags.clear();
        bare.relay = None;
        bare.role = Role::Nms;
        let props = txt_properties(&bare);
        assert_eq!(props.len(), 4, "no tags key without tags");
        assert_eq!(props[1].1, "nms");
    }

    #[test]
    fn round_trip() {
        let mut a = advert(PEER);
        assert_eq!(parse_advert(&map(&a)).unwrap(), a);
        a.tags.clear();
        a.role = Role::Nms;
        a.version = u32::MAX;
        a.port = u16::MAX;
        assert_eq!(parse_advert(&map(&a)).unwrap(), a);
        a.tags = (0..MAX_TAGS).map(|i| format!("t{i}")).collect();
        assert_eq!(parse_advert(&map(&a)).unwrap(), a);
        for r in [None, Some(RelayHint::Open), Some(RelayHint::Restricted)] {
            a.relay = r;
            assert_eq!(parse_advert(&map(&a)).unwrap(), a);
        }
    }

    #[test]
    fn an_unknown_relay_word_says_nothing_and_keeps_the_node() {
        let m = with(&advert(PEER), "relay", "sleeping");
        assert_eq!(parse_advert(&m).unwrap().relay, None);
    }

    #[test]
    fn empty_tags_value_means_no_tags_and_unknown_keys_ignored() {
        let mut m = with(&advert(PEER), "tags", "");
        m.insert("future".to_owned(), "whatever".to_owned());
        assert!(parse_advert(&m).unwrap().tags.is_empty());
    }

    #[test]
    fn missing_keys() {
        for key in ["id", "role", "v", "port"] {
            let mut m = map(&advert(PEER));
            m.remove(key);
            let err = parse_advert(&m).unwrap_err();
            assert!(matches!(err, AdvertError::Missing(k) if k == key), "{key}: {err}");
        }
    }

    #[test]
    fn peer_id_validation() {
        let a = advert(PEER);
        for bad in [
            "",
            "12D3KooW0abc",
            "12D3KooWOabc",
            "12D3KooWIabc",
            "12D3Kool",
            "abc def",
            "ab/c",
        ] {
            let err = parse_advert(&with(&a, "id", bad)).unwrap_err();
            assert!(matches!(err, AdvertError::InvalidPeerId(_)), "{bad:?}: {err}");
        }
        let long = "1".repeat(MAX_PEER_ID_LEN + 1);
        assert!(matches!(
            parse_advert(&with(&a, "id", &long)),
            Err(AdvertError::InvalidPeerId(_))
        ));
        let max = "z".repeat(MAX_PEER_ID_LEN);
        assert_eq!(parse_advert(&with(&a, "id", &max)).unwrap().peer_id, max);
        assert_eq!(parse_advert(&with(&a, "id", "Qm")).unwrap().peer_id, "Qm");
    }

    #[test]
    fn role_validation() {
        let a = advert(PEER);
        for bad in ["", "Node", "NMS", "relay", "node "] {
            assert_eq!(
                parse_advert(&with(&a, "role", bad)),
                Err(AdvertError::UnknownRole(bad.to_owned()))
            );
        }
        assert_eq!("nms".parse::<Role>(), Ok(Role::Nms));
        assert_eq!(Role::Node.to_string(), "node");
    }

    #[test]
    fn version_validation() {
        let a = advert(PEER);
        for bad in ["", "+1", "-1", "1.0", "x", " 1", "4294967296"] {
            assert_eq!(
                parse_advert(&with(&a, "v", bad)),
                Err(AdvertError::InvalidVersion(bad.to_owned()))
            );
        }
        assert_eq!(parse_advert(&with(&a, "v", "7")).unwrap().version, 7);
    }

    #[test]
    fn port_validation() {
        let a = advert(PEER);
        for bad in ["", "0", "00", "65536", "+80", "80a", "-1"] {
            assert_eq!(
                parse_advert(&with(&a, "port", bad)),
                Err(AdvertError::InvalidPort(bad.to_owned()))
            );
        }
        assert_eq!(parse_advert(&with(&a, "port", "1")).unwrap().port, 1);
        let mut zero = a.clone();
        zero.port = 0;
        assert!(matches!(zero.validate(), Err(AdvertError::InvalidPort(_))));
    }

    #[test]
    fn tag_validation() {
        let a = advert(PEER);
        let too_many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
        assert_eq!(
            parse_advert(&with(&a, "tags", &too_many.join(","))),
            Err(AdvertError::TooManyTags(MAX_TAGS + 1))
        );
        let long = "x".repeat(MAX_TAG_LEN + 1);
        for bad in ["a,,b", ",a", "a,", "sp ace", "a/b", "é", long.as_str()] {
            let err = parse_advert(&with(&a, "tags", bad)).unwrap_err();
            assert!(matches!(err, AdvertError::InvalidTag(_)), "{bad:?}: {err}");
        }
        let max = "y".repeat(MAX_TAG_LEN);
        assert_eq!(parse_advert(&with(&a, "tags", &max)).unwrap().tags, [max]);
    }

    #[test]
    fn txt_entry_length_limit() {
        let mut a = advert(PEER);
        // 16 tags of 64 chars can't fit in one 255-byte TXT string.
        a.tags = (0..MAX_TAGS).map(|i| format!("{i:x<64}")).collect();
        let err = a.validate().unwrap_err();
        assert!(matches!(err, AdvertError::TxtEntryTooLong { ref key, .. } if key == "tags"));
        assert!(parse_advert(&map(&a)).is_err());
        // Exactly 255 bytes: "tags=" + 250.
        a.tags = vec!["a".repeat(64), "b".repeat(64), "c".repeat(64), "d".repeat(55)];
        assert_eq!(a.tags.join(",").len(), 250);
        assert_eq!(a.validate(), Ok(()));
        a.tags[3].push('d');
        assert!(a.validate().is_err());
    }

    #[test]
    fn names() {
        let a = advert(PEER);
        assert_eq!(a.instance_name(), "baton-node-wYxQaTq3hVjR");
        assert_eq!(a.host_name(), "baton-node-wYxQaTq3hVjR.local.");
        assert_eq!(a.fullname(), "baton-node-wYxQaTq3hVjR._baton._tcp.local.");
        let short = Advert {
            peer_id: "Qm1".to_owned(),
            role: Role::Nms,
            ..a
        };
        assert_eq!(short.instance_name(), "baton-nms-Qm1");
    }

    #[test]
    fn txt_map_is_case_insensitive_first_wins() {
        let props: &[(&str, &str)] = &[("ID", PEER), ("id", OTHER), ("Role", "node")];
        let txt = mdns_sd::IntoTxtProperties::into_txt_properties(props);
        let m = txt_map(&txt);
        assert_eq!(m["id"], PEER);
        assert_eq!(m["role"], "node");
    }

    #[test]
    fn usable_addrs_filters_and_sorts() {
        let ll: IpAddr = "fe80::1".parse().unwrap();
        let global: IpAddr = "2001:db8::1".parse().unwrap();
        let got = usable_addrs([
            v4(198, 18, 0, 2),
            ll,
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            v4(224, 0, 0, 251),
            global,
            v4(127, 0, 0, 1),
            v4(198, 18, 0, 2),
        ]);
        assert_eq!(got, [v4(198, 18, 0, 2), global]);
    }

    #[test]
    fn tracker_found_update_lost() {
        let mut t = Tracker::new(PEER);
        let other = advert(OTHER);
        let name = "baton-node-X._baton._tcp.local.";
        let m = map(&other);

        let ev = t.resolved(name, &m, [v4(198, 18, 0, 2)]);
        assert_eq!(
            ev,
            [DiscoveryEvent::Found {
                advert: other.clone(),
                addrs: vec![v4(198, 18, 0, 2)]
            }]
        );
        // Same data again (e.g. re-announcement): nothing new.
        assert!(t.resolved(name, &m, [v4(198, 18, 0, 2)]).is_empty());
        // New address: Found again (upsert).
        let ev = t.resolved(name, &m, [v4(198, 18, 0, 3), v4(198, 18, 0, 2)]);
        assert_eq!(
            ev,
            [DiscoveryEvent::Found {
                advert: other.clone(),
                addrs: vec![v4(198, 18, 0, 2), v4(198, 18, 0, 3)]
            }]
        );
        // Removal, matched case-insensitively.
        let ev = t.handle(ServiceEvent::ServiceRemoved(
            SERVICE_TYPE.to_owned(),
            name.to_uppercase(),
        ));
        assert_eq!(
            ev,
            [DiscoveryEvent::Lost {
                peer_id: OTHER.to_owned()
            }]
        );
        // Unknown removal: nothing.
        assert!(t.removed(name).is_empty());
    }

    #[test]
    fn tracker_filters_self_invalid_and_unaddressed() {
        let mut t = Tracker::new(PEER);
        assert!(
            t.resolved("me", &map(&advert(PEER)), [v4(198, 18, 0, 9)])
                .is_empty()
        );
        let bad = with(&advert(OTHER), "role", "relay");
        assert!(t.resolved("bad", &bad, [v4(198, 18, 0, 9)]).is_empty());
        let ll: IpAddr = "fe80::2".parse().unwrap();
        assert!(t.resolved("ll", &map(&advert(OTHER)), [ll]).is_empty());
        assert!(t.known.is_empty());
    }

    #[test]
    fn tracker_reports_other_versions() {
        let mut t = Tracker::new(PEER);
        let mut other = advert(OTHER);
        other.version = 99;
        let ev = t.resolved("x", &map(&other), [v4(198, 18, 0, 9)]);
        assert!(matches!(&ev[..], [DiscoveryEvent::Found { advert, .. }] if advert.version == 99));
    }

    #[test]
    fn tracker_instance_turning_invalid_is_lost() {
        let mut t = Tracker::new(PEER);
        let other = advert(OTHER);
        assert_eq!(t.resolved("x", &map(&other), [v4(198, 18, 0, 9)]).len(), 1);
        let ev = t.resolved("x", &with(&other, "port", "0"), [v4(198, 18, 0, 9)]);
        assert_eq!(
            ev,
            [DiscoveryEvent::Lost {
                peer_id: OTHER.to_owned()
            }]
        );
    }

    #[test]
    fn tracker_peer_under_two_names_and_id_change() {
        let mut t = Tracker::new(PEER);
        let other = advert(OTHER);
        assert_eq!(t.resolved("a", &map(&other), [v4(198, 18, 0, 9)]).len(), 1);
        assert_eq!(t.resolved("b", &map(&other), [v4(198, 18, 0, 10)]).len(), 1);
        // Still reachable as "b": no Lost.
        assert!(t.removed("a").is_empty());
        // "b" now carries a different peer id: old one lost, new one found.
        let third = advert("QmThird");
        let ev = t.resolved("b", &map(&third), [v4(198, 18, 0, 10)]);
        assert_eq!(ev.len(), 2);
        assert_eq!(
            ev[0],
            DiscoveryEvent::Lost {
                peer_id: OTHER.to_owned()
            }
        );
        assert!(matches!(&ev[1], DiscoveryEvent::Found { advert, .. } if advert.peer_id == "QmThird"));
    }

    #[test]
    fn tracker_caps_instances() {
        let mut t = Tracker::new(PEER);
        let m = map(&advert(OTHER));
        for i in 0..MAX_TRACKED_INSTANCES {
            assert_eq!(t.resolved(&format!("i{i}"), &m, [v4(198, 18, 0, 9)]).len(), 1);
        }
        assert!(t.resolved("one-more", &m, [v4(198, 18, 0, 9)]).is_empty());
        assert_eq!(t.known.len(), MAX_TRACKED_INSTANCES);
    }

    #[test]
    fn prepare_validates_and_builds_the_record() {
        // `prepare` is the pure front half of `start`; no daemon is created.
        let mut bad = advert(PEER);
        bad.port = 0;
        assert!(matches!(
            prepare(&bad, &[], &Interfaces::All),
            Err(DiscoveryError::InvalidAdvert(_))
        ));
        assert!(matches!(
            prepare(&advert(PEER), &[], &Interfaces::Only(vec![])),
            Err(DiscoveryError::NoInterfaces)
        ));
        assert!(matches!(
            prepare(&advert(PEER), &[], &Interfaces::Only(vec![String::new()])),
            Err(DiscoveryError::InvalidInterfaceName(_))
        ));

        let a = advert(PEER);
        let (info, sel) = prepare(&a, &[v4(198, 18, 0, 1)], &Interfaces::All).unwrap();
        assert!(sel.is_none());
        assert_eq!(info.get_fullname(), a.fullname());
        assert_eq!(info.get_hostname(), a.host_name());
        assert_eq!(info.get_port(), 4001);
        assert!(!info.is_addr_auto());
        assert_eq!(info.get_property_val_str("id"), Some(PEER));
        assert_eq!(info.get_property_val_str("tags"), Some("lab,rack-2,v1.2_x"));

        let only = Interfaces::Only(vec!["eth0".to_owned(), "lo".to_owned()]);
        let (info, sel) = prepare(&a, &[], &only).unwrap();
        assert_eq!(sel.unwrap().len(), 2);
        assert!(info.is_addr_auto());
    }

    #[test]
    fn unknown_interfaces_are_refused_with_the_list() {
        let present = vec!["eth0".to_owned(), "lo".to_owned(), "wlan0".to_owned()];
        let only = |n: &[&str]| Interfaces::Only(n.iter().map(|s| s.to_string()).collect());
        check_interfaces(&Interfaces::All, &present).unwrap();
        check_interfaces(&only(&["eth0", "wlan0"]), &present).unwrap();
        let e = check_interfaces(&only(&["eth0", "eht0"]), &present)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"eht0\"") && e.contains("eth0, lo, wlan0"), "{e}");
        let e = check_interfaces(&only(&["eth0"]), &[]).unwrap_err().to_string();
        assert!(e.contains("(interfaces with an address: none)"), "{e}");
        // this host's list holds at least its loopback
        let here = host_interfaces().unwrap();
        assert!(!here.is_empty());
        check_interfaces(&Interfaces::Only(here.clone()), &here).unwrap();
    }
}
