//! `dsmake search PIPELINE "a photo of a cat"` (or `--image FILE`): embeds the query with the model of the
//! pipeline's `clip-embed` step, loaded as that step loads it (`model` from the Hugging Face cache, or
//! `model_path`), searches the `knn-index` step's index and prints the top k with score, url and caption.
//!
//! The index must be fresh: the plan for the index step (and what it reads) is made first, so a query is
//! never embedded with a model other than the one the index was built with; if it is missing or stale the
//! command says which build makes it.

use super::workspace::Workspace;
use super::{Format, PipelineArgs, UsageError};
use crate::clip::{self, Clip, hub};
use crate::kinds::knn_index::{self, FAISS_FILE, METADATA_FILE, faiss, hnsw, meta};
use crate::pipeline::Pipeline;
use crate::plan::{Action, Plan};
use crate::store::{Store, join};
use crate::util::cache_dir;
use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct SearchArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// The text to search for (embedded with the CLIP text tower).
    #[arg(required_unless_present = "image")]
    query: Option<String>,
    /// Search with an image file instead (embedded with the CLIP image tower).
    #[arg(long, value_name = "FILE", conflicts_with = "query")]
    image: Option<PathBuf>,
    /// The knn-index step to search (needed when the pipeline has several).
    #[arg(long, value_name = "STEP")]
    step: Option<String>,
    /// How many results.
    #[arg(short, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    k: u64,
    /// Candidates per query (HNSW efSearch); default: the step's `expansion_search`, at least k.
    #[arg(long, value_name = "N")]
    expansion: Option<usize>,
    /// Brute force over the exact faiss index (`knn.index`) instead of the HNSW graph.
    #[arg(long)]
    exact: bool,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Serialize)]
struct Hit {
    rank: usize,
    /// The vector's row: its key in the index, its row in metadata.parquet.
    id: u64,
    score: f32,
    image_path: String,
    caption: Option<String>,
    url: Option<String>,
}

pub fn search(args: SearchArgs) -> anyhow::Result<()> {
    let mut workspace = Workspace::open(&args.pipeline)?;
    let step = index_step(&workspace.pipeline, args.step.as_deref())?;
    let clip_step = clip_step(&workspace.pipeline, step)?;
    let step_name = workspace.pipeline.steps[step].name.clone();
    // Plan only the index and what it reads (whatever --target says).
    workspace.plan_options.targets = vec![step_name.clone()];
    let plan = workspace.plan()?;
    let built = fresh_index(&plan, &workspace.pipeline, step, &args.pipeline.pipeline)?;
    let settings = knn_index::settings(&workspace.pipeline.steps[step].settings)?;
    let index_name = settings.index_file();
    let dir = &workspace.pipeline.steps[step].dir;
    let local = |name: &str| local_output(&*workspace.store, dir, name, &built.key);

    let model = load_model(&workspace.pipeline, clip_step)?;
    let query = match (&args.query, &args.image) {
        (_, Some(path)) => embed_image(&model, path)?,
        (Some(text), None) => embed_text(&model, text)?,
        (None, None) => return Err(UsageError("give a text query or --image FILE".into()).into()),
    };

    let k = args.k as usize;
    let found = if args.exact {
        if !built.outputs.iter().any(|o| o == FAISS_FILE) {
            bail!(
                "{step_name} has no exact index ({FAISS_FILE}): it is written up to {} vectors unless the step sets \
                 `exact_faiss = true`",
                knn_index::EXACT_FAISS_AUTO_MAX
            );
        }
        exact_search(&local(FAISS_FILE)?, &query, k)?
    } else {
        let path = local(&index_name)?;
        let expansion = args.expansion.unwrap_or(settings.expansion_search.max(1) as usize).max(k);
        let index = hnsw::open_view(&path, expansion)?;
        if index.dimensions() != query.len() {
            bail!(
                "{} holds vectors of {} dimensions but the model embeds {}: rebuild the index",
                path.display(),
                index.dimensions(),
                query.len()
            );
        }
        hnsw::search(&index, &query, k)?
    };
    let ids: Vec<u64> = found.iter().map(|(id, _)| *id).collect();
    let rows = meta::lookup(&local(METADATA_FILE)?, &ids)?;
    let hits: Vec<Hit> = found
        .iter()
        .zip(rows)
        .enumerate()
        .map(|(i, ((id, score), row))| Hit {
            rank: i + 1,
            id: *id,
            score: *score,
            image_path: row.image_path,
            caption: row.caption,
            url: row.url,
        })
        .collect();

    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let shown_query = match (&args.query, &args.image) {
        (_, Some(path)) => format!("image {}", path.display()),
        (Some(text), _) => format!("{text:?}"),
        _ => String::new(),
    };
    match args.format {
        Format::Json => {
            let value = serde_json::json!({
                "pipeline": workspace.pipeline.name,
                "step": step_name,
                "query": args.query,
                "image": args.image,
                "index": if args.exact { FAISS_FILE.to_string() } else { index_name },
                "results": hits,
            });
            serde_json::to_writer_pretty(&mut out, &value)?;
            writeln!(out)?;
        }
        Format::Human => {
            writeln!(
                out,
                "Top {} for {shown_query} in {}/{step_name} ({} vectors{})",
                hits.len(),
                workspace.pipeline.name,
                built.rows.map_or("?".into(), |r| r.to_string()),
                if args.exact { ", exact" } else { "" }
            )?;
            write!(out, "{}", table(&hits))?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The knn-index step to search: `--step`, or the pipeline's only one.
fn index_step(pipeline: &Pipeline, wanted: Option<&str>) -> anyhow::Result<usize> {
    let kind = "knn-index";
    let candidates: Vec<usize> = (0..pipeline.steps.len()).filter(|&s| pipeline.steps[s].kind.name() == kind).collect();
    let names = || candidates.iter().map(|&s| pipeline.steps[s].name.as_str()).collect::<Vec<_>>().join(", ");
    match wanted {
        Some(name) => {
            let Some(s) = pipeline.step_index(name) else {
                let hint = crate::util::suggest::help_for(
                    name,
                    "step",
                    &pipeline.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
                );
                return Err(UsageError(format!("no step `{name}` in {} ({hint})", pipeline.name)).into());
            };
            if pipeline.steps[s].kind.name() != kind {
                return Err(UsageError(format!(
                    "step `{name}` is a `{}` step, not a knn-index step{}",
                    pipeline.steps[s].kind.name(),
                    if candidates.is_empty() { String::new() } else { format!(" (those are: {})", names()) }
                ))
                .into());
            }
            Ok(s)
        }
        None => match candidates.as_slice() {
            [one] => Ok(*one),
            [] => Err(UsageError(format!(
                "{} has no knn-index step to search: add one that reads the clip-embed step, e.g.\n    \
                 [steps.knn]\n    kind = \"knn-index\"\n    from = \"<clip-embed step>\"",
                pipeline.name
            ))
            .into()),
            _ => Err(UsageError(format!(
                "{} has several knn-index steps ({}): choose one with --step",
                pipeline.name,
                names()
            ))
            .into()),
        },
    }
}

/// The clip-embed step upstream of the index, whose model embeds queries.
fn clip_step(pipeline: &Pipeline, index: usize) -> anyhow::Result<usize> {
    let mut queue = pipeline.inputs_of(index);
    let mut seen = Vec::new();
    while let Some(s) = queue.first().copied() {
        queue.remove(0);
        if seen.contains(&s) {
            continue;
        }
        seen.push(s);
        if pipeline.steps[s].kind.name() == "clip-embed" {
            return Ok(s);
        }
        queue.extend(pipeline.inputs_of(s));
    }
    Err(UsageError(format!(
        "`{}` reads no clip-embed step, so there is no model to embed the query with",
        pipeline.steps[index].name
    ))
    .into())
}

struct BuiltIndex {
    key: String,
    outputs: Vec<String>,
    rows: Option<u64>,
}

/// The index target, which must be fresh; otherwise what to build first.
fn fresh_index(plan: &Plan, pipeline: &Pipeline, step: usize, pipeline_arg: &str) -> anyhow::Result<BuiltIndex> {
    let name = &pipeline.steps[step].name;
    let build = format!("dsmake build {pipeline_arg} --target {name}");
    let step_plan = plan.steps.iter().find(|s| &s.name == name).context("the plan has no such step")?;
    if let Some(why) = &step_plan.unknown {
        bail!("the index `{name}` cannot be searched yet ({why}): build it first with `{build}`");
    }
    let Some(t) = step_plan.targets.clone().next() else {
        bail!(
            "the index `{name}` has nothing to index yet (its clip-embed step has no parts): build the pipeline first"
        );
    };
    let target = &plan.targets[t];
    match target.action {
        Action::Fresh => {}
        Action::Missing | Action::Blocked if plan.record(t).is_none() => {
            bail!("the index `{}` is not built: build it first with `{build}`", target.name)
        }
        _ => bail!(
            "the index `{}` is out of date ({}): rebuild it first with `{build}`",
            target.name,
            target.reason.as_deref().unwrap_or("its inputs changed")
        ),
    }
    let record = plan.record(t).context("a fresh target without a record")?;
    Ok(BuiltIndex {
        key: target.key.to_string(),
        outputs: record.outputs.iter().map(|o| o.name.clone()).collect(),
        rows: record.rows,
    })
}

/// An output of the index step as a local file: in place for a local store, else downloaded once into the
/// dsmake cache under the target's key.
fn local_output(store: &dyn Store, dir: &str, name: &str, key: &str) -> anyhow::Result<PathBuf> {
    let path = join(dir, name);
    if let Some(local) = store.local_path(&path) {
        return Ok(local);
    }
    let cached = cache_dir().join("search").join(&key[..key.len().min(32)]).join(name);
    if !cached.is_file() {
        let parent = cached.parent().context("cache path has no folder")?;
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let partial = cached.with_extension("partial");
        store.fetch(&path, &partial).with_context(|| format!("cannot download {path}"))?;
        std::fs::rename(&partial, &cached).with_context(|| format!("cannot write {}", cached.display()))?;
    }
    Ok(cached)
}

/// The model of a clip-embed step, found as its build finds it, on the CPU.
fn load_model(pipeline: &Pipeline, step: usize) -> anyhow::Result<Clip> {
    let settings = &pipeline.steps[step].settings;
    let dir = match settings.get("model_path").and_then(|v| v.as_str()) {
        Some(path) => pipeline.base_dir.join(path),
        None => {
            let name = settings.get("model").and_then(|v| v.as_str()).unwrap_or(hub::DEFAULT_MODEL);
            let repo = hub::repo_for(name).map_err(anyhow::Error::msg)?;
            hub::resolve(&repo).with_context(|| format!("model `{name}` of step `{}`", pipeline.steps[step].name))?.dir
        }
    };
    let device = candle_core::Device::Cpu;
    Clip::load(&dir, &device, clip::default_dtype(&device))
}

fn normalized(v: Vec<f32>) -> anyhow::Result<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        bail!("the query embeds to a zero or non-finite vector");
    }
    Ok(v.into_iter().map(|x| x / norm).collect())
}

fn embed_text(model: &Clip, text: &str) -> anyhow::Result<Vec<f32>> {
    let t = model.embed_texts(&[text]).context("cannot embed the query")?;
    normalized(t.flatten_all()?.to_vec1::<f32>()?)
}

fn embed_image(model: &Clip, path: &Path) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let pixels = model.preprocess.pixels_from_bytes(&bytes).with_context(|| format!("{}", path.display()))?;
    let t = model.embed_pixels(pixels, 1).context("cannot embed the query image")?;
    normalized(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Brute force over the exact faiss file.
fn exact_search(path: &Path, query: &[f32], k: usize) -> anyhow::Result<Vec<(u64, f32)>> {
    let (d, _, data) = faiss::read_flat_ip(path)?;
    if d != query.len() {
        bail!("{} holds vectors of {d} dimensions but the model embeds {}", path.display(), query.len());
    }
    let mut scored: Vec<(u64, f32)> = data
        .chunks_exact(d)
        .enumerate()
        .map(|(i, row)| (i as u64, row.iter().zip(query).map(|(a, b)| a * b).sum::<f32>()))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(k);
    Ok(scored)
}

/// The results as an aligned table; long captions are cut.
fn table(hits: &[Hit]) -> String {
    const CAPTION: usize = 70;
    let cut = |s: &str, n: usize| {
        let one_line = s.replace(['\n', '\r', '\t'], " ");
        if one_line.chars().count() > n {
            format!("{}…", one_line.chars().take(n - 1).collect::<String>())
        } else {
            one_line
        }
    };
    let rows: Vec<[String; 5]> = hits
        .iter()
        .map(|h| {
            [
                h.rank.to_string(),
                format!("{:.4}", h.score),
                h.url.clone().unwrap_or_else(|| "-".into()),
                h.caption.as_deref().map_or("-".into(), |c| cut(c, CAPTION)),
                h.image_path.clone(),
            ]
        })
        .collect();
    let header = ["#", "score", "url", "caption", "key"];
    let width = |c: usize| rows.iter().map(|r| r[c].chars().count()).chain([header[c].len()]).max().unwrap_or(0);
    let widths: Vec<usize> = (0..5).map(width).collect();
    let line = |cells: [&str; 5]| {
        let mut s = String::from(" ");
        for (c, cell) in cells.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c < 2 {
                s.push_str(&format!(" {}{cell}", " ".repeat(pad)));
            } else if c == 4 {
                s.push_str(&format!("  {cell}"));
            } else {
                s.push_str(&format!("  {cell}{}", " ".repeat(pad)));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header);
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    out
}
