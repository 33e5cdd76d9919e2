//! The walk ring and Maglev share: from a start position in a circular table of host indices,
//! yield each distinct host once, in table order (primary first, then fallbacks).

pub struct DistinctWalk<'a> {
    owners: &'a [u32],
    hosts: usize,
    pos: usize,
    steps: usize,
    seen: Vec<bool>,
    found: usize,
}

impl<'a> DistinctWalk<'a> {
    /// `owners[i]` is the host index at table position `i`; `hosts` is how many hosts exist.
    pub fn new(owners: &'a [u32], hosts: usize, start: usize) -> Self {
        DistinctWalk {
            owners,
            hosts,
            pos: start,
            steps: 0,
            seen: vec![false; hosts],
            found: 0,
        }
    }
}

impl Iterator for DistinctWalk<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        let n = self.owners.len();
        while self.found < self.hosts && self.steps < n {
            let owner = self.owners[self.pos] as usize;
            self.pos = if self.pos + 1 == n { 0 } else { self.pos + 1 };
            self.steps += 1;
            if let Some(seen) = self.seen.get_mut(owner) {
                if !*seen {
                    *seen = true;
                    self.found += 1;
                    return Some(owner);
                }
            }
        }
        None
    }
}
