//! `xdp-target`: a storage target for NVMe/TCP and iSCSI with an XDP/AF_XDP fast path.
//!
//! What runs today: NVMe/TCP over kernel sockets with memory namespaces (`serve`), and the
//! XDP steering program with its eBPF-map counters (`serve --xdp`, `stats`). iSCSI, file
//! backends and the AF_XDP data path are listed as not done in the README.

mod backend;
mod config;
mod control;
mod mapping;
mod metrics;
mod reactor;
mod serve;
mod transport;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use tracing::{error, info, warn};

use crate::config::{Config, XdpMode};

#[derive(Parser)]
#[command(
    name = "xdp-target",
    version,
    about = "NVMe/TCP and iSCSI storage target with an XDP fast path"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve NVMe/TCP (and with --xdp, attach the XDP steering program) until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Measure (and with --verify, check) an NVMe/TCP, NVMe/RDMA or iSCSI target, like
    /// spdk_nvme_perf.
    Perf(target_initiator::perf::PerfArgs),
    /// Change a running target: allow lists, CHAP, listeners, and save its configuration
    /// (see the README).
    Ctl(CtlArgs),
    /// Print the XDP counters of a running `serve --xdp`.
    Stats {
        /// The interface the target serves.
        #[arg(long)]
        iface: String,
        /// One JSON object (one per line with --watch).
        #[arg(long)]
        json: bool,
        /// Print again every SECS seconds.
        #[arg(long, value_name = "SECS")]
        watch: Option<u64>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file (see the README); defaults apply without it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Attach the XDP program to this interface and steer the storage ports.
    #[arg(long, value_name = "IFACE")]
    xdp: Option<String>,
    /// XDP attach mode (overrides xdp.mode).
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpMode>,
    /// Fail instead of falling back to kernel sockets when no AF_XDP socket can be bound
    /// (sets xdp.require_afxdp).
    #[arg(long)]
    require_afxdp: bool,
    /// Who computes the TCP checksums the XDP path sends (overrides xdp.tx_checksum).
    #[arg(long, value_enum)]
    tx_checksum: Option<transport::xdp::xsk::TxChecksum>,
    /// Only count storage-port packets and pass them to the kernel (sets xdp.steer = false).
    #[arg(long)]
    count_only: bool,
    /// Allow storage-port packets only from this address or prefix; repeatable (adds to
    /// xdp.allow_sources).
    #[arg(long, value_name = "CIDR")]
    allow_source: Vec<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9464 (sets
    /// metrics.listen).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Answer `xdp-target ctl` on this Unix socket (sets control.socket).
    #[arg(long, value_name = "PATH")]
    control: Option<String>,
}

/// Where `xdp-target ctl` finds a target when `--socket` is not given.
const DEFAULT_CONTROL_SOCKET: &str = "/run/xdp-target.sock";

#[derive(clap::Args)]
struct CtlArgs {
    /// The control socket of the running target (its control.socket or --control).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    what: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Subsystems, namespaces, allow lists and listeners, as JSON.
    List,
    /// Add an NVM subsystem (also an iSCSI target with --iqn), without namespaces: add
    /// them with add-namespace. `call add_subsystem` takes a whole [[subsystem]] table.
    AddSubsystem {
        nqn: String,
        #[arg(long)]
        iqn: Option<String>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        serial: Option<String>,
    },
    /// Remove a subsystem and its iSCSI target: their controllers and sessions end.
    RemoveSubsystem { nqn: String },
    /// Add namespace NSID to subsystem NQN (also LUN NSID-1 of its iSCSI target): memory
    /// of --size, or the file or block device --file (created with --size when missing).
    AddNamespace {
        nqn: String,
        nsid: u32,
        /// Bytes, or with a suffix: 512MiB, 1GiB.
        #[arg(long)]
        size: Option<String>,
        #[arg(long, value_name = "PATH")]
        file: Option<String>,
        #[arg(long, default_value_t = 512)]
        block_size: u32,
        /// Not exported over NVMe.
        #[arg(long)]
        no_nvme: bool,
        /// Not an iSCSI LUN.
        #[arg(long)]
        no_iscsi: bool,
        /// Refuse writes (iSCSI only; with --no-nvme).
        #[arg(long)]
        read_only: bool,
    },
    /// Remove namespace NSID of subsystem NQN (and its LUN).
    RemoveNamespace { nqn: String, nsid: u32 },
    /// Grow namespace NSID of subsystem NQN to SIZE (bytes, or 2GiB); hosts are told.
    ResizeNamespace {
        nqn: String,
        nsid: u32,
        size: String,
    },
    /// Let host NQN HOST connect to subsystem NQN.
    AddHost { nqn: String, host: String },
    /// Stop letting HOST connect to NQN (connected hosts stay); never empties the list.
    RemoveHost { nqn: String, host: String },
    /// Replace NQN's host list; --any lets every host connect.
    SetHosts {
        nqn: String,
        hosts: Vec<String>,
        #[arg(long, conflicts_with = "hosts")]
        any: bool,
    },
    /// Let initiator INITIATOR log in to iSCSI target IQN.
    AddInitiator { iqn: String, initiator: String },
    /// Stop letting INITIATOR log in to IQN (sessions stay); never empties the list.
    RemoveInitiator { iqn: String, initiator: String },
    /// Replace IQN's initiator list; --any lets every initiator log in.
    SetInitiators {
        iqn: String,
        initiators: Vec<String>,
        #[arg(long, conflicts_with = "initiators")]
        any: bool,
    },
    /// Start accepting TRANSPORT (nvme_tcp, iscsi, nvme_rdma) on ADDR (IP:PORT) now,
    /// without a restart; NVMe listeners join the discovery log.
    AddListener {
        #[arg(value_parser = ["nvme_tcp", "iscsi", "nvme_rdma"])]
        transport: String,
        addr: String,
        /// XDP path: steer the port if the XDP program does not yet (adds it to
        /// xdp.ports), so the AF_XDP reactors serve it rather than the kernel socket.
        #[arg(long)]
        steer: bool,
    },
    /// Stop accepting on ADDR (connections already up stay); says how many remain.
    RemoveListener {
        #[arg(value_parser = ["nvme_tcp", "iscsi", "nvme_rdma"])]
        transport: String,
        addr: String,
    },
    /// Write the running configuration as TOML (default: the file serve --config read).
    Save { path: Option<PathBuf> },
    /// Any method with JSON params, e.g. `call add_host '{"nqn":"..","host":".."}'`; `-`
    /// reads them from stdin (for secrets: `set_chap`, which the command line would show
    /// to every user's `ps`).
    Call {
        method: String,
        params: Option<String>,
    },
}

fn ctl(args: CtlArgs) -> anyhow::Result<()> {
    use serde_json::json;
    let (method, params) = match args.what {
        CtlCommand::List => ("list", json!({})),
        CtlCommand::AddSubsystem {
            nqn,
            iqn,
            model,
            serial,
        } => {
            let mut p = json!({ "nqn": nqn, "iqn": iqn, "serial": serial });
            if let Some(m) = model {
                p["model"] = json!(m);
            }
            ("add_subsystem", p)
        }
        CtlCommand::RemoveSubsystem { nqn } => ("remove_subsystem", json!({ "nqn": nqn })),
        CtlCommand::AddNamespace {
            nqn,
            nsid,
            size,
            file,
            block_size,
            no_nvme,
            no_iscsi,
            read_only,
        } => (
            "add_namespace",
            json!({
                "nqn": nqn,
                "nsid": nsid,
                "backend": if file.is_some() { "file" } else { "memory" },
                "size": size,
                "path": file,
                "block_size": block_size,
                "nvme": !no_nvme,
                "iscsi": !no_iscsi,
                "read_only": read_only,
            }),
        ),
        CtlCommand::RemoveNamespace { nqn, nsid } => {
            ("remove_namespace", json!({ "nqn": nqn, "nsid": nsid }))
        }
        CtlCommand::ResizeNamespace { nqn, nsid, size } => (
            "resize_namespace",
            json!({ "nqn": nqn, "nsid": nsid, "size": size }),
        ),
        CtlCommand::AddHost { nqn, host } => ("add_host", json!({"nqn": nqn, "host": host})),
        CtlCommand::RemoveHost { nqn, host } => ("remove_host", json!({"nqn": nqn, "host": host})),
        CtlCommand::SetHosts { nqn, hosts, any } => (
            "set_hosts",
            json!({"nqn": nqn, "hosts": if any { None } else { Some(hosts) }}),
        ),
        CtlCommand::AddInitiator { iqn, initiator } => {
            ("add_initiator", json!({"iqn": iqn, "initiator": initiator}))
        }
        CtlCommand::RemoveInitiator { iqn, initiator } => (
            "remove_initiator",
            json!({"iqn": iqn, "initiator": initiator}),
        ),
        CtlCommand::SetInitiators {
            iqn,
            initiators,
            any,
        } => (
            "set_initiators",
            json!({"iqn": iqn, "initiators": if any { None } else { Some(initiators) }}),
        ),
        CtlCommand::AddListener {
            transport,
            addr,
            steer,
        } => (
            "add_listener",
            json!({"transport": transport, "addr": addr, "steer": steer}),
        ),
        CtlCommand::RemoveListener { transport, addr } => (
            "remove_listener",
            json!({"transport": transport, "addr": addr}),
        ),
        CtlCommand::Save { path } => ("save", json!({ "path": path })),
        CtlCommand::Call { method, params } => {
            let params = match params.as_deref() {
                Some("-") => {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
                    Some(text)
                }
                _ => params,
            };
            let p = match params {
                Some(p) => serde_json::from_str(&p)
                    .map_err(|e| anyhow::anyhow!("params are not JSON: {e}"))?,
                None => json!({}),
            };
            let result = control::request(&args.socket, &method, p)?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            return Ok(());
        }
    };
    let result = control::request(&args.socket, method, params)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Perf(args) => target_initiator::perf::run(&args).map_err(anyhow::Error::from),
        Command::Ctl(args) => ctl(args),
        Command::Stats { iface, json, watch } => {
            transport::xdp::stats::run(&iface, json, watch).map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdp-target: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn attach_xdp(iface: &str, config: &Config) -> anyhow::Result<transport::xdp::steering::Steering> {
    let steering = transport::xdp::steering::Steering::attach(iface, &config.xdp)?;
    info!(
        iface,
        mode = steering.mode(),
        ports = ?config.xdp.ports,
        pins = %steering.pin_dir().display(),
        "XDP program attached"
    );
    if !config.xdp.steer {
        info!("count-only mode: storage-port packets are counted and passed to the kernel");
    }
    info!("counters: xdp-target stats --iface {iface}");
    Ok(steering)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(mode) = args.xdp_mode {
        config.xdp.mode = mode;
    }
    if args.require_afxdp {
        config.xdp.require_afxdp = true;
    }
    if let Some(c) = args.tx_checksum {
        config.xdp.tx_checksum = c;
    }
    if args.count_only {
        config.xdp.steer = false;
    }
    config.xdp.allow_sources.extend(args.allow_source);
    if let Some(addr) = args.metrics {
        config.metrics.listen = Some(addr);
    }
    if let Some(path) = args.control {
        config.control.socket = Some(path);
    }
    config.validate()?;

    // Register the signals before anything starts, so a signal during setup still
    // detaches the XDP program and closes the listeners.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let mut steering = match &args.xdp {
        Some(iface) => Some(attach_xdp(iface, &config)?),
        None => None,
    };
    // No listeners: steering and counters only (the XDP tests run it so).
    if config.nvme.listen.is_empty() {
        warn!("nvme.listen is empty: no NVMe/TCP is served");
    }
    if config.iscsi.listen.is_empty() {
        warn!("iscsi.listen is empty: no iSCSI is served");
    }
    let server = if config.nvme.listen.is_empty()
        && config.iscsi.listen.is_empty()
        && config.rdma.listen.is_empty()
    {
        // Nothing is served, but the XDP program's counters are still worth scraping.
        if let Some(addr) = config.metrics.addr()? {
            let iface = steering.as_ref().map(|s| s.iface());
            metrics::http::spawn(addr, std::sync::Arc::new(metrics::Metrics::new(&[], iface)))
                .map_err(|source| serve::ServeError::MetricsListen { addr, source })?;
        }
        None
    } else {
        Some(serve::start(&config, steering.as_mut())?)
    };
    if let (Some(path), Some(server)) = (&config.control.socket, &server) {
        let c = control::Control::new(
            config.clone(),
            args.config.clone(),
            control::Served {
                registry: std::sync::Arc::clone(&server.registry),
                iscsi_registry: std::sync::Arc::clone(&server.iscsi_registry),
                backends: std::sync::Arc::clone(&server.backends),
                metrics: std::sync::Arc::clone(&server.metrics),
            },
        )
        .with_listeners(std::sync::Arc::clone(&server.listeners));
        control::spawn(std::path::Path::new(path), std::sync::Arc::new(c))
            .map_err(|e| anyhow::anyhow!("control socket {path}: {e}"))?;
    }
    for s in &config.subsystems {
        for n in &s.namespaces {
            info!(nqn = %s.nqn, nsid = n.nsid, backend = ?n.backend, path = ?n.path, block_size = n.block_size, "namespace");
        }
    }
    info!("stop with Ctrl-C or SIGTERM");
    if let Some(sig) = signals.forever().next() {
        info!(signal = sig, "stopping");
    } else {
        error!("signal iterator ended unexpectedly");
    }
    if let Some(server) = server {
        server.stop();
    }
    drop(steering);
    if reactor::REACTOR_FAILED.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!("a reactor failed (see the error above); the target stopped");
    }
    Ok(())
}
