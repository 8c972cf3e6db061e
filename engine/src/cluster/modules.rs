//! Modules of a topology whose snapshot store is an object store: their
//! bytes go to `modules/SHA256` in the store (create-only, content-addressed)
//! and ZooKeeper keeps only a note of hash and size, so a large module is not
//! held in every ZooKeeper server's memory. A `file:` store keeps modules in
//! ZooKeeper (in chunks).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::state::Paths;
use super::zk::Zk;
use crate::store::FileStore;
use crate::topology::{Store, Topology};

/// What a module's ZooKeeper node holds when its bytes are in the store.
const IN_STORE: &str = "store:";

/// The object store of `t`, opened (as the deploying client reaches it), if it has one.
pub(super) fn store_of(t: &Topology) -> Result<Option<FileStore>> {
    match &t.store {
        Store::File(_) => Ok(None),
        Store::S3 { .. } => FileStore::open_store(&t.store)
            .map(Some)
            .map_err(|e| crate::error::mark(e.into(), crate::error::Domain::Usage, false))
            .with_context(|| format!("cannot open the snapshot store {}", t.store_dir().display())),
    }
}

fn object(store: &FileStore, hash: &str) -> std::path::PathBuf {
    store.root().join("modules").join(hash)
}

/// Puts module `hash` (the file `file`) into the store unless it is there,
/// then notes its size in ZooKeeper.
pub(super) fn publish(zk: &Zk, store: &FileStore, hash: &str, file: &Path) -> Result<()> {
    let remote =
        store.remote().ok_or_else(|| anyhow!("internal: {} is not an object store", store.root().display()))?;
    let size = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?.len();
    let path = object(store, hash);
    if remote.head(&path)?.map(|m| m.size) != Some(size) {
        remote.upload(&path, file).with_context(|| format!("cannot upload module {}", file.display()))?;
    }
    let node = Paths::module(hash);
    let note = format!("{IN_STORE}{size}");
    match zk.get(&node)? {
        Some((data, _)) if data == note.as_bytes() => Ok(()),
        // Chunks of an earlier deploy with a `file:` store: workers read those.
        Some((data, _)) if !data.starts_with(IN_STORE.as_bytes()) && !data.is_empty() => Ok(()),
        _ => {
            zk.ensure(&node)?;
            zk.set(&node, note.as_bytes(), None).map(|_| ())
        }
    }
}

/// The size ZooKeeper notes for module `hash` when its bytes are in the store.
pub(super) fn in_store(zk: &Zk, hash: &str) -> Result<Option<u64>> {
    let Some((data, _)) = zk.get(&Paths::module(hash))? else { return Ok(None) };
    let Some(size) = data.strip_prefix(IN_STORE.as_bytes()) else { return Ok(None) };
    let size = std::str::from_utf8(size).ok().and_then(|s| s.parse().ok());
    size.map(Some).ok_or_else(|| anyhow!("ZooKeeper's note of module {hash} is damaged"))
}

/// Module `hash`'s bytes from the store; its size must be `size` (the caller checks the hash).
pub(super) fn fetch(store: &FileStore, hash: &str, size: u64) -> Result<Vec<u8>> {
    let Some(remote) = store.remote() else {
        bail!("module {hash} is in an object store, but this topology's store is {}", store.root().display());
    };
    let path = object(store, hash);
    let bytes = remote.get(&path)?.ok_or_else(|| anyhow!("module {hash} is missing from {}", path.display()))?;
    if bytes.len() as u64 != size {
        bail!("module {} has {} bytes where ZooKeeper notes {size}", path.display(), bytes.len());
    }
    Ok(bytes)
}
