//! Per slot, the most free capacity any node of a block of [`BLOCK`] consecutive
//! nodes has: a scan for a node with room skips the blocks where none has it,
//! and meets the same nodes, in the same order, as a scan of every node.

/// Nodes per block.
const BLOCK: usize = 64;

const EPS: f64 = 1e-9;

/// Block maxima of one resource (`free`: node-major, `len` slots per node).
#[derive(Debug, Clone)]
pub(crate) struct BlockMax {
    len: usize,
    nodes: usize,
    blocks: usize,
    /// Slot-major: `max[t * blocks + b]`.
    max: Vec<f64>,
}

impl BlockMax {
    pub(crate) fn new(free: &[f64], nodes: usize, len: usize) -> BlockMax {
        let blocks = nodes.div_ceil(BLOCK);
        let mut max = vec![f64::NEG_INFINITY; blocks * len];
        for node in 0..nodes {
            for t in 0..len {
                let m = &mut max[t * blocks + node / BLOCK];
                *m = m.max(free[node * len + t]);
            }
        }
        BlockMax { len, nodes, blocks, max }
    }

    /// The first node in `from..end` with at least `need` free at slot `t`
    /// (within the planner's tolerance).
    pub(crate) fn next(&self, free: &[f64], t: usize, from: usize, end: usize, need: f64) -> Option<usize> {
        let mut n = from;
        while n < end {
            let b = n / BLOCK;
            let block_end = ((b + 1) * BLOCK).min(end);
            if self.max[t * self.blocks + b] + EPS >= need
                && let Some(k) = (n..block_end).find(|&k| free[k * self.len + t] + EPS >= need)
            {
                return Some(k);
            }
            n = block_end;
        }
        None
    }

    /// `node`'s free capacity at slot `t` fell from `was` (already written to
    /// `free`): its block's maximum again, if `node` held it.
    pub(crate) fn lowered(&mut self, free: &[f64], node: usize, t: usize, was: f64) {
        let b = node / BLOCK;
        let m = &mut self.max[t * self.blocks + b];
        if was < *m {
            return;
        }
        let block = b * BLOCK..((b + 1) * BLOCK).min(self.nodes);
        // Another node at the old maximum keeps it (empty nodes are alike).
        if block.clone().any(|k| free[k * self.len + t] >= was) {
            return;
        }
        *m = block.map(|k| free[k * self.len + t]).fold(f64::NEG_INFINITY, f64::max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a scan of every node, on random capacities lowered at random.
    #[test]
    fn the_first_node_with_room_is_the_one_a_full_scan_finds() {
        let (nodes, len) = (300, 5);
        let mut seed = 7u64;
        let mut rand = move || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut free: Vec<f64> = (0..nodes * len).map(|_| 8.0 * rand()).collect();
        let mut bm = BlockMax::new(&free, nodes, len);
        for _ in 0..5_000 {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "small test indices")]
            let (t, from, end) =
                ((rand() * len as f64) as usize, (rand() * 200.0) as usize, 100 + (rand() * 200.0) as usize);
            let need = 8.0 * rand();
            let want = (from..end).find(|&k| free[k * len + t] + EPS >= need);
            assert_eq!(bm.next(&free, t, from, end, need), want, "t {t}, {from}..{end}, need {need}");
            if let Some(k) = want {
                let i = k * len + t;
                let was = free[i];
                free[i] = (was - need).max(0.0);
                bm.lowered(&free, k, t, was);
            }
        }
    }
}
