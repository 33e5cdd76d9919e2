//! Response bodies being collected for storage, bounded per VM by `max_collect_bytes`.

use crate::entry::Entry;
use std::cell::Cell;
use std::rc::Rc;

/// A response body being collected for storage. Its bytes count against the VM's
/// `max_collect_bytes` until it is dropped, however the stream ends.
pub struct Collect {
    pub entry: Entry,
    pub budget: Rc<Cell<u64>>,
}

impl Collect {
    /// Appends a chunk if the VM's budget allows; `false` (nothing appended) if not.
    pub fn append(&mut self, chunk: &[u8], max: u64) -> bool {
        let n = chunk.len() as u64;
        let held = self.budget.get();
        if held.saturating_add(n) > max {
            return false;
        }
        self.budget.set(held + n);
        self.entry.body.extend_from_slice(chunk);
        true
    }
}

impl Drop for Collect {
    fn drop(&mut self) {
        let held = self.budget.get();
        self.budget
            .set(held.saturating_sub(self.entry.body.len() as u64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_budget_is_shared_per_vm_and_released_on_drop() {
        let budget = Rc::new(Cell::new(0));
        let new = || Collect {
            entry: Entry::default(),
            budget: budget.clone(),
        };
        let (mut a, mut b) = (new(), new());
        assert!(a.append(&[0; 600], 1000));
        // The second miss would take the VM past its budget: refused, nothing appended.
        assert!(!b.append(&[0; 600], 1000));
        assert!(b.entry.body.is_empty());
        assert!(b.append(&[0; 400], 1000));
        assert_eq!(budget.get(), 1000);
        drop(a);
        assert_eq!(budget.get(), 400);
        drop(b);
        assert_eq!(budget.get(), 0);
    }
}
