//! The names of every tube of the server in `list-tubes` order, shared by
//! the shards' engines when there are several.
//!
//! Each shard keeps its own tubes, but `list-tubes` must list all of them
//! in the order one beanstalkd would: creation order, a removal filling its
//! gap with the last entry. That order depends on how creations and
//! removals on different shards interleave, so it is kept in one place,
//! under a lock that only tube creation, tube removal and `list-tubes`
//! take; no job command ever does.
//!
//! # Invariants
//! * A tube's name is in the directory exactly while some engine holds
//!   the tube (`Engine::set_directory` enters what exists already).
//! * Nothing here allocates under the lock but the name list's growth,
//!   which is made room for before the tube is made (`Directory::reserve`).

use std::sync::{Arc, Mutex, MutexGuard};

use crate::memory::{self, OutOfMemory};

/// The tubes of every shard in `list-tubes` order; cheap to clone (one
/// shared list).
#[derive(Clone, Debug, Default)]
pub struct Directory(Arc<Mutex<Vec<Box<str>>>>);

impl Directory {
    fn lock(&self) -> MutexGuard<'_, Vec<Box<str>>> {
        // A shard that panicked holding the lock stops the process anyway
        // (assertions stay on); the list itself is never left half changed.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Room for one more name, made before the tube is.
    pub fn reserve(&self) -> Result<(), OutOfMemory> {
        let mut list = self.lock();
        memory::try_reserve(&mut list, 1)
    }

    /// A tube was made.
    pub fn add(&self, name: Box<str>) {
        self.lock().push(name);
    }

    /// A tube was destroyed: its place takes the last entry, as
    /// beanstalkd's list does.
    pub fn remove(&self, name: &str) {
        let mut list = self.lock();
        if let Some(i) = list.iter().position(|n| &**n == name) {
            list.swap_remove(i);
        } else {
            debug_assert!(false, "tube {name} missing from the directory");
        }
    }

    /// Calls `f` with the names in `list-tubes` order, under the lock.
    pub fn with_names<R>(&self, f: impl FnOnce(&[Box<str>]) -> R) -> R {
        f(&self.lock())
    }
}
