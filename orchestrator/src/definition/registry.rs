//! The definition versions this process has compiled, by name and version.
//! The table `orchestrator.definitions` is the truth; this is its cache, so
//! that starting or driving a saga never reads a definition from the
//! database once it has been seen.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::Definition;

/// Compiled definitions, shared by every saga of this process.
#[derive(Debug, Default)]
pub struct Registry {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    versions: HashMap<(Arc<str>, i32), Arc<Definition>>,
    /// The newest version of each name.
    latest: HashMap<Arc<str>, i32>,
}

impl Registry {
    /// Version `version` of `name`, if compiled here.
    pub fn get(&self, name: &str, version: i32) -> Option<Arc<Definition>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        inner.versions.get(&(Arc::from(name), version)).cloned()
    }

    /// The newest version of `name` compiled here.
    pub fn latest(&self, name: &str) -> Option<Arc<Definition>> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let version = *inner.latest.get(name)?;
        inner.versions.get(&(Arc::from(name), version)).cloned()
    }

    /// The newest version of each name, as known here.
    pub fn latest_versions(&self) -> HashMap<Arc<str>, i32> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .latest
            .clone()
    }

    /// Adds a compiled definition (a version already here is kept: versions
    /// are immutable).
    pub fn insert(&self, definition: Arc<Definition>) -> Arc<Definition> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let key = (Arc::clone(&definition.name), definition.version);
        let kept = Arc::clone(inner.versions.entry(key).or_insert(definition));
        let latest = inner.latest.entry(Arc::clone(&kept.name)).or_insert(0);
        *latest = (*latest).max(kept.version);
        kept
    }
}
