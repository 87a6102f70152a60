//! Run-time control: `xdp-target ctl` talks to a running `serve` over a Unix socket
//! (`[control] socket`, `serve --control PATH`), as SPDK's rpc.py, nvmetcli and tgtadm do
//! for theirs.
//!
//! The protocol is JSON-RPC 2.0, one request per line and one response per line:
//!
//! ```text
//! {"jsonrpc":"2.0","id":1,"method":"add_host","params":{"nqn":"nqn...","host":"nqn..."}}
//! {"jsonrpc":"2.0","id":1,"result":{"nqn":"nqn...","allow_hosts":["nqn..."]}}
//! ```
//!
//! Methods: `list`; `add_subsystem`, `remove_subsystem`, `add_namespace`,
//! `remove_namespace`, `resize_namespace` (`storage`); `add_host`, `remove_host`,
//! `set_hosts` (NVMe host allow lists); `add_initiator`, `remove_initiator`,
//! `set_initiators` (iSCSI initiator allow lists); `set_chap` (the CHAP an iSCSI target
//! requires); `add_listener`, `remove_listener` (addresses NVMe/TCP, iSCSI and NVMe/RDMA
//! are served on; [`listeners`]); `save` (the running configuration as TOML). An
//! allow-list change applies to connects and logins
//! from then on; connections already up stay, as with Linux's nvmet and LIO. An empty
//! allow list means any host, so `remove_*` never empties one: `set_*` with `null` says
//! "any" explicitly. The socket is created mode 0600: whoever can write to it can change
//! who may reach the storage.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use target_proto::iscsi::Registry as IscsiRegistry;
use target_proto::nvme::subsystem::Registry;
use tracing::{info, warn};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::reactor::block::Backends;

mod storage;

mod listeners;

/// The most a request line may hold.
const MAX_REQUEST: usize = 64 * 1024;

/// What the control socket acts on.
pub struct Control {
    /// The running configuration, kept up to date with every change (what `save` writes).
    config: Mutex<Config>,
    /// The file `serve --config` read, where `save` writes by default.
    config_path: Option<PathBuf>,
    registry: Arc<Mutex<Registry>>,
    iscsi_registry: Arc<Mutex<IscsiRegistry>>,
    backends: Arc<Backends>,
    metrics: Arc<Metrics>,
    /// The running transports, for `add_listener` and `remove_listener`.
    listeners: Option<Arc<crate::transport::listeners::Listeners>>,
}

/// What the control socket changes in the running target (`serve::Server` has them).
pub struct Served {
    pub registry: Arc<Mutex<Registry>>,
    pub iscsi_registry: Arc<Mutex<IscsiRegistry>>,
    pub backends: Arc<Backends>,
    pub metrics: Arc<Metrics>,
}

/// A JSON-RPC error: its code and message.
#[derive(Debug, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    fn invalid_params(message: impl Into<String>) -> Self {
        Self {
            code: -32602,
            message: message.into(),
        }
    }

    /// An application error: the request was understood but cannot be done.
    fn refused(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn string_param(params: &Value, key: &str) -> Result<String, RpcError> {
    params
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| RpcError::invalid_params(format!("params.{key} (a string) is missing")))
}

/// `params.KEY`: a list of strings, or `null` (any).
fn list_param(params: &Value, key: &str) -> Result<Option<Vec<String>>, RpcError> {
    match params.get(key) {
        Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| RpcError::invalid_params(format!("params.{key}: strings only"))),
        _ => Err(RpcError::invalid_params(format!(
            "params.{key} must be a list of names, or null for any"
        ))),
    }
}

/// Which allow list a method changes.
#[derive(Clone, Copy)]
enum Acl {
    /// A subsystem's host NQNs.
    Hosts,
    /// An iSCSI target's initiator names.
    Initiators,
}

impl Acl {
    /// The parameter names: the subsystem or target, one member, the whole list.
    fn keys(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Hosts => ("nqn", "host", "hosts"),
            Self::Initiators => ("iqn", "initiator", "initiators"),
        }
    }
}

impl Control {
    pub fn new(config: Config, config_path: Option<PathBuf>, served: Served) -> Self {
        Self {
            config: Mutex::new(config),
            config_path,
            registry: served.registry,
            iscsi_registry: served.iscsi_registry,
            backends: served.backends,
            metrics: served.metrics,
            listeners: None,
        }
    }

    /// The running transports' listeners, which `add_listener` and `remove_listener` change.
    pub fn with_listeners(mut self, l: Arc<crate::transport::listeners::Listeners>) -> Self {
        self.listeners = Some(l);
        self
    }

    /// Runs one method.
    pub fn call(&self, method: &str, params: &Value) -> Result<Value, RpcError> {
        match method {
            "list" => Ok(self.list()),
            "add_subsystem" => self.add_subsystem(params),
            "remove_subsystem" => self.remove_subsystem(params),
            "add_namespace" => self.add_namespace(params),
            "remove_namespace" => self.remove_namespace(params),
            "resize_namespace" => self.resize_namespace(params),
            "add_host" => self.change(Acl::Hosts, params, Change::Add),
            "remove_host" => self.change(Acl::Hosts, params, Change::Remove),
            "set_hosts" => self.change(Acl::Hosts, params, Change::Set),
            "add_initiator" => self.change(Acl::Initiators, params, Change::Add),
            "remove_initiator" => self.change(Acl::Initiators, params, Change::Remove),
            "set_initiators" => self.change(Acl::Initiators, params, Change::Set),
            "set_chap" => self.set_chap(params),
            "add_listener" => self.add_listener(params),
            "remove_listener" => self.remove_listener(params),
            "save" => self.save(params),
            _ => Err(RpcError {
                code: -32601,
                message: format!(
                    "no method {method:?}; there are list, add_subsystem, remove_subsystem, \
                     add_namespace, remove_namespace, resize_namespace, add_host, remove_host, \
                     set_hosts, add_initiator, remove_initiator, set_initiators, set_chap, \
                     add_listener, remove_listener, save"
                ),
            }),
        }
    }

    fn list(&self) -> Value {
        let c = lock(&self.config);
        let subsystems: Vec<Value> = c
            .subsystems
            .iter()
            .map(|s| {
                let namespaces: Vec<Value> = s
                    .namespaces
                    .iter()
                    .map(|n| {
                        json!({
                            "nsid": n.nsid,
                            "backend": n.backend,
                            "size": n.size,
                            "path": n.path,
                            "block_size": n.block_size,
                            "nvme": n.nvme,
                            "iscsi": n.iscsi,
                            "read_only": n.read_only,
                        })
                    })
                    .collect();
                json!({
                    "nqn": s.nqn,
                    "iqn": s.iqn,
                    "allow_hosts": s.allow_hosts,
                    "allow_initiators": s.allow_initiators,
                    "chap": s.chap.is_some(),
                    "mutual_chap": s.mutual_chap.is_some(),
                    "namespaces": namespaces,
                })
            })
            .collect();
        json!({
            "subsystems": subsystems,
            "listeners": {
                "nvme_tcp": c.nvme.listen,
                "iscsi": c.iscsi.listen,
                "nvme_rdma": c.rdma.listen,
                "discovery_port": c.nvme.discovery_port,
            },
        })
    }

    fn change(&self, acl: Acl, params: &Value, how: Change) -> Result<Value, RpcError> {
        let (owner_key, member_key, list_key) = acl.keys();
        let owner = string_param(params, owner_key)?;
        let mut c = lock(&self.config);
        let Some(s) = c.subsystems.iter_mut().find(|s| match acl {
            Acl::Hosts => s.nqn == owner,
            Acl::Initiators => s.iqn.as_deref() == Some(owner.as_str()),
        }) else {
            return Err(RpcError::refused(match acl {
                Acl::Hosts => format!("no subsystem {owner:?}"),
                Acl::Initiators => format!("no iSCSI target {owner:?}"),
            }));
        };
        let list = match acl {
            Acl::Hosts => &mut s.allow_hosts,
            Acl::Initiators => &mut s.allow_initiators,
        };
        let new = match how {
            Change::Set => list_param(params, list_key)?.unwrap_or_default(),
            Change::Add => {
                let m = string_param(params, member_key)?;
                if m.is_empty() || m.len() > 223 {
                    return Err(RpcError::invalid_params(format!(
                        "params.{member_key}: 1 to 223 bytes"
                    )));
                }
                let mut l = list.clone();
                if !l.contains(&m) {
                    l.push(m);
                }
                l
            }
            Change::Remove => {
                let m = string_param(params, member_key)?;
                if !list.contains(&m) {
                    return Err(RpcError::refused(format!(
                        "{m:?} is not on the list of {owner:?}"
                    )));
                }
                if list.len() == 1 {
                    // An empty list lets everyone in: that must be said, not implied.
                    return Err(RpcError::refused(format!(
                        "{m:?} is the last entry: removing it would let any {member_key} in; \
                         use set_{list_key} with null to allow any, or add another first"
                    )));
                }
                list.iter().filter(|x| **x != m).cloned().collect()
            }
        };
        let applied = (!new.is_empty()).then(|| new.clone());
        let found = match acl {
            Acl::Hosts => lock(&self.registry).set_allowed_hosts(&owner, applied),
            Acl::Initiators => lock(&self.iscsi_registry).set_allowed_initiators(&owner, applied),
        };
        if !found {
            return Err(RpcError::refused(format!(
                "{owner:?} is configured but not served (a bug)"
            )));
        }
        *list = new.clone();
        info!(
            owner,
            list = ?new,
            "control: {list_key} of {owner} changed (an empty list allows any)"
        );
        Ok(json!({ owner_key: owner, list_key: new, "any": new.is_empty() }))
    }

    /// `{iqn, chap: {user, secret} | null, mutual_chap: {user, secret} | null}`: the CHAP an
    /// iSCSI target requires from now on, checked by the same rules as the configuration
    /// file (secrets of 12 to 256 bytes, mutual CHAP only with CHAP, secrets that differ).
    fn set_chap(&self, params: &Value) -> Result<Value, RpcError> {
        let iqn = string_param(params, "iqn")?;
        let creds = |key: &str| -> Result<Option<crate::config::ChapCredentials>, RpcError> {
            match params.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
                    RpcError::invalid_params(format!("params.{key}: {{user, secret}}: {e}"))
                }),
            }
        };
        let (chap, mutual) = (creds("chap")?, creds("mutual_chap")?);
        let mut c = lock(&self.config);
        let mut changed = c.clone();
        let Some(s) = changed
            .subsystems
            .iter_mut()
            .find(|s| s.iqn.as_deref() == Some(iqn.as_str()))
        else {
            return Err(RpcError::refused(format!("no iSCSI target {iqn:?}")));
        };
        s.chap = chap;
        s.mutual_chap = mutual;
        let applied = crate::serve::chap_config(s);
        let user = s.chap.as_ref().map(|c| c.user.clone());
        changed
            .validate()
            .map_err(|e| RpcError::invalid_params(e.to_string()))?;
        if !lock(&self.iscsi_registry).set_chap(&iqn, applied) {
            return Err(RpcError::refused(format!(
                "{iqn:?} is configured but not served (a bug)"
            )));
        }
        *c = changed;
        info!(iqn, user, "control: CHAP of {iqn} changed");
        Ok(json!({ "iqn": iqn, "chap": user.is_some(), "user": user }))
    }

    fn save(&self, params: &Value) -> Result<Value, RpcError> {
        let path = match params.get("path") {
            Some(Value::String(p)) => PathBuf::from(p),
            None | Some(Value::Null) => self.config_path.clone().ok_or_else(|| {
                RpcError::invalid_params(
                    "params.path is needed: serve was started without --config",
                )
            })?,
            Some(_) => return Err(RpcError::invalid_params("params.path must be a string")),
        };
        let text = lock(&self.config)
            .to_toml()
            .map_err(|e| RpcError::refused(format!("the configuration as TOML: {e}")))?;
        let header = "# Written by xdp-target ctl save: the running configuration.\n";
        write_atomically(&path, &format!("{header}{text}"))
            .map_err(|e| RpcError::refused(format!("writing {}: {e}", path.display())))?;
        info!(path = %path.display(), "control: configuration saved");
        Ok(json!({ "path": path }))
    }

    /// Answers one request line.
    pub fn answer(&self, line: &str) -> Value {
        let request: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                return json!({"jsonrpc": "2.0", "id": null,
                    "error": {"code": -32700, "message": format!("not JSON: {e}")}});
            }
        };
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let Some(method) = request.get("method").and_then(Value::as_str) else {
            return json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32600, "message": "a request has a method (a string)"}});
        };
        let params = request.get("params").cloned().unwrap_or(json!({}));
        match self.call(method, &params) {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(e) => {
                warn!(method, "control request refused: {}", e.message);
                json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": e.code, "message": e.message}})
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Change {
    Add,
    Remove,
    Set,
}

/// Writes `text` to `path` through a temporary file in the same directory, so a reader
/// (or a crash) never sees half a configuration.
fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("toml.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Listens on `path` (replacing a stale socket a dead target left) and serves each client
/// on a thread of its own.
pub fn spawn(path: &Path, control: Arc<Control>) -> io::Result<()> {
    if path.exists() {
        match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another target answers on it",
                ));
            }
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %path.display(), "control socket: xdp-target ctl --socket {}", path.display());
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        let c = Arc::clone(&control);
                        let _ = std::thread::Builder::new()
                            .name("control-client".into())
                            .spawn(move || serve_client(s, &c));
                    }
                    Err(e) => warn!("control socket accept failed: {e}"),
                }
            }
        })?;
    Ok(())
}

fn serve_client(stream: UnixStream, control: &Control) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_REQUEST as u64).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with('\n') && line.len() >= MAX_REQUEST => {
                let e = json!({"jsonrpc": "2.0", "id": null,
                    "error": {"code": -32600, "message": "a request line over 64 KiB"}});
                let _ = writeln!(out, "{e}");
                return;
            }
            Ok(_) => {
                let answer = control.answer(line.trim_end());
                if writeln!(out, "{answer}").is_err() {
                    return;
                }
            }
        }
    }
}

/// The client side: sends one request to the socket at `path` and returns its result.
pub fn request(path: &Path, method: &str, params: Value) -> anyhow::Result<Value> {
    use anyhow::Context;
    let stream = UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to {} (is `xdp-target serve` running with [control] socket or --control?)",
            path.display()
        )
    })?;
    let mut out = stream.try_clone()?;
    let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(out, "{req}")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    let answer: Value = serde_json::from_str(&line).context("the target's answer")?;
    if let Some(e) = answer.get("error") {
        anyhow::bail!(
            "{} (code {})",
            e.get("message").and_then(Value::as_str).unwrap_or("?"),
            e.get("code").unwrap_or(&Value::Null)
        );
    }
    Ok(answer.get("result").cloned().unwrap_or(Value::Null))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A control socket's handler over a one-namespace subsystem with an IQN, no transports.
    pub(in crate::control) fn control() -> Control {
        let text = "[[subsystem]]\nnqn = \"nqn.a\"\niqn = \"iqn.a\"\n\
                    [[subsystem.namespace]]\nnsid = 1\nbackend = \"memory\"\nsize = 1048576\n";
        let config: Config = toml::from_str(text).unwrap();
        let shared = crate::serve::shared(&config, None).unwrap();
        Control::new(
            config,
            None,
            Served {
                registry: Arc::clone(&shared.registry),
                iscsi_registry: Arc::clone(&shared.iscsi_registry),
                backends: Arc::clone(&shared.backends),
                metrics: Arc::clone(&shared.metrics),
            },
        )
    }

    #[test]
    fn allow_lists_change_in_the_registries_and_the_config() {
        let c = control();
        let r = c
            .call("add_host", &json!({"nqn": "nqn.a", "host": "nqn.h1"}))
            .unwrap();
        assert_eq!(r["hosts"], json!(["nqn.h1"]));
        assert!(!lock(&c.registry).subsystems()[0].allows("nqn.h2"));
        c.call("add_host", &json!({"nqn": "nqn.a", "host": "nqn.h2"}))
            .unwrap();
        c.call("remove_host", &json!({"nqn": "nqn.a", "host": "nqn.h1"}))
            .unwrap();
        let s = &lock(&c.registry).subsystems()[0].clone();
        assert!(s.allows("nqn.h2") && !s.allows("nqn.h1"));
        // The last one is not removed: that would open the subsystem to every host.
        let e = c
            .call("remove_host", &json!({"nqn": "nqn.a", "host": "nqn.h2"}))
            .unwrap_err();
        assert!(e.message.contains("any host"), "{e:?}");
        c.call("set_hosts", &json!({"nqn": "nqn.a", "hosts": null}))
            .unwrap();
        assert!(lock(&c.registry).subsystems()[0].allows("nqn.anyone"));
        assert!(lock(&c.config).subsystems[0].allow_hosts.is_empty());

        // CHAP: the configuration file's rules, then the registry.
        let e = c
            .call(
                "set_chap",
                &json!({"iqn": "iqn.a", "chap": {"user": "u", "secret": "short"}}),
            )
            .unwrap_err();
        assert!(e.message.contains("12 to 256"), "{e:?}");
        c.call(
            "set_chap",
            &json!({"iqn": "iqn.a", "chap": {"user": "u", "secret": "0123456789ab"}}),
        )
        .unwrap();
        let t = lock(&c.iscsi_registry).target("iqn.a").unwrap();
        assert_eq!(t.chap.as_ref().unwrap().initiator.name, "u");
        c.call("set_chap", &json!({"iqn": "iqn.a", "chap": null}))
            .unwrap();
        assert!(
            lock(&c.iscsi_registry)
                .target("iqn.a")
                .unwrap()
                .chap
                .is_none()
        );

        c.call(
            "set_initiators",
            &json!({"iqn": "iqn.a", "initiators": ["iqn.i1"]}),
        )
        .unwrap();
        let t = lock(&c.iscsi_registry).target("iqn.a").unwrap();
        assert!(t.allows("iqn.i1") && !t.allows("iqn.i2"));
        assert_eq!(lock(&c.config).subsystems[0].allow_initiators, ["iqn.i1"]);
    }

    #[test]
    fn mistakes_get_json_rpc_errors() {
        let c = control();
        let code = |line: &str| c.answer(line)["error"]["code"].clone();
        assert_eq!(code("{"), json!(-32700));
        assert_eq!(code(r#"{"id":1}"#), json!(-32600));
        assert_eq!(code(r#"{"id":1,"method":"reboot"}"#), json!(-32601));
        assert_eq!(
            code(r#"{"id":1,"method":"add_host","params":{"nqn":"nqn.a"}}"#),
            json!(-32602)
        );
        assert_eq!(
            code(r#"{"id":1,"method":"add_host","params":{"nqn":"nqn.b","host":"h"}}"#),
            json!(1)
        );
        let ok = c.answer(r#"{"jsonrpc":"2.0","id":7,"method":"list"}"#);
        assert_eq!(ok["id"], json!(7));
        assert_eq!(ok["result"]["subsystems"][0]["nqn"], json!("nqn.a"));
    }

    #[test]
    fn save_writes_what_load_reads() {
        let c = control();
        c.call("add_host", &json!({"nqn": "nqn.a", "host": "nqn.h1"}))
            .unwrap();
        let path = std::env::temp_dir().join(format!("xdpt-ctl-save-{}.toml", std::process::id()));
        c.call("save", &json!({"path": path})).unwrap();
        let back = Config::load(&path).unwrap();
        assert_eq!(back, *lock(&c.config));
        assert_eq!(back.subsystems[0].allow_hosts, ["nqn.h1"]);
        let _ = std::fs::remove_file(path);
        assert_eq!(c.call("save", &json!({})).unwrap_err().code, -32602);
    }
}
