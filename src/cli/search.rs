//! `dsmake search PIPELINE "a photo of a cat"` (or `--image FILE`): embeds the query with the model of the
//! pipeline's `clip-embed` step, loaded as that step loads it (`model` pinned by the plan and fetched into
//! the dsmake cache as a worker fetches it, or `model_path`), searches the `knn-index` step's `image.index` or `text.index` (`--modality`, as clip_back's
//! request names it) with whatever that step built (exact, IVF-PQ, or the usearch HNSW graph beside with
//! `--hnsw`) and prints the top k with score, url and caption from the copied `metadata/` parts.
//!
//! The index must be fresh: the plan for the index step (and what it reads) is made first, so a query is
//! never embedded with a model other than the one the index was built with; if it is missing or stale the
//! command says which build makes it.

use super::workspace::Workspace;
use super::{Format, PipelineArgs, UsageError};
use crate::clip::{self, Clip};
use crate::kinds::clip_embed;
use crate::kinds::knn_index::{self, METADATA_DIR, faiss, hnsw, meta};
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
    #[arg(required_unless_present_any = ["image", "embedding"])]
    query: Option<String>,
    /// Search with an image file instead (embedded with the CLIP image tower).
    #[arg(long, value_name = "FILE", conflicts_with = "query")]
    image: Option<PathBuf>,
    /// Search with an embedding instead: a `.npy` file of one vector (float16 or float32), as clip_back's
    /// `embedding_input`; no model is loaded.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["query", "image"])]
    embedding: Option<PathBuf>,
    /// The knn-index step to search (needed when the pipeline has several).
    #[arg(long, value_name = "STEP")]
    step: Option<String>,
    /// How many results.
    #[arg(short, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    k: u64,
    /// Which index: `image` (image.index) or `text` (text.index); default: image when the step built it.
    #[arg(long, value_enum)]
    modality: Option<Modality>,
    /// IVF lists scanned per query; default: the nprobe stored in the index.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    nprobe: Option<u64>,
    /// Search the usearch HNSW graph beside the index (a step with `usearch = true`).
    #[arg(long)]
    hnsw: bool,
    /// Candidates per query in the HNSW graph (efSearch); default: the step's `expansion_search`, at least k.
    #[arg(long, value_name = "N", requires = "hnsw")]
    expansion: Option<usize>,
    /// Insist on exact results: fails unless the index is exact (`Flat`).
    #[arg(long, conflicts_with = "hnsw")]
    exact: bool,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Modality {
    Image,
    Text,
}

impl Modality {
    fn as_str(self) -> &'static str {
        match self {
            Modality::Image => "image",
            Modality::Text => "text",
        }
    }
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
    // The model that embeds text and image queries; an embedding query needs none.
    let clip_step = match args.embedding {
        Some(_) => None,
        None => Some(clip_step(&workspace.pipeline, step)?),
    };
    let step_name = workspace.pipeline.steps[step].name.clone();
    // Plan only the index and what it reads (whatever --target says).
    workspace.plan_options.targets = vec![step_name.clone()];
    let plan = workspace.plan()?;
    let built = fresh_index(&plan, &workspace.pipeline, step, &args.pipeline.pipeline)?;
    let settings = knn_index::settings(&workspace.pipeline.steps[step].settings)?;
    let size_of = |name: &str| built.outputs.iter().find(|(o, _)| o == name).map(|(_, size)| *size);
    let has = |name: &str| size_of(name).is_some();
    let modality = match args.modality {
        Some(m) => m,
        None if has("image.index") => Modality::Image,
        None => Modality::Text,
    };
    let side = modality.as_str();
    let index_name = if args.hnsw { format!("{side}.usearch") } else { format!("{side}.index") };
    if !has(&index_name) {
        bail!(
            "{step_name} has no {index_name}: {}",
            if args.hnsw {
                "the step writes it with `usearch = true`"
            } else {
                "the step indexes other embeddings (`embeddings`)"
            }
        );
    }
    let dir = &workspace.pipeline.steps[step].dir;
    let local = |name: &str| {
        let size = size_of(name).with_context(|| format!("{name} is not an output of {step_name}"))?;
        local_output(&*workspace.store, dir, name, size, &built.key)
    };

    let query = match (&args.query, &args.image, clip_step) {
        (_, _, None) => read_embedding(args.embedding.as_deref().context("no --embedding")?)?,
        (_, Some(path), Some(clip)) => embed_image(&load_model(&workspace.pipeline, clip)?, path)?,
        (Some(text), None, Some(clip)) => embed_text(&load_model(&workspace.pipeline, clip)?, text)?,
        (None, None, _) => return Err(UsageError("give a text query, --image FILE or --embedding FILE".into()).into()),
    };

    let k = args.k as usize;
    let path = local(&index_name)?;
    let (found, index_key) = if args.hnsw {
        let expansion = args.expansion.unwrap_or(settings.expansion_search.max(1) as usize).max(k);
        let index = hnsw::open_view(&path, expansion)?;
        check_dims(&path, index.dimensions(), query.len())?;
        (hnsw::search(&index, &query, k)?, "usearch HNSW".to_string())
    } else {
        let index = faiss::read(&path)?;
        check_dims(&path, index.d(), query.len())?;
        let key = index.key();
        if args.exact && key != "Flat" {
            bail!("{index_name} is {key}, not exact: build the step with `index_key = \"Flat\"` for exact search");
        }
        let found = index.search(&query, k, args.nprobe.map(|n| n as usize));
        (found.into_iter().filter(|(id, _)| *id >= 0).map(|(id, s)| (id as u64, s)).collect(), key)
    };
    let ids: Vec<u64> = found.iter().map(|(id, _)| *id).collect();
    let prefix = format!("{METADATA_DIR}/");
    let mut parts: Vec<&String> = built.outputs.iter().map(|(o, _)| o).filter(|o| o.starts_with(&prefix)).collect();
    parts.sort();
    let parts = parts.into_iter().map(|p| local(p)).collect::<anyhow::Result<Vec<PathBuf>>>()?;
    let rows = meta::lookup_parts(&parts, &ids)?;
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
    let shown_query = match (&args.query, &args.image, &args.embedding) {
        (_, _, Some(path)) => format!("embedding {}", path.display()),
        (_, Some(path), _) => format!("image {}", path.display()),
        (Some(text), _, _) => format!("{text:?}"),
        _ => String::new(),
    };
    match args.format {
        Format::Json => {
            let value = serde_json::json!({
                "pipeline": workspace.pipeline.name,
                "step": step_name,
                "query": args.query,
                "image": args.image,
                "embedding": args.embedding,
                "modality": side,
                "index": index_name,
                "index_key": index_key,
                "results": hits,
            });
            serde_json::to_writer_pretty(&mut out, &value)?;
            writeln!(out)?;
        }
        Format::Human => {
            writeln!(
                out,
                "Top {} for {shown_query} in {}/{step_name} {index_name} ({} vectors, {index_key})",
                hits.len(),
                workspace.pipeline.name,
                built.rows.map_or("?".into(), |r| r.to_string()),
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
    /// Names and sizes.
    outputs: Vec<(String, u64)>,
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
        outputs: record.outputs().map(|o| (o.name.to_string(), o.size)).collect(),
        rows: record.rows(),
    })
}

/// An output of the index step as a local file: in place for a local store, else downloaded once into the
/// dsmake cache under the target's key.
fn local_output(store: &dyn Store, dir: &str, name: &str, size: u64, key: &str) -> anyhow::Result<PathBuf> {
    let path = join(dir, name);
    if let Some(local) = store.local_path(&path) {
        return Ok(local);
    }
    let cached = cache_dir().join("search").join(&key[..key.len().min(32)]).join(name);
    if !cached.is_file() {
        let parent = cached.parent().context("cache path has no folder")?;
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        let partial = cached.with_extension("partial");
        store.fetch(&path, &partial, size).with_context(|| format!("cannot download {path}"))?;
        std::fs::rename(&partial, &cached).with_context(|| format!("cannot write {}", cached.display()))?;
    }
    Ok(cached)
}

/// The model of a clip-embed step, found as its build finds it (pinned by the plan just made, fetched if this
/// machine lacks it), on the CPU.
fn load_model(pipeline: &Pipeline, step: usize) -> anyhow::Result<Clip> {
    let step = &pipeline.steps[step];
    let dir = clip_embed::model_folder(&step.settings, &step.name, &pipeline.base_dir)
        .with_context(|| format!("the model of step `{}`", step.name))?;
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

/// One vector from a `.npy` file of shape (1, d), L2-normalised as clip-embed's are.
fn read_embedding(path: &Path) -> anyhow::Result<Vec<f32>> {
    let mut npy = knn_index::vectors::NpyRows::open(path)?;
    if npy.rows != 1 {
        bail!("{} holds {} vectors: --embedding takes one", path.display(), npy.rows);
    }
    let mut v = Vec::new();
    npy.next_rows(1, &mut v)?;
    normalized(v)
}

fn check_dims(path: &Path, index: usize, query: usize) -> anyhow::Result<()> {
    if index != query {
        bail!("{} holds vectors of {index} dimensions but the model embeds {query}: rebuild the index", path.display());
    }
    Ok(())
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
