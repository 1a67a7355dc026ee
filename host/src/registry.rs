//! Which plugin version serves which task type: an immutable snapshot, swapped atomically.
//!
//! Readers (every RPC) load the current snapshot without locking; a reload builds a new
//! snapshot and stores it in one step, so a ListAgents never sees half an upgrade and a call is
//! routed by exactly one registry version.

use std::{collections::HashMap, path::Path, sync::Arc};

use arc_swap::ArcSwap;

use crate::plugin::PluginVersion;

/// One registry version.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Serving plugins, in load order (ListAgents lists them in this order).
    pub plugins: Vec<Arc<PluginVersion>>,
    /// By task type name: each version served, with its plugin (index) and agent. Keyed by the
    /// name alone so a request's task type, a slice of its bytes, is looked up without a copy.
    routes: HashMap<String, Vec<(i32, usize, u32)>>,
    /// The encoded ListAgents and ListConnectors answers for this snapshot, made by the first
    /// call that needs them (propeller lists the agents every few seconds per instance).
    pub(crate) list_v1: std::sync::OnceLock<bytes::Bytes>,
    pub(crate) list_v2: std::sync::OnceLock<bytes::Bytes>,
}

impl Snapshot {
    fn from_plugins(plugins: Vec<Arc<PluginVersion>>) -> Result<Snapshot, String> {
        let mut routes: HashMap<String, Vec<(i32, usize, u32)>> = HashMap::new();
        for (pi, p) in plugins.iter().enumerate() {
            for (ai, a) in p.agents().iter().enumerate() {
                for c in &a.categories {
                    let versions = routes.entry(c.name.clone()).or_default();
                    if let Some(&(_, other, _)) = versions.iter().find(|(v, ..)| *v == c.version) {
                        let o: &Arc<PluginVersion> = &plugins[other];
                        return Err(format!(
                            "task type {} v{} is already served by plugin {} {} ({})",
                            c.name,
                            c.version,
                            o.name(),
                            o.version(),
                            o.source.display()
                        ));
                    }
                    versions.push((c.version, pi, ai as u32));
                }
            }
        }
        Ok(Snapshot { plugins, routes, ..Snapshot::default() })
    }

    /// This snapshot with `plugin` added, or replacing the version loaded from the same file.
    /// Fails, leaving nothing changed, when another file's plugin serves one of its task types.
    pub fn with_plugin(&self, plugin: Arc<PluginVersion>) -> Result<Snapshot, String> {
        let mut plugins = self.plugins.clone();
        match plugins.iter().position(|p| p.source == plugin.source) {
            Some(i) => plugins[i] = plugin,
            None => plugins.push(plugin),
        }
        Snapshot::from_plugins(plugins)
    }

    /// This snapshot without the plugin loaded from `source`.
    pub fn without_source(&self, source: &Path) -> Snapshot {
        let plugins = self.plugins.iter().filter(|p| p.source != source).cloned().collect();
        Snapshot::from_plugins(plugins).expect("removing a plugin cannot create a conflict")
    }

    /// The plugin version and agent index serving `key`.
    pub fn route(&self, name: &str, version: i32) -> Option<(Arc<PluginVersion>, u32)> {
        let versions = self.routes.get(name)?;
        versions.iter().find(|(v, ..)| *v == version).map(|&(_, p, a)| (self.plugins[p].clone(), a))
    }
}

/// The current snapshot.
#[derive(Debug, Default)]
pub struct Registry {
    current: ArcSwap<Snapshot>,
}

impl Registry {
    /// The snapshot serving now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}
