//! `xdp-target-perf`: `xdp-target perf` without the rest of the target (and so without the
//! eBPF toolchain), for the machines that only measure.

use clap::Parser;

#[derive(Parser)]
#[command(about = "NVMe/TCP, NVMe/RDMA and iSCSI initiator for benchmarks and data checks")]
struct Cli {
    #[command(flatten)]
    perf: target_initiator::perf::PerfArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    target_initiator::perf::run(&cli.perf).map_err(anyhow::Error::from)
}
