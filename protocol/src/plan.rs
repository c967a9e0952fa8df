//! Planning: who offers to whom, with which part of the addressee list.
//!
//! A pure function of the list and the fanout. The NMS splits the whole list into
//! `fanout` contiguous parts and offers each to its head; a node that receives a part
//! removes itself (it is the head) and does the same with the rest. `fanout = 2` is the
//! seed's binary tree (halving the list), `fanout = 1` its chain.

use std::collections::HashMap;

use crate::id::NodeId;

/// One offer to make: `head` receives `part` (with itself first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub head: NodeId,
    pub part: Vec<NodeId>,
}

/// Splits `list` into at most `fanout` contiguous, non-empty parts whose sizes differ by
/// at most one (earlier parts are the larger).
pub fn split(list: &[NodeId], fanout: u8) -> Vec<&[NodeId]> {
    let f = usize::from(fanout.max(1)).min(list.len());
    if f == 0 {
        return Vec::new();
    }
    let base = list.len() / f;
    let extra = list.len() % f;
    let mut parts = Vec::with_capacity(f);
    let mut at = 0;
    for i in 0..f {
        let n = base + usize::from(i < extra);
        parts.push(&list[at..at + n]);
        at += n;
    }
    parts
}

/// The offers a sender makes for the nodes in `rest` (the sender itself not included).
pub fn assignments(rest: &[NodeId], fanout: u8) -> Vec<Assignment> {
    split(rest, fanout)
        .into_iter()
        .map(|p| Assignment {
            head: p[0],
            part: p.to_vec(),
        })
        .collect()
}

/// The offers a node makes when it received `part` (itself first).
pub fn children_of(part: &[NodeId], fanout: u8) -> Vec<Assignment> {
    assignments(part.get(1..).unwrap_or(&[]), fanout)
}

/// The whole tree a plan gives, for the NMS's picture and for simulation.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// Parent of each addressee (`None` = the NMS).
    pub parent: HashMap<NodeId, Option<NodeId>>,
    /// Depth of each addressee (first tier = 1).
    pub depth: HashMap<NodeId, usize>,
}

impl Tree {
    /// The tree for `addressees` and `fanout`.
    pub fn plan(addressees: &[NodeId], fanout: u8) -> Tree {
        let mut tree = Tree::default();
        let mut stack: Vec<(Option<NodeId>, usize, Assignment)> = assignments(addressees, fanout)
            .into_iter()
            .map(|a| (None, 1, a))
            .collect();
        while let Some((parent, depth, a)) = stack.pop() {
            tree.parent.insert(a.head, parent);
            tree.depth.insert(a.head, depth);
            for c in children_of(&a.part, fanout) {
                stack.push((Some(a.head), depth + 1, c));
            }
        }
        tree
    }

    /// The deepest level.
    pub fn max_depth(&self) -> usize {
        self.depth.values().copied().max().unwrap_or(0)
    }

    /// The path from the first tier down to `node` (inclusive).
    pub fn path(&self, node: &NodeId) -> Vec<NodeId> {
        let mut path = vec![*node];
        let mut at = *node;
        while let Some(Some(p)) = self.parent.get(&at) {
            path.push(*p);
            at = *p;
        }
        path.reverse();
        path
    }
}

/// The depth a plan of `n` addressees reaches with `fanout` (0 for none).
pub fn expected_depth(n: usize, fanout: u8) -> usize {
    // a part of m nodes: its head, then the rest split in `fanout`
    fn part_depth(m: usize, f: usize) -> usize {
        if m == 0 {
            0
        } else {
            1 + part_depth((m - 1).div_ceil(f), f)
        }
    }
    let f = usize::from(fanout.max(1));
    part_depth(n.div_ceil(f), f)
}

/// The smallest fanout at or above `wanted` whose plan for `n` addressees stays within
/// [`crate::limits::MAX_PATH`] hops (a chain of 1000 nodes would not).
pub fn fanout_for(n: usize, wanted: u8) -> u8 {
    let mut f = wanted.max(1);
    while f < crate::limits::MAX_FANOUT && expected_depth(n, f) > crate::limits::MAX_PATH {
        f += 1;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::fake_id;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn ids(n: usize) -> Vec<NodeId> {
        (0..n as u64).map(fake_id).collect()
    }

    proptest! {
        #[test]
        fn every_addressee_is_reached_exactly_once(n in 0usize..400, fanout in 1u8..6) {
            let list = ids(n);
            let members: HashSet<_> = list.iter().copied().collect();
            let mut reached = HashSet::new();
            let mut stack: Vec<(Option<NodeId>, Assignment)> =
                assignments(&list, fanout).into_iter().map(|a| (None, a)).collect();
            let mut max_depth = 0;
            let mut depth_of = std::collections::HashMap::new();
            while let Some((from, a)) = stack.pop() {
                prop_assert_eq!(a.part[0], a.head);
                prop_assert!(members.contains(&a.head), "offer to a node outside the list");
                prop_assert!(Some(a.head) != from, "a node offered to itself");
                prop_assert!(reached.insert(a.head), "reached twice");
                let d = from.map_or(1, |f| depth_of[&f] + 1);
                depth_of.insert(a.head, d);
                max_depth = max_depth.max(d);
                let kids = children_of(&a.part, fanout);
                prop_assert!(kids.len() <= usize::from(fanout));
                for k in kids {
                    prop_assert!(a.part.contains(&k.head));
                    stack.push((Some(a.head), k));
                }
            }
            prop_assert_eq!(reached.len(), n);
            prop_assert_eq!(max_depth, expected_depth(n, fanout));
            let tree = Tree::plan(&list, fanout);
            prop_assert_eq!(tree.max_depth(), max_depth);
        }

        #[test]
        fn parts_are_balanced(n in 0usize..1000, fanout in 1u8..17) {
            let list = ids(n);
            let parts = split(&list, fanout);
            prop_assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), n);
            if let (Some(max), Some(min)) = (parts.iter().map(|p| p.len()).max(), parts.iter().map(|p| p.len()).min()) {
                prop_assert!(max - min <= 1 && min >= 1);
            }
        }
    }

    #[test]
    fn long_chains_are_widened_to_fit_the_path_limit() {
        assert_eq!(fanout_for(64, 1), 1);
        assert_eq!(fanout_for(65, 1), 2);
        assert_eq!(fanout_for(100_000, 1), 2);
        assert_eq!(fanout_for(10, 3), 3);
        for n in [1, 64, 65, 1000, 100_000] {
            assert!(expected_depth(n, fanout_for(n, 1)) <= crate::limits::MAX_PATH);
        }
    }

    #[test]
    fn depths_match_the_seed() {
        // binary tree: logarithmic; chain: linear
        assert_eq!(expected_depth(100, 2), 6);
        assert_eq!(expected_depth(100, 1), 100);
        assert_eq!(expected_depth(7, 1), 7);
        assert_eq!(expected_depth(6, 2), 2); // the seed's figure 1: two tiers of 2 and 4
        let list = ids(6);
        let tree = Tree::plan(&list, 2);
        assert_eq!(tree.path(&list[5]).len(), tree.depth[&list[5]]);
        assert_eq!(tree.parent[&list[0]], None);
    }
}
