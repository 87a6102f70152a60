//! `xdp-target`: a storage target for NVMe/TCP and iSCSI with an XDP/AF_XDP fast path.
//!
//! What runs today: NVMe/TCP over kernel sockets with memory namespaces (`serve`), and the
//! XDP steering program with its eBPF-map counters (`serve --xdp`, `stats`). iSCSI, file
//! backends and the AF_XDP data path are listed as not done in the README.

mod backend;
mod config;
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
