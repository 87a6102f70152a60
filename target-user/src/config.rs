//! The TOML configuration file (`xdp-target serve --config FILE`).
//!
//! ```toml
//! [xdp]
//! ports = [4420, 8009, 3260]        # TCP ports the XDP program steers (default shown)
//! mode = "auto"                     # auto (native, else skb) | native | skb
//! steer = true                      # false: only count storage-port packets, pass them on
//! allow_sources = ["10.0.0.0/8", "fd00::/8"]   # when set, other sources are dropped
//! ```
//!
//! Unknown keys are errors, so a typo cannot silently leave a setting at its default.

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;
use target_common::{DEFAULT_STORAGE_PORTS, MAX_STORAGE_PORTS};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("xdp.ports: {0}")]
    Ports(String),
    #[error("xdp.allow_sources: {0:?} is not an address or prefix (like 10.0.0.0/8 or fd00::/8)")]
    Prefix(String),
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub xdp: XdpConfig,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic (skb) mode.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Skb,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct XdpConfig {
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub mode: XdpMode,
    #[serde(default = "yes")]
    pub steer: bool,
    /// Empty: every source is allowed and the allow-list is off.
    #[serde(default)]
    pub allow_sources: Vec<String>,
}

fn default_ports() -> Vec<u16> {
    DEFAULT_STORAGE_PORTS.to_vec()
}

const fn yes() -> bool {
    true
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self {
            ports: default_ports(),
            mode: XdpMode::Auto,
            steer: true,
            allow_sources: Vec::new(),
        }
    }
}

/// An address prefix of the source allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Prefix(s.to_string());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if len > max {
            return Err(bad());
        }
        Ok(Self { addr, len })
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: p,
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.xdp.validate()
    }
}

impl XdpConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ports = &self.ports;
        if ports.is_empty() {
            return Err(ConfigError::Ports("at least one port is needed".into()));
        }
        if ports.len() > MAX_STORAGE_PORTS as usize {
            return Err(ConfigError::Ports(format!(
                "{} ports given, the XDP program matches at most {MAX_STORAGE_PORTS}",
                ports.len()
            )));
        }
        if ports.contains(&0) {
            return Err(ConfigError::Ports("port 0 is not a valid TCP port".into()));
        }
        for (i, p) in ports.iter().enumerate() {
            if ports[..i].contains(p) {
                return Err(ConfigError::Ports(format!("port {p} is listed twice")));
            }
        }
        self.prefixes().map(drop)
    }

    pub fn prefixes(&self) -> Result<Vec<Prefix>, ConfigError> {
        self.allow_sources
            .iter()
            .map(|s| Prefix::parse(s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.xdp.ports, vec![4420, 8009, 3260]);
        assert!(c.xdp.steer);
        assert_eq!(c.xdp.mode, XdpMode::Auto);
    }

    #[test]
    fn full_xdp_section_parses() {
        let c = parse(
            "[xdp]\nports = [4420]\nmode = \"skb\"\nsteer = false\nallow_sources = [\"10.1.0.0/16\", \"fd00::1\"]\n",
        )
        .unwrap();
        assert_eq!(c.xdp.ports, vec![4420]);
        assert_eq!(c.xdp.mode, XdpMode::Skb);
        assert!(!c.xdp.steer);
        let p = c.xdp.prefixes().unwrap();
        assert_eq!(
            p[0],
            Prefix {
                addr: "10.1.0.0".parse().unwrap(),
                len: 16
            }
        );
        assert_eq!(
            p[1],
            Prefix {
                addr: "fd00::1".parse().unwrap(),
                len: 128
            }
        );
    }

    #[test]
    fn mistakes_are_reported_with_the_key() {
        let cases = [
            ("[xdp]\nport = [1]\n", "unknown field `port`"),
            ("[xdp]\nports = []\n", "xdp.ports: at least one port"),
            ("[xdp]\nports = [0]\n", "port 0"),
            ("[xdp]\nports = [1, 1]\n", "listed twice"),
            ("[xdp]\nports = [70000]\n", "invalid value"),
            ("[xdp]\nmode = \"fast\"\n", "unknown variant"),
            (
                "[xdp]\nallow_sources = [\"10.0.0.0/33\"]\n",
                "xdp.allow_sources",
            ),
            ("[xdp]\nallow_sources = [\"host\"]\n", "xdp.allow_sources"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
        let many = format!("[xdp]\nports = {:?}\n", (1..=17).collect::<Vec<u16>>());
        assert!(parse(&many).unwrap_err().contains("at most 16"));
    }
}
