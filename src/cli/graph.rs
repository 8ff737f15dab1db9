//! `dsmake graph`: the step DAG (or, with --shards, the target DAG) as Graphviz DOT.

use super::PipelineArgs;
use super::workspace::Workspace;
use crate::plan::Action;
use clap::Args;
use std::fmt::Write;

#[derive(Args, Debug)]
pub struct GraphArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// One node per target instead of per step, coloured by what a build would do.
    #[arg(long)]
    shards: bool,
}

fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn graph(args: GraphArgs) -> anyhow::Result<()> {
    let workspace = Workspace::open(&args.pipeline)?;
    let pipeline = &workspace.pipeline;
    let mut dot = String::new();
    let _ = writeln!(
        dot,
        "digraph {} {{\n  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];",
        quote(&pipeline.name)
    );
    if !args.shards {
        for step in &pipeline.steps {
            let label = format!("{}\\n{}", step.name, step.kind.name());
            let _ = writeln!(dot, "  {} [label=\"{label}\"];", quote(&step.name));
        }
        for step in &pipeline.steps {
            for input in &step.from {
                let _ = writeln!(dot, "  {} -> {};", quote(input), quote(&step.name));
            }
        }
    } else {
        let plan = workspace.plan()?;
        for (s, step) in plan.steps.iter().enumerate() {
            let _ = writeln!(dot, "  subgraph {} {{\n    label={};", quote(&format!("cluster_{s}")), quote(&step.name));
            if let Some(why) = &step.unknown {
                let _ = writeln!(
                    dot,
                    "    {} [label={}, style=dashed];",
                    quote(&format!("{}/?", step.name)),
                    quote(&format!("{}: {why}", step.name))
                );
            }
            for t in step.targets.clone().filter(|&t| plan.targets[t].selected) {
                let target = &plan.targets[t];
                let color = match target.action {
                    Action::Source | Action::Fresh => "palegreen",
                    Action::Missing => "lightskyblue",
                    Action::Stale => "orange",
                    Action::Blocked => "lightgrey",
                };
                let _ = writeln!(dot, "    {} [style=filled, fillcolor={color}];", quote(&target.name));
            }
            let _ = writeln!(dot, "  }}");
        }
        for target in plan.targets.iter().filter(|t| t.selected) {
            for &input in &target.inputs {
                let _ = writeln!(dot, "  {} -> {};", quote(&plan.targets[input].name), quote(&target.name));
            }
        }
    }
    dot.push_str("}\n");
    print!("{dot}");
    Ok(())
}
