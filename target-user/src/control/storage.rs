//! Subsystems and namespaces changed at run time: `add_subsystem`, `remove_subsystem`,
//! `add_namespace`, `remove_namespace`, `resize_namespace`.
//!
//! Each change is checked as the configuration file would be (the running configuration
//! with the change must validate), then applied in an order that never lets a host reach
//! a namespace whose medium is not there: the backend first (it gets a new index, never a
//! reused one), then the iSCSI LUN, then the NVMe namespace, and the reverse on removal.
//! NVMe hosts learn of a change from a Namespace Attribute Changed event and the Changed
//! Namespace List (Linux rescans at once); iSCSI initiators from the unit attentions
//! REPORTED LUNS DATA HAS CHANGED and CAPACITY DATA HAS CHANGED on their next command
//! (Linux logs them; `iscsiadm -m session -R` rescans). Removing a subsystem ends its
//! controllers and sessions, as nvmet and LIO do when theirs are deleted.
//!
//! Namespaces only grow: shrinking would cut off blocks hosts may have written (SPDK's
//! and nvmet's resizes are growths in practice too; a user who means it removes and adds).

use std::sync::Arc;

use serde_json::{Value, json};
use target_proto::scsi::ScsiTarget;
use tracing::info;

use super::{Control, RpcError, lock, string_param};
use crate::backend::Backend;
use crate::config::{Config, NamespaceConfig, Size, SubsystemConfig};
use crate::metrics::NamespaceName;
use crate::reactor::block::BackendEntry;
use crate::serve::{lun_config, nvme_namespace, nvme_subsystem, open_backend, target_node};

fn nsid_param(params: &Value) -> Result<u32, RpcError> {
    params
        .get("nsid")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| RpcError::invalid_params("params.nsid (a number) is missing"))
}

/// `params` without `drop` keys, read as a `T` (a table of the configuration file).
fn table<T: serde::de::DeserializeOwned>(params: &Value, drop: &[&str]) -> Result<T, RpcError> {
    let mut v = params.clone();
    if let Some(m) = v.as_object_mut() {
        for k in drop {
            m.remove(*k);
        }
    }
    serde_json::from_value(v).map_err(|e| RpcError::invalid_params(format!("params: {e}")))
}

/// The running configuration with `change` made, if it validates.
fn changed(
    config: &Config,
    change: impl FnOnce(&mut Config) -> Result<(), RpcError>,
) -> Result<Config, RpcError> {
    let mut c = config.clone();
    change(&mut c)?;
    c.validate()
        .map_err(|e| RpcError::invalid_params(e.to_string()))?;
    Ok(c)
}

fn subsystem_mut<'c>(c: &'c mut Config, nqn: &str) -> Result<&'c mut SubsystemConfig, RpcError> {
    c.subsystems
        .iter_mut()
        .find(|s| s.nqn == nqn)
        .ok_or_else(|| RpcError::refused(format!("no subsystem {nqn:?}")))
}

/// A namespace's medium opened, not yet reachable.
struct Opened {
    config: NamespaceConfig,
    backend: Arc<Backend>,
}

impl Control {
    fn open(&self, n: &NamespaceConfig) -> Result<Opened, RpcError> {
        let backend =
            open_backend(n).map_err(|e| RpcError::refused(format!("namespace {}: {e}", n.nsid)))?;
        Ok(Opened {
            config: n.clone(),
            backend: Arc::new(backend),
        })
    }

    /// Gives an opened medium its backend index and counters: from now on block operations
    /// may name it.
    fn install(&self, nqn: &str, o: &Opened) -> u32 {
        let io = self.metrics.add_namespace(&NamespaceName {
            subsystem: nqn.to_string(),
            nsid: o.config.nsid,
        });
        self.backends.add(BackendEntry {
            backend: Arc::clone(&o.backend),
            io,
        })
    }

    fn uninstall(&self, nqn: &str, nsid: u32, backend: u32) {
        self.backends.remove(backend);
        self.metrics.remove_namespace(&NamespaceName {
            subsystem: nqn.to_string(),
            nsid,
        });
    }

    /// The SCSI target of subsystem `s`, when it has an IQN.
    fn scsi(&self, s: &SubsystemConfig) -> Option<Arc<ScsiTarget>> {
        let iqn = s.iqn.as_deref()?;
        lock(&self.iscsi_registry)
            .target(iqn)
            .map(|t| Arc::clone(&t.scsi))
    }

    /// The backend index of namespace `nsid` of `s`, from the NVMe namespace or the LUN.
    fn backend_of(&self, s: &SubsystemConfig, nsid: u32) -> Option<u32> {
        let nvme = lock(&self.registry)
            .subsystems()
            .iter()
            .find(|x| x.nqn == s.nqn)
            .and_then(|x| x.namespace(nsid).map(|n| n.backend));
        nvme.or_else(|| {
            self.scsi(s)?
                .lu(u64::from(nsid) - 1)
                .map(|l| l.config().backend)
        })
    }

    pub(super) fn add_subsystem(&self, params: &Value) -> Result<Value, RpcError> {
        let s: SubsystemConfig = table(params, &[])?;
        let mut c = lock(&self.config);
        let new = changed(&c, |c| {
            if c.subsystems.iter().any(|x| x.nqn == s.nqn) {
                return Err(RpcError::refused(format!("subsystem {:?} exists", s.nqn)));
            }
            c.subsystems.push(s.clone());
            Ok(())
        })?;
        let opened = s
            .namespaces
            .iter()
            .map(|n| self.open(n))
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<u32> = opened.iter().map(|o| self.install(&s.nqn, o)).collect();
        let luns = opened
            .iter()
            .zip(&ids)
            .filter_map(|(o, &id)| lun_config(&s, &o.config, &o.backend, id))
            .collect();
        let scsi = s.iqn.as_ref().map(|_| Arc::new(ScsiTarget::new(luns)));
        let mut namespaces: Vec<_> = opened
            .iter()
            .zip(&ids)
            .filter_map(|(o, &id)| nvme_namespace(&s, &o.config, &o.backend, id, scsi.as_deref()))
            .collect();
        namespaces.sort_by_key(|n| n.nsid);
        if let (Some(iqn), Some(scsi)) = (&s.iqn, scsi)
            && !lock(&self.iscsi_registry).add_target(target_node(&s, iqn, scsi))
        {
            for (o, id) in opened.iter().zip(ids) {
                self.uninstall(&s.nqn, o.config.nsid, id);
            }
            return Err(RpcError::refused(format!("iSCSI target {iqn:?} exists")));
        }
        if let Err(e) = lock(&self.registry).add_subsystem(nvme_subsystem(&s, namespaces)) {
            if let Some(iqn) = &s.iqn {
                lock(&self.iscsi_registry).remove_target(iqn);
            }
            for (o, id) in opened.iter().zip(ids) {
                self.uninstall(&s.nqn, o.config.nsid, id);
            }
            return Err(RpcError::refused(e.to_string()));
        }
        *c = new;
        info!(nqn = s.nqn, iqn = ?s.iqn, namespaces = ids.len(), "control: subsystem added");
        Ok(json!({ "nqn": s.nqn, "iqn": s.iqn, "namespaces": s.namespaces.len() }))
    }

    pub(super) fn remove_subsystem(&self, params: &Value) -> Result<Value, RpcError> {
        let nqn = string_param(params, "nqn")?;
        let mut c = lock(&self.config);
        let s = subsystem_mut(&mut c.clone(), &nqn)?.clone();
        let new = changed(&c, |c| {
            c.subsystems.retain(|x| x.nqn != nqn);
            Ok(())
        })?;
        let backends: Vec<(u32, Option<u32>)> = s
            .namespaces
            .iter()
            .map(|n| (n.nsid, self.backend_of(&s, n.nsid)))
            .collect();
        // Hosts first: no new I/O can start once the subsystem and target are gone.
        let controllers = lock(&self.registry)
            .remove_subsystem(&nqn)
            .map_err(|e| RpcError::refused(e.to_string()))?;
        let sessions = s
            .iqn
            .as_deref()
            .and_then(|iqn| lock(&self.iscsi_registry).remove_target(iqn))
            .unwrap_or(0);
        for (nsid, b) in backends {
            if let Some(b) = b {
                self.uninstall(&nqn, nsid, b);
            }
        }
        *c = new;
        info!(
            nqn,
            controllers, sessions, "control: subsystem removed, its controllers and sessions ended"
        );
        Ok(json!({ "nqn": nqn, "controllers_ended": controllers, "sessions_ended": sessions }))
    }

    pub(super) fn add_namespace(&self, params: &Value) -> Result<Value, RpcError> {
        let nqn = string_param(params, "nqn")?;
        let n: NamespaceConfig = table(params, &["nqn"])?;
        let mut c = lock(&self.config);
        let new = changed(&c, |c| {
            let s = subsystem_mut(c, &nqn)?;
            if s.namespaces.iter().any(|x| x.nsid == n.nsid) {
                return Err(RpcError::refused(format!(
                    "subsystem {nqn:?} has a namespace {} already",
                    n.nsid
                )));
            }
            s.namespaces.push(n.clone());
            Ok(())
        })?;
        let s = new
            .subsystems
            .iter()
            .find(|x| x.nqn == nqn)
            .expect("validated above")
            .clone();
        let o = self.open(&n)?;
        let id = self.install(&nqn, &o);
        let scsi = self.scsi(&s);
        let lun = lun_config(&s, &n, &o.backend, id);
        if let (Some(scsi), Some(lun)) = (&scsi, lun)
            && scsi.add_lun(lun).is_err()
        {
            self.uninstall(&nqn, n.nsid, id);
            return Err(RpcError::refused(format!("LUN {} exists", n.nsid - 1)));
        }
        if let Some(ns) = nvme_namespace(&s, &n, &o.backend, id, scsi.as_deref())
            && let Err(e) = lock(&self.registry).add_namespace(&nqn, ns)
        {
            if let Some(scsi) = &scsi {
                scsi.remove_lun(u64::from(n.nsid - 1));
            }
            self.uninstall(&nqn, n.nsid, id);
            return Err(RpcError::refused(e.to_string()));
        }
        *c = new;
        let size = o.backend.size();
        info!(nqn, nsid = n.nsid, bytes = size, "control: namespace added");
        Ok(json!({ "nqn": nqn, "nsid": n.nsid, "size": size }))
    }

    pub(super) fn remove_namespace(&self, params: &Value) -> Result<Value, RpcError> {
        let nqn = string_param(params, "nqn")?;
        let nsid = nsid_param(params)?;
        let mut c = lock(&self.config);
        let new = changed(&c, |c| {
            let s = subsystem_mut(c, &nqn)?;
            let before = s.namespaces.len();
            s.namespaces.retain(|x| x.nsid != nsid);
            if s.namespaces.len() == before {
                return Err(RpcError::refused(format!(
                    "subsystem {nqn:?} has no namespace {nsid}"
                )));
            }
            Ok(())
        })?;
        let s = subsystem_mut(&mut c, &nqn)?.clone();
        let backend = self.backend_of(&s, nsid);
        // NVMe first: a namespace that is also a LUN keeps the LUN's reservations until
        // its last command ran.
        let _ = lock(&self.registry).remove_namespace(&nqn, nsid);
        if let Some(scsi) = self.scsi(&s) {
            scsi.remove_lun(u64::from(nsid) - 1);
        }
        if let Some(b) = backend {
            self.uninstall(&nqn, nsid, b);
        }
        *c = new;
        info!(nqn, nsid, "control: namespace removed");
        Ok(json!({ "nqn": nqn, "nsid": nsid }))
    }

    pub(super) fn resize_namespace(&self, params: &Value) -> Result<Value, RpcError> {
        let nqn = string_param(params, "nqn")?;
        let nsid = nsid_param(params)?;
        let size: Size = params
            .get("size")
            .cloned()
            .ok_or_else(|| RpcError::invalid_params("params.size is missing"))
            .and_then(|v| {
                serde_json::from_value(v)
                    .map_err(|e| RpcError::invalid_params(format!("params.size: {e}")))
            })?;
        let mut c = lock(&self.config);
        let new = changed(&c, |c| {
            let s = subsystem_mut(c, &nqn)?;
            let n = s
                .namespaces
                .iter_mut()
                .find(|x| x.nsid == nsid)
                .ok_or_else(|| {
                    RpcError::refused(format!("subsystem {nqn:?} has no namespace {nsid}"))
                })?;
            n.size = Some(size);
            Ok(())
        })?;
        let s = subsystem_mut(&mut c, &nqn)?.clone();
        let n = s
            .namespaces
            .iter()
            .find(|x| x.nsid == nsid)
            .expect("validated above");
        let backend = self
            .backend_of(&s, nsid)
            .and_then(|b| self.backends.get(b))
            .ok_or_else(|| RpcError::refused(format!("namespace {nsid} is not served (a bug)")))?;
        let old = backend.size();
        if size.0 < old {
            return Err(RpcError::refused(format!(
                "namespace {nsid} holds {old} bytes: shrinking to {} would cut off blocks hosts \
                 may have written; only growing is supported (remove and add it to start over)",
                size.0
            )));
        }
        backend
            .grow(size.0)
            .map_err(|e| RpcError::refused(format!("namespace {nsid}: {e}")))?;
        let blocks = size.0 / u64::from(n.block_size);
        if size.0 > old {
            // The medium is there before any host may address it.
            if n.nvme {
                lock(&self.registry)
                    .resize_namespace(&nqn, nsid, blocks)
                    .map_err(|e| RpcError::refused(e.to_string()))?;
            }
            if let Some(scsi) = self.scsi(&s).filter(|_| n.iscsi) {
                scsi.resize_lun(u64::from(nsid) - 1, blocks);
            }
        }
        *c = new;
        info!(
            nqn,
            nsid,
            from = old,
            to = size.0,
            "control: namespace resized"
        );
        Ok(json!({ "nqn": nqn, "nsid": nsid, "size": size.0, "was": old }))
    }
}
