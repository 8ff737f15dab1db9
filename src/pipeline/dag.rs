//! The step graph: dependency order, and cycles named step by step.

use petgraph::Direction;
use petgraph::algo::{is_cyclic_directed, tarjan_scc};
use petgraph::graph::{DiGraph, NodeIndex};

/// Orders steps so that each comes after the steps it reads (`from`). On a cycle, returns the steps of one
/// cycle in order, starting and ending with the same step.
pub fn order(names: &[String], from: &[Vec<String>]) -> Result<Vec<usize>, Vec<String>> {
    let mut graph = DiGraph::<usize, ()>::new();
    let nodes: Vec<NodeIndex> = (0..names.len()).map(|i| graph.add_node(i)).collect();
    for (step, inputs) in from.iter().enumerate() {
        for input in inputs {
            if let Some(i) = names.iter().position(|n| n == input) {
                graph.add_edge(nodes[i], nodes[step], ());
            }
        }
    }
    if is_cyclic_directed(&graph) {
        return Err(find_cycle(&graph, names));
    }
    // Kahn's algorithm, always taking the earliest ready step in file order: plans list steps as written.
    let mut placed = vec![false; names.len()];
    let mut order = Vec::with_capacity(names.len());
    while order.len() < names.len() {
        let next = (0..names.len())
            .find(|&i| !placed[i] && graph.neighbors_directed(nodes[i], Direction::Incoming).all(|n| placed[graph[n]]));
        let Some(next) = next else { break };
        placed[next] = true;
        order.push(next);
    }
    Ok(order)
}

fn find_cycle(graph: &DiGraph<usize, ()>, names: &[String]) -> Vec<String> {
    let component = tarjan_scc(graph)
        .into_iter()
        .filter(|c| c.len() > 1 || graph.contains_edge(c[0], c[0]))
        .min_by_key(|c| c.iter().map(|n| graph[*n]).min())
        .unwrap_or_default();
    let Some(&start) = component.iter().min_by_key(|n| graph[**n]) else {
        return Vec::new();
    };
    // Walk the component: from each step, to the first step (in file order) that reads it and is in the cycle.
    let mut path = vec![start];
    let mut current = start;
    loop {
        let next = graph.neighbors(current).filter(|n| component.contains(n)).min_by_key(|n| graph[*n]);
        match next {
            Some(n) if n == start || path.contains(&n) => {
                path.push(n);
                break;
            }
            Some(n) => {
                path.push(n);
                current = n;
            }
            None => break,
        }
    }
    path.into_iter().map(|n| names[graph[n]].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn order_of(n: &[&str], from: &[&[&str]]) -> Vec<usize> {
        order(&names(n), &from.iter().map(|f| names(f)).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn orders_inputs_first() {
        let order = order(&names(&["c", "a", "b"]), &[names(&["b"]), vec![], names(&["a"])]).unwrap();
        assert_eq!(order, vec![1, 2, 0]);
        let order = order_of(&["raw", "x", "y", "z"], &[&[], &["raw"], &["raw"], &["x"]]);
        assert_eq!(order, vec![0, 1, 2, 3], "file order wherever dependencies allow");
    }

    #[test]
    fn names_a_cycle() {
        let cycle = order(&names(&["a", "b", "c"]), &[names(&["c"]), names(&["a"]), names(&["b"])]).unwrap_err();
        assert_eq!(cycle, names(&["a", "b", "c", "a"]));
    }

    #[test]
    fn names_a_self_loop() {
        assert_eq!(order(&names(&["a"]), &[names(&["a"])]).unwrap_err(), names(&["a", "a"]));
    }
}
