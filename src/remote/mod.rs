//! Remote definitions, `remotes/NAME.toml`: which store a pipeline builds into and how to reach it, and
//! (with the remote executors) where its targets run.

use crate::pipeline::Diagnostic;
use crate::store::s3::S3Options;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub mod databricks;
pub mod spark;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Remote {
    #[serde(default)]
    pub description: String,
    pub store: StoreSection,
    #[serde(default)]
    pub executor: ExecutorSection,
    /// Where it was read from: relative paths in it are relative to its folder.
    #[serde(skip)]
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `s3://bucket/prefix` or a local folder.
    pub url: String,
    /// An AWS profile (SSO profiles included).
    pub profile: Option<String>,
    /// An S3-compatible endpoint; requests then use path-style addressing.
    pub endpoint: Option<String>,
    /// The bucket's region; found from the bucket when left out.
    pub region: Option<String>,
}

impl StoreSection {
    pub fn s3(&self) -> S3Options {
        S3Options { profile: self.profile.clone(), endpoint: self.endpoint.clone(), region: self.region.clone() }
    }
}

/// `[executor]`: where the targets run, by `kind`; each executor takes its own settings and no other's.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ExecutorSection {
    /// This machine (the default).
    Local(LocalSection),
    /// A Spark cluster (`local[N]` too).
    Spark(SparkSection),
    /// One Databricks job run.
    Databricks(DatabricksSection),
}

impl Default for ExecutorSection {
    fn default() -> Self {
        ExecutorSection::Local(LocalSection {})
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSection {}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkSection {
    /// The master URL (`local[2]`, `spark://host:7077`, `yarn`).
    pub master: Option<String>,
    /// The `spark-submit` to run (default: the one beside `python`, else on PATH).
    pub spark_submit: Option<String>,
    /// The Python with pyspark, for the driver and the workers (PYSPARK_PYTHON).
    pub python: Option<String>,
    /// Spark settings passed with `--conf` (`spark.task.maxFailures`, …).
    #[serde(default)]
    pub conf: BTreeMap<String, String>,
    /// Environment for the tasks: it travels in the run's plan file (in a folder only this user can read), which
    /// the driver reads and hands to its tasks; never on spark-submit's command line, where `ps` shows it.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `files` ships this dsmake with `--files`; `store` uploads it to the store and tasks fetch it.
    #[serde(default)]
    pub ship_binary: ShipBinary,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShipBinary {
    #[default]
    Files,
    Store,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabricksSection {
    /// The workspace URL; otherwise DATABRICKS_HOST or the profile's `host`.
    pub host: Option<String>,
    /// The ~/.databrickscfg profile used when neither `-p` nor DATABRICKS_HOST says.
    pub profile: Option<String>,
    /// A dsmake binary for the clusters (`s3://…`, Linux x86_64); default: upload this one.
    pub binary: Option<String>,
    /// The CUDA build (scripts/build-cuda-worker.sh) for the tasks that run GPU steps: a local file, uploaded
    /// by content hash like this binary, or `s3://…`. Without it GPU steps get `binary`, and a GPU step with
    /// `device = "auto"` fails on a GPU node, saying so.
    pub gpu_binary: Option<String>,
    /// Where uploaded binaries go, by content hash (default: `<store>/.dsmake/bin`).
    pub binary_dir: Option<String>,
    /// The cluster for steps that `steps` does not name (default `cpu`; GPU steps: `gpu`).
    pub default_cluster: Option<String>,
    /// Seconds between `runs/get` polls (default 10).
    pub poll_seconds: Option<f64>,
    /// The run's timeout in seconds (0: none).
    pub timeout_seconds: Option<u64>,
    /// Clusters by name; each task of the run gets a new cluster of its kind.
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterSection>,
    /// Step name → cluster name.
    #[serde(default)]
    pub steps: BTreeMap<String, String>,
}

/// A Databricks job cluster (`new_cluster` of a run task), as in the Jobs API.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub spark_version: String,
    pub node_type_id: String,
    pub driver_node_type_id: Option<String>,
    pub num_workers: Option<u32>,
    pub autoscale: Option<AutoScale>,
    /// SPOT, ON_DEMAND or SPOT_WITH_FALLBACK.
    pub availability: Option<String>,
    pub first_on_demand: Option<u32>,
    pub zone_id: Option<String>,
    pub instance_profile_arn: Option<String>,
    /// `s3://…` init scripts, run in order on every node.
    #[serde(default)]
    pub init_scripts: Vec<String>,
    /// The region of the init scripts' bucket.
    pub init_scripts_region: Option<String>,
    pub policy_id: Option<String>,
    #[serde(default)]
    pub spark_conf: BTreeMap<String, String>,
    /// Environment of the cluster's processes; secrets as `{{secrets/scope/key}}` references only.
    #[serde(default)]
    pub spark_env_vars: BTreeMap<String, String>,
    #[serde(default)]
    pub custom_tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AutoScale {
    pub min_workers: u32,
    pub max_workers: u32,
}

impl DatabricksSection {
    fn check(&self) -> Result<(), String> {
        if self.clusters.is_empty() {
            return Err("a databricks executor needs at least one [executor.clusters.NAME] table".into());
        }
        let default = self.default_cluster.as_deref().unwrap_or("cpu");
        if !self.clusters.contains_key(default) {
            return Err(format!(
                "default_cluster `{default}` is not one of the clusters ({})",
                self.clusters.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        for (step, cluster) in &self.steps {
            if !self.clusters.contains_key(cluster) {
                return Err(format!("[executor.steps] {step} = `{cluster}` names no cluster"));
            }
        }
        for (name, c) in &self.clusters {
            if c.num_workers.is_some() == c.autoscale.is_some() {
                return Err(format!("cluster `{name}` needs exactly one of `num_workers` and `autoscale`"));
            }
            if let Some(a) = &c.availability
                && !["SPOT", "ON_DEMAND", "SPOT_WITH_FALLBACK"].contains(&a.as_str())
            {
                return Err(format!(
                    "cluster `{name}`: availability `{a}` is not SPOT, ON_DEMAND or SPOT_WITH_FALLBACK"
                ));
            }
            if let Some(a) = &c.autoscale
                && a.max_workers <= a.min_workers
            {
                return Err(format!("cluster `{name}`: autoscale max_workers must be above min_workers"));
            }
        }
        Ok(())
    }
}

impl Remote {
    pub fn load(file: &Path) -> Result<Remote, Diagnostic> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Diagnostic::whole_file(file, format!("cannot read remote file: {e}")))?;
        let remote: Remote = toml_edit::de::from_str(&text).map_err(|e| {
            let message = e.message().trim_end().to_string();
            Diagnostic::at(file, &text, e.span(), format!("invalid remote file: {message}")).with_help(
                "a remote file has [store] with `url` (and `profile`, `endpoint`, `region`) and optionally \
                            [executor] with `kind` (\"local\", \"spark\" or \"databricks\") and that executor's \
                            settings (README.md, \"Run on Spark and Databricks\")",
            )
        })?;
        let checked = match &remote.executor {
            ExecutorSection::Databricks(d) => d.check(),
            ExecutorSection::Local(_) | ExecutorSection::Spark(_) => Ok(()),
        };
        checked.map_err(|message| {
            Diagnostic::whole_file(file, format!("invalid remote file: {message}"))
                .with_help("README.md, section \"Run on Spark and Databricks\", lists the executors' settings")
        })?;
        let mut remote = remote;
        remote.file = file.to_path_buf();
        Ok(remote)
    }
}

/// A path to a file, or a name looked up as `remotes/NAME.toml` here and in each parent folder.
pub fn find(name: &str) -> anyhow::Result<PathBuf> {
    crate::util::find_named_file("remotes", "remote", name)
}

impl Remote {
    /// A remote with no store or executor settings (for API calls made outside a build).
    pub fn empty() -> Remote {
        Remote {
            description: String::new(),
            store: StoreSection { url: String::new(), profile: None, endpoint: None, region: None },
            executor: ExecutorSection::default(),
            file: PathBuf::new(),
        }
    }

    /// A path written in the remote file, relative to the file's folder.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() || !path.contains('/') {
            return p.to_path_buf();
        }
        self.file.parent().unwrap_or(Path::new(".")).join(p)
    }

    /// Environment that workers need to reach the store the way this file says (never credentials).
    pub fn store_env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        if let Some(endpoint) = &self.store.endpoint {
            env.insert("AWS_ENDPOINT_URL".to_string(), endpoint.clone());
        }
        if let Some(region) = &self.store.region {
            env.insert("AWS_REGION".to_string(), region.clone());
        }
        env
    }
}

/// Puts this dsmake binary where remote workers can fetch it: `<dir>/<content hash>/dsmake`, uploaded only
/// when that object is not there yet. `dir` defaults to `<store>/.dsmake/bin`. Returns its `s3://` URI.
pub fn upload_binary(
    store: &dyn crate::store::Store,
    dir: Option<&str>,
    remote: &Remote,
    exe: &Path,
) -> anyhow::Result<String> {
    use anyhow::Context;
    let (target, base): (std::sync::Arc<dyn crate::store::Store>, String) = match dir {
        Some(dir) => (crate::store::open(dir, &remote.store.s3())?, dir.trim_end_matches('/').to_string()),
        None => (
            crate::store::open(&format!("{}/.dsmake/bin", store.url().trim_end_matches('/')), &remote.store.s3())?,
            format!("{}/.dsmake/bin", store.url().trim_end_matches('/')),
        ),
    };
    if !base.starts_with("s3://") {
        anyhow::bail!(
            "remote workers fetch dsmake from S3: the store (or binary_dir) must be an s3:// URL, not `{base}`"
        );
    }
    let hash = crate::util::hash_file(exe)?;
    let size = std::fs::metadata(exe)?.len();
    let rel = format!("{}/dsmake", &hash[..32]);
    let present = target.list(&hash[..32])?.iter().any(|m| m.path == rel && m.size == size);
    if !present {
        eprintln!("Uploading dsmake ({}) to {base}/{rel}", indicatif::HumanBytes(size));
        let scratch = tempfile::tempdir().context("cannot create a scratch folder")?;
        let copy = scratch.path().join("dsmake");
        std::fs::copy(exe, &copy).with_context(|| format!("cannot copy {}", exe.display()))?;
        target.publish(&copy, &rel)?;
    }
    Ok(format!("{base}/{rel}"))
}
