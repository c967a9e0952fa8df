//! Planning: who offers to whom, with which part of the addressee list.
//!
//! A pure function of the list and the fanout. The NMS splits the whole list into
//! `fanout` contiguous parts and offers each to its head; a node that receives a part
//! removes itself (it is the head) and does the same with the rest. `fanout = 2` is the
//! seed's binary tree (halving the list), `fanout = 1` its chain.

use std::collections::HashMap;

use crate::gate::RelayHint;
use crate::id::NodeId;

/// One offer to make: `head` receives `part` (with itself first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub head: NodeId,
    pub part: Vec<NodeId>,
}

/// Splits `list` into at most `fanout` contiguous, non-empty parts whose sizes differ by
/// at most one (earlier parts are the larger).
pub fn split<T>(list: &[T], fanout: u8) -> Vec<&[T]> {
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

/// Whether an addressee is *leaf-only*: one of the manifest's last `plan.leaves` entries,
/// which relay for no one (their owners' policies gate relaying now).
pub type LeafOnly<'a> = &'a dyn Fn(&NodeId) -> bool;

/// No addressee is leaf-only.
pub fn no_leaves(_: &NodeId) -> bool {
    false
}

/// The offers a sender makes for the nodes in `rest` (the sender itself not included).
/// A part whose head is leaf-only (then so is the rest of it: leaf-only nodes end the
/// list) is offered node by node, each a part of its own, by the same sender.
pub fn assignments(rest: &[NodeId], fanout: u8, leaf: LeafOnly<'_>) -> Vec<Assignment> {
    let mut out = Vec::new();
    for p in split(rest, fanout) {
        if leaf(&p[0]) {
            out.extend(p.iter().map(|n| Assignment {
                head: *n,
                part: vec![*n],
            }));
        } else {
            out.push(Assignment {
                head: p[0],
                part: p.to_vec(),
            });
        }
    }
    out
}

/// The offers a node makes when it received `part` (itself first).
pub fn children_of(part: &[NodeId], fanout: u8, leaf: LeafOnly<'_>) -> Vec<Assignment> {
    assignments(part.get(1..).unwrap_or(&[]), fanout, leaf)
}

/// Which positions of a list of `n` addressees relay under `fanout` when its last
/// `leaves` entries are leaf-only: those that head a part of more than one node (the
/// others are leaves).
pub fn relay_positions(n: usize, fanout: u8, leaves: usize) -> Vec<bool> {
    let positions: Vec<usize> = (0..n).collect();
    let first_leaf = n.saturating_sub(leaves);
    let mut relay = vec![false; n];
    let mut stack = split(&positions, fanout);
    while let Some(part) = stack.pop() {
        if part[0] < first_leaf && part.len() > 1 {
            relay[part[0]] = true;
            stack.extend(split(&part[1..], fanout));
        }
    }
    relay
}

/// `list` reordered so that the plan under `fanout` puts the best relays (lowest `rank`)
/// at the positions that relay and the worst at the leaves. Only the nodes that must move
/// are swapped, so a list of equal ranks is returned as it was.
pub fn order_for_relays<K: Ord>(list: &[NodeId], fanout: u8, rank: impl Fn(&NodeId) -> K) -> Vec<NodeId> {
    place_best(list, &relay_positions(list.len(), fanout, 0), rank)
}

/// The NMS's order of a campaign's addressees, and how many of its last entries are
/// leaf-only (`PlanParams::leaves`): the nodes that said they are gated go last and relay
/// for no one; of the others, those that relay unconditionally take the relay positions
/// before those whose policy may stop them ([`order_for_relays`]).
pub fn plan_order(list: &[NodeId], fanout: u8, hint: impl Fn(&NodeId) -> RelayHint) -> (Vec<NodeId>, usize) {
    let (relaying, gated): (Vec<NodeId>, Vec<NodeId>) =
        list.iter().partition(|n| hint(n) != RelayHint::Gated);
    let mut order = relaying;
    order.extend(gated.iter().copied());
    let relay = relay_positions(order.len(), fanout, gated.len());
    let head = place_best(&order[..order.len() - gated.len()], &relay, &hint);
    (
        head.into_iter().chain(gated.iter().copied()).collect(),
        gated.len(),
    )
}

/// `list` with the best-ranked nodes moved to the positions `relay` marks (a prefix of
/// `relay` may be given: positions beyond `list` are ignored), swapping as few as needed.
fn place_best<K: Ord>(list: &[NodeId], relay: &[bool], rank: impl Fn(&NodeId) -> K) -> Vec<NodeId> {
    let relay = &relay[..list.len()];
    let relays = relay.iter().filter(|r| **r).count();
    // the nodes that should relay: the best ranks, those already relaying first on a tie
    let mut by_rank: Vec<usize> = (0..list.len()).collect();
    by_rank.sort_by_key(|&i| (rank(&list[i]), !relay[i], i));
    let mut chosen = vec![false; list.len()];
    for &i in &by_rank[..relays] {
        chosen[i] = true;
    }
    let up: Vec<usize> = (0..list.len()).filter(|&i| chosen[i] && !relay[i]).collect();
    let down: Vec<usize> = (0..list.len()).filter(|&i| !chosen[i] && relay[i]).collect();
    let mut out = list.to_vec();
    for (a, b) in up.into_iter().zip(down) {
        out.swap(a, b);
    }
    out
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
    /// The tree for `addressees`, `fanout` and the leaf-only nodes.
    pub fn plan(addressees: &[NodeId], fanout: u8, leaf: LeafOnly<'_>) -> Tree {
        let mut tree = Tree::default();
        let mut stack: Vec<(Option<NodeId>, usize, Assignment)> = assignments(addressees, fanout, leaf)
            .into_iter()
            .map(|a| (None, 1, a))
            .collect();
        while let Some((parent, depth, a)) = stack.pop() {
            tree.parent.insert(a.head, parent);
            tree.depth.insert(a.head, depth);
            for c in children_of(&a.part, fanout, leaf) {
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
                assignments(&list, fanout, &no_leaves).into_iter().map(|a| (None, a)).collect();
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
                let kids = children_of(&a.part, fanout, &no_leaves);
                prop_assert!(kids.len() <= usize::from(fanout));
                for k in kids {
                    prop_assert!(a.part.contains(&k.head));
                    stack.push((Some(a.head), k));
                }
            }
            prop_assert_eq!(reached.len(), n);
            prop_assert_eq!(max_depth, expected_depth(n, fanout));
            let tree = Tree::plan(&list, fanout, &no_leaves);
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

    proptest! {
        #[test]
        fn relays_are_the_best_ranked(ranks in proptest::collection::vec(0u8..3, 0..200), fanout in 1u8..5) {
            let list = ids(ranks.len());
            let rank_of: std::collections::HashMap<NodeId, u8> =
                list.iter().copied().zip(ranks.iter().copied()).collect();
            let ordered = order_for_relays(&list, fanout, |n| rank_of[n]);
            let mut a = ordered.clone();
            a.sort();
            let mut b = list.clone();
            b.sort();
            prop_assert_eq!(a, b, "not a permutation");
            let relay = relay_positions(list.len(), fanout, 0);
            let tree = Tree::plan(&ordered, fanout, &no_leaves);
            let parents: HashSet<NodeId> = tree.parent.values().flatten().copied().collect();
            for (i, n) in ordered.iter().enumerate() {
                prop_assert_eq!(relay[i], parents.contains(n), "position {} relays iff it has children", i);
            }
            let worst_relay = ordered.iter().zip(&relay).filter(|(_, r)| **r).map(|(n, _)| rank_of[n]).max();
            let best_leaf = ordered.iter().zip(&relay).filter(|(_, r)| !**r).map(|(n, _)| rank_of[n]).min();
            if let (Some(w), Some(b)) = (worst_relay, best_leaf) {
                prop_assert!(w <= b, "a relay ranked {} while a leaf ranked {}", w, b);
            }
            let same = order_for_relays(&list, fanout, |_| 0);
            prop_assert_eq!(same, list);
        }
    }

    #[test]
    fn two_gated_of_eight_become_leaves() {
        let list = ids(8);
        let gated = [list[0], list[4]]; // the first-tier heads of the plain plan
        let ordered = order_for_relays(&list, 2, |n| gated.contains(n));
        let tree = Tree::plan(&ordered, 2, &no_leaves);
        for g in gated {
            assert!(!tree.parent.values().any(|p| *p == Some(g)), "{g} still relays");
        }
    }

    proptest! {
        #[test]
        fn gated_nodes_relay_for_no_one_and_everyone_is_reached(
            hints in proptest::collection::vec(0u8..3, 0..120), fanout in 1u8..4
        ) {
            let list = ids(hints.len());
            let hint_of: std::collections::HashMap<NodeId, RelayHint> = list
                .iter()
                .copied()
                .zip(hints.iter().map(|h| [RelayHint::Open, RelayHint::Restricted, RelayHint::Gated][*h as usize]))
                .collect();
            let (order, leaves) = plan_order(&list, fanout, |n| hint_of[n]);
            let gated: HashSet<NodeId> =
                list.iter().filter(|n| hint_of[*n] == RelayHint::Gated).copied().collect();
            prop_assert_eq!(leaves, gated.len());
            let tail: HashSet<NodeId> = order[order.len() - leaves..].iter().copied().collect();
            prop_assert_eq!(&tail, &gated);
            let leaf = |n: &NodeId| tail.contains(n);
            let tree = Tree::plan(&order, fanout, &leaf);
            prop_assert_eq!(tree.parent.len(), list.len(), "every addressee reached once");
            let parents: HashSet<NodeId> = tree.parent.values().flatten().copied().collect();
            for g in &gated {
                prop_assert!(!parents.contains(g), "gated {} relays", g);
            }
            // no deeper than the plain plan, so within the path limit
            prop_assert!(tree.max_depth() <= expected_depth(list.len(), fanout).max(1));
            // open nodes take relay places before restricted ones
            let relays: Vec<RelayHint> = parents.iter().map(|n| hint_of[n]).collect();
            let leaves_open = order.iter().any(|n| !parents.contains(n) && hint_of[n] == RelayHint::Open);
            if leaves_open {
                prop_assert!(!relays.contains(&RelayHint::Restricted), "a restricted relay while an open node is a leaf");
            }
        }
    }

    #[test]
    fn a_chain_with_two_gated_nodes_hangs_both_off_its_last_relay() {
        let list = ids(8);
        let gated = [list[2], list[5]];
        let hint = |n: &NodeId| {
            if gated.contains(n) {
                RelayHint::Gated
            } else {
                RelayHint::Open
            }
        };
        let (order, leaves) = plan_order(&list, 1, hint);
        assert_eq!(leaves, 2);
        let leaf = |n: &NodeId| gated.contains(n);
        let tree = Tree::plan(&order, 1, &leaf);
        let last_relay = order[5];
        for g in gated {
            assert_eq!(tree.parent[&g], Some(last_relay));
        }
        assert_eq!(tree.max_depth(), 7);
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
        let tree = Tree::plan(&list, 2, &no_leaves);
        assert_eq!(tree.path(&list[5]).len(), tree.depth[&list[5]]);
        assert_eq!(tree.parent[&list[0]], None);
    }
}
