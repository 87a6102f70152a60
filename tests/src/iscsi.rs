//! The blocking iSCSI client (from `target-initiator`) and helpers for libiscsi's
//! command-line tools.

use std::path::PathBuf;

pub use target_initiator::blocking::iscsi::*;

/// A program from libiscsi's tools (libiscsi-bin) or the fio built with the libiscsi engine,
/// when installed.
pub fn tool(name: &str) -> Option<PathBuf> {
    if name == "fio-libiscsi" {
        let p = std::env::var_os("FIO_LIBISCSI").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fio-libiscsi/fio"),
            PathBuf::from,
        );
        return p.is_file().then_some(p);
    }
    let p = PathBuf::from("/usr/bin").join(name);
    p.is_file().then_some(p)
}

/// Skips the test when a tool is missing, except in CI, where `scripts/setup.sh` installs it.
#[macro_export]
macro_rules! require_tool {
    ($name:expr) => {
        match $crate::iscsi::tool($name) {
            Some(p) => p,
            None => {
                if std::env::var_os("CI").is_some() {
                    panic!("{} is missing in CI: scripts/setup.sh installs it", $name);
                }
                eprintln!("SKIPPED {}: {} is not installed", module_path!(), $name);
                return;
            }
        }
    };
}
