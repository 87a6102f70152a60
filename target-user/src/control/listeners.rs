//! `add_listener` and `remove_listener`: `{"transport": "nvme_tcp" | "iscsi" | "nvme_rdma",
//! "addr": "IP:PORT"}`, and for `add_listener` an optional `"steer": true`: a TCP port the
//! XDP program does not steer yet is added to `xdp.ports` and its map, so the AF_XDP
//! reactors serve it (without it, the kernel socket serves such a port).
//!
//! What may change is decided here, against the running configuration, before anything
//! changes: a bad address, port 0, an address already served (the same one, or one that
//! overlaps a wildcard on the same port), or a configuration that would not validate is
//! refused. The transports then make the change (`transport::listeners`: a bind that fails
//! changes nothing), and only after that the discovery log (NVMe: `Registry::set_ports`),
//! the iSCSI portals SendTargets reports and the running configuration follow.
//!
//! Removing stops new connections only: connections already up on the address stay until
//! they end, as with nvmet and LIO when a port is unlinked. The last listener of a protocol
//! may go; the answer says how many remain.

use std::net::SocketAddr;

use serde_json::{Value, json};
use target_proto::iscsi::Portal;
use target_proto::nvme::subsystem::{Port, PortTransport};
use tracing::info;

use super::{Control, RpcError, lock, string_param};
use crate::config::Config;
use crate::reactor::engine::Proto;
use crate::transport::listeners::XdpPath;

/// The transports a listener can be for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    NvmeTcp,
    Iscsi,
    NvmeRdma,
}

impl Kind {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "nvme_tcp" => Some(Self::NvmeTcp),
            "iscsi" => Some(Self::Iscsi),
            "nvme_rdma" => Some(Self::NvmeRdma),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::NvmeTcp => "nvme_tcp",
            Self::Iscsi => "iscsi",
            Self::NvmeRdma => "nvme_rdma",
        }
    }

    fn list(self, c: &Config) -> &Vec<String> {
        match self {
            Self::NvmeTcp => &c.nvme.listen,
            Self::Iscsi => &c.iscsi.listen,
            Self::NvmeRdma => &c.rdma.listen,
        }
    }

    fn list_mut(self, c: &mut Config) -> &mut Vec<String> {
        match self {
            Self::NvmeTcp => &mut c.nvme.listen,
            Self::Iscsi => &mut c.iscsi.listen,
            Self::NvmeRdma => &mut c.rdma.listen,
        }
    }

    /// Served by kernel sockets (and the AF_XDP reactors), sharing TCP ports.
    fn is_tcp(self) -> bool {
        self != Self::NvmeRdma
    }
}

/// `params.transport` and `params.addr`.
fn params_of(params: &Value) -> Result<(Kind, SocketAddr), RpcError> {
    let t = string_param(params, "transport")?;
    let kind = Kind::parse(&t).ok_or_else(|| {
        RpcError::invalid_params(format!(
            "params.transport: {t:?} is none of nvme_tcp, iscsi, nvme_rdma"
        ))
    })?;
    let a = string_param(params, "addr")?;
    let addr: SocketAddr = a.trim().parse().map_err(|_| {
        RpcError::invalid_params(format!(
            "params.addr: {a:?} is not an address:port (like 0.0.0.0:4421 or [::1]:3261)"
        ))
    })?;
    Ok((kind, addr))
}

/// The addresses a list holds (validated configurations parse).
fn addrs(list: &[String]) -> Vec<SocketAddr> {
    list.iter().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Whether a connection to `a` could reach a listener on `b`: the same port and family,
/// and the same address or a wildcard on either side.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Why `addr` cannot be added for `kind` to configuration `c`, if it cannot.
fn refusal(c: &Config, kind: Kind, addr: SocketAddr) -> Option<String> {
    if addr.port() == 0 {
        return Some(format!(
            "{addr}: a listener needs a fixed port (with port 0 every reactor would get another)"
        ));
    }
    if addrs(kind.list(c)).contains(&addr) {
        return Some(format!("already listening on {addr} ({})", kind.name()));
    }
    if kind.is_tcp() {
        for other in [Kind::NvmeTcp, Kind::Iscsi] {
            if let Some(o) = addrs(other.list(c))
                .into_iter()
                .find(|&o| overlaps(o, addr))
            {
                return Some(format!(
                    "{addr} overlaps {o}, which already listens for {} on port {}",
                    other.name(),
                    o.port()
                ));
            }
        }
        // The AF_XDP stacks tell the protocols apart by port alone.
        let other = if kind == Kind::NvmeTcp {
            Kind::Iscsi
        } else {
            Kind::NvmeTcp
        };
        if let Some(o) = addrs(other.list(c))
            .into_iter()
            .find(|o| o.port() == addr.port())
        {
            return Some(format!(
                "port {} already serves {} (on {o}): a port serves one protocol",
                addr.port(),
                other.name()
            ));
        }
    }
    None
}

/// The discovery log's ports with `addr` added (a new PORTID, the others keep theirs).
fn port_added(ports: &[Port], kind: Kind, addr: SocketAddr, discovery_port: u16) -> Vec<Port> {
    let mut out = ports.to_vec();
    let id = ports
        .iter()
        .map(|p| p.id)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    out.push(Port {
        id,
        addr: (!addr.ip().is_unspecified()).then_some(addr.ip()),
        port: addr.port(),
        io: addr.port() != discovery_port,
        transport: transport_of(kind),
    });
    out
}

/// The discovery log's ports without `addr`.
fn port_removed(ports: &[Port], kind: Kind, addr: SocketAddr) -> Vec<Port> {
    let a = (!addr.ip().is_unspecified()).then_some(addr.ip());
    ports
        .iter()
        .filter(|p| !(p.transport == transport_of(kind) && p.addr == a && p.port == addr.port()))
        .copied()
        .collect()
}

fn transport_of(kind: Kind) -> PortTransport {
    if kind == Kind::NvmeRdma {
        PortTransport::Rdma
    } else {
        PortTransport::Tcp
    }
}

fn portal(addr: SocketAddr) -> Portal {
    Portal {
        addr: (!addr.ip().is_unspecified()).then_some(addr.ip()),
        port: addr.port(),
    }
}

/// Whether a TCP listener (NVMe/TCP or iSCSI) of `c` has `port`.
fn tcp_port_in_use(c: &Config, port: u16) -> bool {
    [Kind::NvmeTcp, Kind::Iscsi]
        .iter()
        .flat_map(|k| addrs(k.list(c)))
        .any(|a| a.port() == port)
}

/// Listeners of NVMe (TCP and RDMA) or of iSCSI in `c`.
fn remaining(c: &Config, kind: Kind) -> usize {
    match kind {
        Kind::Iscsi => c.iscsi.listen.len(),
        Kind::NvmeTcp | Kind::NvmeRdma => c.nvme.listen.len() + c.rdma.listen.len(),
    }
}

impl Control {
    fn transports(&self) -> Result<&crate::transport::listeners::Listeners, RpcError> {
        self.listeners.as_deref().ok_or_else(|| {
            RpcError::refused("no transports run in this process: listeners cannot change")
        })
    }

    /// `add_listener`: accept on `addr` from now on, without a restart.
    pub(super) fn add_listener(&self, params: &Value) -> Result<Value, RpcError> {
        let (kind, addr) = params_of(params)?;
        let steer = match params.get("steer") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(RpcError::invalid_params("params.steer must be a boolean")),
        };
        if steer && !kind.is_tcp() {
            return Err(RpcError::invalid_params(
                "params.steer: only TCP ports (nvme_tcp, iscsi) are steered",
            ));
        }
        let mut c = lock(&self.config);
        if let Some(why) = refusal(&c, kind, addr) {
            return Err(RpcError::refused(why));
        }
        let mut changed = c.clone();
        kind.list_mut(&mut changed).push(addr.to_string());
        if steer && !changed.xdp.ports.contains(&addr.port()) {
            changed.xdp.ports.push(addr.port());
        }
        changed
            .validate()
            .map_err(|e| RpcError::invalid_params(e.to_string()))?;
        let t = self.transports()?;
        let failed = |e: crate::transport::listeners::ListenerError| {
            RpcError::refused(format!("cannot listen on {addr} ({}): {e}", kind.name()))
        };
        let in_use = tcp_port_in_use(&c, addr.port());
        let xdp = match kind {
            Kind::NvmeTcp => Some(
                t.add_tcp(Proto::Nvme, addr, steer, in_use)
                    .map_err(failed)?,
            ),
            Kind::Iscsi => Some(
                t.add_tcp(Proto::Iscsi, addr, steer, in_use)
                    .map_err(failed)?,
            ),
            Kind::NvmeRdma => {
                t.add_rdma(addr).map_err(failed)?;
                None
            }
        };
        let discovery_port = c.nvme.discovery_port;
        if kind == Kind::Iscsi {
            let mut r = lock(&self.iscsi_registry);
            let mut portals = r.portals().to_vec();
            portals.push(portal(addr));
            r.set_portals(portals);
        } else {
            let mut r = lock(&self.registry);
            let ports = port_added(r.ports(), kind, addr, discovery_port);
            r.set_ports(ports);
        }
        *c = changed;
        info!(transport = kind.name(), %addr, "control: listening on {addr}");
        let mut answer = json!({
            "transport": kind.name(),
            "addr": addr.to_string(),
            "listening": true,
            "listeners": kind.list(&c),
        });
        if let Some(x) = xdp {
            answer["xdp"] = json!(x.describe());
            answer["xdp_served"] = json!(matches!(x, XdpPath::Served | XdpPath::Steered));
        }
        if kind != Kind::Iscsi {
            answer["discovery"] = json!("the discovery log lists it");
        }
        Ok(answer)
    }

    /// `remove_listener`: stop accepting on `addr`; connections already up stay.
    pub(super) fn remove_listener(&self, params: &Value) -> Result<Value, RpcError> {
        let (kind, addr) = params_of(params)?;
        let mut c = lock(&self.config);
        let mut changed = c.clone();
        let list = kind.list_mut(&mut changed);
        let before = list.len();
        list.retain(|l| l.trim().parse::<SocketAddr>().ok() != Some(addr));
        if list.len() == before {
            return Err(RpcError::refused(format!(
                "not listening on {addr} ({}); listeners: {:?}",
                kind.name(),
                kind.list(&c)
            )));
        }
        changed
            .validate()
            .map_err(|e| RpcError::invalid_params(e.to_string()))?;
        let t = self.transports()?;
        let failed = |e: crate::transport::listeners::ListenerError| {
            RpcError::refused(format!("removing {addr} ({}): {e}", kind.name()))
        };
        let xdp = if kind.is_tcp() {
            let still_used = tcp_port_in_use(&changed, addr.port());
            Some(t.remove_tcp(addr, still_used).map_err(failed)?)
        } else {
            t.remove_rdma(addr).map_err(failed)?;
            None
        };
        if kind == Kind::Iscsi {
            let mut r = lock(&self.iscsi_registry);
            let portals = r
                .portals()
                .iter()
                .filter(|&&p| p != portal(addr))
                .copied()
                .collect();
            r.set_portals(portals);
        } else {
            let mut r = lock(&self.registry);
            let ports = port_removed(r.ports(), kind, addr);
            r.set_ports(ports);
        }
        *c = changed;
        let left = remaining(&c, kind);
        let family = if kind == Kind::Iscsi { "iSCSI" } else { "NVMe" };
        info!(
            transport = kind.name(),
            %addr,
            remaining = left,
            "control: no longer listening on {addr} (connections already up stay)"
        );
        let mut answer = json!({
            "transport": kind.name(),
            "addr": addr.to_string(),
            "removed": true,
            "connections": "connections already up on it stay until they end",
            "remaining": left,
            "listeners": kind.list(&c),
        });
        if left == 0 {
            answer["warning"] = json!(format!(
                "no {family} listener remains: new {family} connections are refused until one is added"
            ));
        }
        if let Some(x) = xdp {
            answer["xdp"] = json!(x.describe());
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::tests::control;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn steering_is_checked_before_anything_changes() {
        let c = control();
        let p = json!({"transport": "nvme_rdma", "addr": "10.0.0.1:4421", "steer": true});
        assert_eq!(c.call("add_listener", &p).unwrap_err().code, -32602);
        let p = json!({"transport": "nvme_tcp", "addr": "10.0.0.1:4421", "steer": "yes"});
        assert_eq!(c.call("add_listener", &p).unwrap_err().code, -32602);
        // The XDP program steers 16 ports at most: the configuration would not validate.
        lock(&c.config).xdp.ports = (5000..5016).collect();
        let p = json!({"transport": "nvme_tcp", "addr": "10.0.0.1:4421", "steer": true});
        let e = c.call("add_listener", &p).unwrap_err();
        assert!(e.message.contains("xdp.ports"), "{e:?}");
        assert_eq!(lock(&c.config).xdp.ports.len(), 16);
    }

    #[test]
    fn params_are_checked() {
        let ok = params_of(&json!({"transport": "iscsi", "addr": "127.0.0.1:3261"})).unwrap();
        assert_eq!(ok, (Kind::Iscsi, a("127.0.0.1:3261")));
        for bad in [
            json!({"transport": "fc", "addr": "127.0.0.1:1"}),
            json!({"transport": "nvme_tcp", "addr": "127.0.0.1"}),
            json!({"transport": "nvme_tcp", "addr": "host:4420"}),
            json!({"addr": "127.0.0.1:1"}),
        ] {
            assert_eq!(params_of(&bad).unwrap_err().code, -32602, "{bad}");
        }
    }

    #[test]
    fn overlapping_and_repeated_addresses_are_refused() {
        let mut c = Config::default();
        c.nvme.listen = vec!["0.0.0.0:4420".into(), "127.0.0.1:8009".into()];
        c.iscsi.listen = vec!["127.0.0.1:3260".into()];
        c.rdma.listen = vec!["10.0.0.1:4420".into()];
        let why = |k, s| refusal(&c, k, a(s));
        assert!(
            why(Kind::NvmeTcp, "0.0.0.0:4420")
                .unwrap()
                .contains("already")
        );
        assert!(
            why(Kind::NvmeTcp, "127.0.0.1:4420")
                .unwrap()
                .contains("overlaps")
        );
        assert!(why(Kind::Iscsi, "0.0.0.0:3260").unwrap().contains("iscsi"));
        assert!(
            why(Kind::Iscsi, "127.0.0.1:8009")
                .unwrap()
                .contains("nvme_tcp")
        );
        assert!(
            why(Kind::NvmeTcp, "127.0.0.1:0")
                .unwrap()
                .contains("fixed port")
        );
        assert!(
            why(Kind::NvmeRdma, "10.0.0.1:4420")
                .unwrap()
                .contains("already")
        );
        // Another family, another address on the port, or RDMA beside TCP: fine.
        assert_eq!(why(Kind::NvmeTcp, "[::]:4420"), None);
        assert!(
            why(Kind::Iscsi, "127.0.0.2:8009")
                .unwrap()
                .contains("one protocol")
        );
        assert_eq!(why(Kind::NvmeTcp, "127.0.0.2:8009"), None);
        assert_eq!(why(Kind::NvmeRdma, "10.0.0.1:4421"), None);
        assert_eq!(why(Kind::NvmeRdma, "127.0.0.1:3260"), None);
    }

    #[test]
    fn discovery_ports_keep_their_ids() {
        let one = port_added(&[], Kind::NvmeTcp, a("0.0.0.0:4420"), 8009);
        let two = port_added(&one, Kind::NvmeTcp, a("127.0.0.1:8009"), 8009);
        let three = port_added(&two, Kind::NvmeRdma, a("10.0.0.1:4420"), 8009);
        assert_eq!(three.iter().map(|p| p.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!((three[0].addr, three[0].io), (None, true));
        assert!(!three[1].io, "the discovery port serves no I/O");
        assert_eq!(three[2].transport, PortTransport::Rdma);
        // The TCP one on 4420 goes, the RDMA one on the same address stays.
        let left = port_removed(&three, Kind::NvmeTcp, a("0.0.0.0:4420"));
        assert_eq!(left.iter().map(|p| p.id).collect::<Vec<_>>(), [2, 3]);
        let four = port_added(&left, Kind::NvmeTcp, a("0.0.0.0:4421"), 8009);
        assert_eq!(
            four[2].id, 4,
            "a new PORTID, never a reused one while others live"
        );
        assert_eq!(port_removed(&four, Kind::NvmeTcp, a("10.0.0.1:4420")), four);
    }

    #[test]
    fn without_transports_nothing_changes() {
        let c = control();
        let p = json!({"transport": "nvme_tcp", "addr": "127.0.0.1:4499"});
        let e = c.call("add_listener", &p).unwrap_err();
        assert_eq!(e.code, 1);
        assert!(
            lock(&c.config)
                .nvme
                .listen
                .iter()
                .all(|l| l != "127.0.0.1:4499")
        );
        let e = c.call("remove_listener", &p).unwrap_err();
        assert!(e.message.contains("not listening"), "{e:?}");
        assert_eq!(remaining(&lock(&c.config), Kind::Iscsi), 1);
    }
}
