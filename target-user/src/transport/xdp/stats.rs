//! `xdp-target stats`: reads the counters pinned by a running `serve --xdp` without
//! touching the target, sums the per-CPU copies and prints a table or JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use serde_json::{Value, json};
use target_common::{Action, Counters, PORT_FLAG_STEER, PortEntry, SLOT_OTHER, map_names};

use super::bpffs;

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error(
        "no xdp-target is serving {iface}: {dir} does not exist (start one with `xdp-target serve --xdp {iface}`)"
    )]
    NotServing { iface: String, dir: PathBuf },
    #[error("permission denied reading {0}: reading pinned BPF maps needs root")]
    Permission(PathBuf),
    #[error("cannot read pinned map {path}: {message}")]
    Map { path: PathBuf, message: String },
}

/// One port's (or the other-traffic bucket's) counters, summed over CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `None` for traffic not on a storage port.
    pub port: Option<u16>,
    pub steer: bool,
    pub counters: Counters,
}

pub fn read(iface: &str) -> Result<Vec<Row>, StatsError> {
    let dir = bpffs::dir_for(iface);
    if !dir.join(map_names::COUNTERS).exists() {
        return Err(StatsError::NotServing {
            iface: iface.to_string(),
            dir,
        });
    }
    let ports: HashMap<MapData, u16, PortEntry> = open(&dir, map_names::STORAGE_PORTS)?;
    let counters: PerCpuArray<MapData, Counters> = open(&dir, map_names::COUNTERS)?;
    let map_err = |name: &str, e: aya::maps::MapError| StatsError::Map {
        path: dir.join(name),
        message: e.to_string(),
    };
    let sum = |slot: u32| -> Result<Counters, StatsError> {
        let per_cpu = counters
            .get(&slot, 0)
            .map_err(|e| map_err(map_names::COUNTERS, e))?;
        let mut total = Counters::default();
        for c in per_cpu.iter() {
            total.add(c);
        }
        Ok(total)
    };
    let mut by_port = BTreeMap::new();
    for item in ports.iter() {
        let (port, entry) = item.map_err(|e| map_err(map_names::STORAGE_PORTS, e))?;
        by_port.insert(port, entry);
    }
    let mut rows = Vec::with_capacity(by_port.len() + 1);
    for (port, entry) in by_port {
        rows.push(Row {
            port: Some(port),
            steer: entry.flags & PORT_FLAG_STEER != 0,
            counters: sum(entry.slot)?,
        });
    }
    rows.push(Row {
        port: None,
        steer: false,
        counters: sum(SLOT_OTHER)?,
    });
    Ok(rows)
}

fn open<T: TryFrom<Map, Error = aya::maps::MapError>>(
    dir: &Path,
    name: &str,
) -> Result<T, StatsError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| {
        let denied = matches!(
            &e,
            aya::maps::MapError::SyscallError(s)
                if matches!(s.io_error.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        );
        if denied {
            StatsError::Permission(path.clone())
        } else {
            StatsError::Map {
                path: path.clone(),
                message: e.to_string(),
            }
        }
    })?;
    let map = Map::from_map_data(data).map_err(|e| StatsError::Map {
        path: path.clone(),
        message: e.to_string(),
    })?;
    T::try_from(map).map_err(|e| StatsError::Map {
        path,
        message: e.to_string(),
    })
}

fn per_action(values: &[u64; Action::COUNT]) -> Value {
    Value::Object(
        Action::ALL
            .iter()
            .map(|a| (a.name().into(), json!(values[*a as usize])))
            .collect(),
    )
}

pub fn to_json(iface: &str, rows: &[Row]) -> Value {
    let entry = |r: &Row| {
        json!({
            "packets": per_action(&r.counters.packets),
            "bytes": per_action(&r.counters.bytes),
        })
    };
    let ports: Vec<Value> = rows
        .iter()
        .filter_map(|r| {
            let mut v = entry(r);
            v["port"] = json!(r.port?);
            v["mode"] = json!(if r.steer { "steer" } else { "count" });
            Some(v)
        })
        .collect();
    let other = rows
        .iter()
        .find(|r| r.port.is_none())
        .map(entry)
        .unwrap_or(Value::Null);
    json!({ "iface": iface, "ports": ports, "other": other })
}

pub fn to_table(iface: &str, rows: &[Row]) -> String {
    let mut out = format!("xdp-target counters on {iface} (packets; bytes in the last column)\n");
    let _ = write!(out, "{:<7} {:<6}", "port", "mode");
    for a in Action::ALL {
        let _ = write!(out, " {:>15}", a.name());
    }
    let _ = writeln!(out, " {:>15}", "bytes");
    for r in rows {
        let (port, mode) = match r.port {
            Some(p) => (p.to_string(), if r.steer { "steer" } else { "count" }),
            None => ("other".to_string(), "-"),
        };
        let _ = write!(out, "{port:<7} {mode:<6}");
        for a in Action::ALL {
            let _ = write!(out, " {:>15}", r.counters.packets[a as usize]);
        }
        let bytes: u64 = r.counters.bytes.iter().sum();
        let _ = writeln!(out, " {bytes:>15}");
    }
    out
}

/// Prints once, or every `watch` seconds until interrupted.
pub fn run(iface: &str, json: bool, watch: Option<u64>) -> Result<(), StatsError> {
    loop {
        let rows = read(iface)?;
        let text = if json {
            to_json(iface, &rows).to_string()
        } else {
            to_table(iface, &rows)
        };
        println!("{text}");
        let Some(secs) = watch else { return Ok(()) };
        std::thread::sleep(std::time::Duration::from_secs(secs.max(1)));
        if !json {
            println!();
        }
        let _ = io::Write::flush(&mut io::stdout());
    }
}

/// Two rows with known counters, for the tests of their readers.
#[cfg(test)]
pub(crate) fn sample_rows() -> Vec<Row> {
    vec![
        Row {
            port: Some(4420),
            steer: true,
            counters: Counters {
                packets: [5, 0, 2, 1],
                bytes: [500, 0, 120, 60],
            },
        },
        Row {
            port: None,
            steer: false,
            counters: Counters {
                packets: [0, 9, 0, 0],
                bytes: [0, 900, 0, 0],
            },
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_every_action_per_port() {
        let v = to_json("veth0", &sample_rows());
        assert_eq!(v["iface"], "veth0");
        assert_eq!(v["ports"][0]["port"], 4420);
        assert_eq!(v["ports"][0]["mode"], "steer");
        assert_eq!(v["ports"][0]["packets"]["redirected"], 5);
        assert_eq!(v["ports"][0]["packets"]["redirect_failed"], 2);
        assert_eq!(v["ports"][0]["packets"]["dropped_acl"], 1);
        assert_eq!(v["ports"][0]["bytes"]["redirected"], 500);
        assert_eq!(v["other"]["packets"]["passed"], 9);
        assert_eq!(v["ports"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn table_has_a_row_per_port_and_other() {
        let t = to_table("veth0", &sample_rows());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[1].contains("redirect_failed"));
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(row, ["4420", "steer", "5", "0", "2", "1", "680"]);
        assert!(lines[3].starts_with("other"));
    }
}
