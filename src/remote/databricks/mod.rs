//! The `databricks` executor: uploads the binary, the remote plan and the Spark driver to the store, submits
//! one run (`POST /api/2.1/jobs/runs/submit`: a task per cluster kind, chained with `depends_on`, each a
//! `spark_python_task` running the driver on its share of the plan), follows it with `runs/get`, mirrors
//! progress from the manifests that workers publish, and cancels it (`runs/cancel`) on Ctrl-C. The
//! submission carries an `idempotency_token` made from the plan: a retried submit never starts a second run.

pub mod auth;

use super::{DatabricksSection, Remote};
use crate::exec::remote::{Executor, RemotePlan, Reporter, TargetResult};
use crate::kind::{Cancel, Resource};
use crate::store::{META_DIR, ReadLimit, Store, manifest_path};
use anyhow::{Context, anyhow, bail};
use auth::Auth;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

pub struct DatabricksExecutor {
    remote: Remote,
    settings: DatabricksSection,
    auth: Auth,
    agent: ureq::Agent,
    poll: Duration,
}

/// An error answer from the API, or a transport failure.
#[derive(Debug)]
pub struct ApiError(pub String);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ApiError {}

/// The Jobs API client. Its one destination is the workspace the user configured, so the environment's proxy
/// settings apply (`HTTPS_PROXY`, `NO_PROXY`), as in the Databricks CLI and SDKs.
fn api_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(ureq::Proxy::try_from_env())
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

impl DatabricksExecutor {
    pub fn new(
        remote: &Remote,
        settings: &DatabricksSection,
        profile: Option<&str>,
    ) -> anyhow::Result<DatabricksExecutor> {
        let e = settings;
        let auth = auth::resolve(profile, e.profile.as_deref(), e.host.as_deref())?;
        let agent = api_agent();
        let poll = Duration::from_secs_f64(e.poll_seconds.unwrap_or(10.0).max(0.05));
        Ok(DatabricksExecutor { remote: remote.clone(), settings: settings.clone(), auth, agent, poll })
    }

    pub fn with_auth(auth: Auth) -> DatabricksExecutor {
        let agent = api_agent();
        DatabricksExecutor {
            remote: Remote::empty(),
            settings: DatabricksSection::default(),
            auth,
            agent,
            poll: Duration::from_secs(10),
        }
    }

    /// One API call; 429 and 5xx are retried a few times. Never logs the token.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}/api/{path}", self.auth.host);
        let mut attempt = 0;
        loop {
            let bearer = format!("Bearer {}", self.auth.token);
            let result = match body {
                Some(body) => self
                    .agent
                    .post(&url)
                    .header("Authorization", &bearer)
                    .header("Content-Type", "application/json")
                    .send(serde_json::to_vec(body)?.as_slice()),
                None => self.agent.get(&url).header("Authorization", &bearer).call(),
            };
            let mut response = match result {
                Ok(r) => r,
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(500 << attempt));
                    let _ = e;
                    continue;
                }
                Err(e) => return Err(ApiError(format!("cannot reach Databricks at {}: {e}", self.auth.host)).into()),
            };
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            if (status == 429 || status >= 500) && attempt < 3 {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(500 << attempt));
                continue;
            }
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let message = || {
                let code = value["error_code"].as_str().unwrap_or("");
                let msg =
                    value["message"].as_str().map(str::to_string).unwrap_or_else(|| text.chars().take(200).collect());
                if code.is_empty() { msg } else { format!("{code}: {msg}") }
            };
            return match status {
                200..=299 => Ok(value),
                401 | 403 => Err(ApiError(format!(
                    "Databricks at {} rejected the credentials from {} (HTTP {status}: {}): check the token, or run `dsmake remote login`",
                    self.auth.host,
                    self.auth.source,
                    message()
                ))
                .into()),
                _ => Err(ApiError(format!("Databricks answered HTTP {status} to {method} /api/{}: {}", path.split('?').next().unwrap_or(path), message())).into()),
            };
        }
    }

    fn cluster_for(&self, step: &str, resource: Resource) -> String {
        let e = &self.settings;
        if let Some(cluster) = e.steps.get(step) {
            return cluster.clone();
        }
        if resource == Resource::Gpu && e.clusters.contains_key("gpu") {
            return "gpu".to_string();
        }
        e.default_cluster.clone().unwrap_or_else(|| "cpu".to_string())
    }

    /// Assigns each job a task: one task per run of consecutive (wave, cluster) groups on the same cluster,
    /// chained in wave order. Returns (task key, cluster) in order.
    fn assign_tasks(&self, plan: &mut RemotePlan) -> Vec<(String, String)> {
        let mut tasks: Vec<(String, String)> = Vec::new();
        for wave in &mut plan.waves {
            let mut clusters: Vec<String> = wave.iter().map(|j| self.cluster_for(&j.step, j.resource)).collect();
            let mut order = clusters.clone();
            order.sort();
            order.dedup();
            // The cluster the previous task ran on goes first, so that it can take this wave's share too.
            if let Some((_, last)) = tasks.last()
                && let Some(pos) = order.iter().position(|c| c == last)
            {
                order.swap(0, pos);
            }
            for cluster in order {
                let key = match tasks.last() {
                    Some((key, last)) if *last == cluster => key.clone(),
                    _ => {
                        let key = format!("{cluster}-{}", tasks.len() + 1);
                        tasks.push((key.clone(), cluster.clone()));
                        key
                    }
                };
                for (job, c) in wave.iter_mut().zip(clusters.iter_mut()) {
                    if *c == cluster {
                        job.task = key.clone();
                    }
                }
            }
        }
        tasks
    }

    fn cluster_json(&self, name: &str, env: &BTreeMap<String, String>) -> anyhow::Result<Value> {
        let c = self.settings.clusters.get(name).ok_or_else(|| anyhow!("no cluster `{name}`"))?;
        let mut cluster = json!({ "spark_version": c.spark_version, "node_type_id": c.node_type_id });
        if let Some(d) = &c.driver_node_type_id {
            cluster["driver_node_type_id"] = json!(d);
        }
        match (&c.autoscale, c.num_workers) {
            (Some(a), _) => cluster["autoscale"] = json!({"min_workers": a.min_workers, "max_workers": a.max_workers}),
            (None, Some(n)) => cluster["num_workers"] = json!(n),
            (None, None) => {}
        }
        let mut aws = serde_json::Map::new();
        if let Some(a) = &c.availability {
            aws.insert("availability".into(), json!(a));
        }
        if let Some(n) = c.first_on_demand {
            aws.insert("first_on_demand".into(), json!(n));
        }
        if let Some(z) = &c.zone_id {
            aws.insert("zone_id".into(), json!(z));
        }
        if let Some(arn) = &c.instance_profile_arn {
            aws.insert("instance_profile_arn".into(), json!(arn));
        }
        if !aws.is_empty() {
            cluster["aws_attributes"] = Value::Object(aws);
        }
        if !c.init_scripts.is_empty() {
            let region = c.init_scripts_region.clone().or_else(|| self.remote.store.region.clone());
            cluster["init_scripts"] = c
                .init_scripts
                .iter()
                .map(|d| match &region {
                    Some(r) => json!({"s3": {"destination": d, "region": r}}),
                    None => json!({"s3": {"destination": d}}),
                })
                .collect();
        }
        if let Some(p) = &c.policy_id {
            cluster["policy_id"] = json!(p);
        }
        let mut conf = c.spark_conf.clone();
        conf.entry("spark.task.maxFailures".into()).or_insert_with(|| "4".into());
        cluster["spark_conf"] = json!(conf);
        let mut vars = c.spark_env_vars.clone();
        vars.extend(env.clone());
        if !vars.is_empty() {
            cluster["spark_env_vars"] = json!(vars);
        }
        let mut tags = c.custom_tags.clone();
        tags.entry("dsmake".into()).or_insert_with(|| "true".into());
        cluster["custom_tags"] = json!(tags);
        Ok(cluster)
    }

    /// Manifest versions of the plan's targets now, by target.
    fn manifest_versions(&self, plan: &RemotePlan, store: &dyn Store) -> HashMap<String, String> {
        let mut by_path: HashMap<String, String> = HashMap::new();
        let dirs: std::collections::BTreeSet<&str> = plan.jobs().map(|j| j.job.dir.as_str()).collect();
        for dir in dirs {
            if let Ok(listed) = store.list(&format!("{dir}/{META_DIR}")) {
                by_path.extend(listed.into_iter().map(|m| (m.path, m.version)));
            }
        }
        plan.jobs()
            .filter_map(|j| {
                by_path.get(&manifest_path(&j.job.dir, &j.job.shard)).map(|v| (j.target.clone(), v.clone()))
            })
            .collect()
    }
}

/// The same for every attempt at one submission (a request retried after a lost answer finds the run it
/// started), different for the next build: a run that failed is never "resubmitted" by its token.
fn idempotency_token(plan_digest: &str) -> String {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let nonce = NONCE.get_or_init(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("{}-{}", std::process::id(), now.as_nanos())
    });
    blake3::hash(format!("{plan_digest}/{nonce}").as_bytes()).to_hex().to_string()
}

fn terminal(life_cycle: &str) -> bool {
    matches!(life_cycle, "TERMINATED" | "SKIPPED" | "INTERNAL_ERROR")
}

impl Executor for DatabricksExecutor {
    fn describe(&self) -> String {
        format!("databricks ({})", self.auth.host)
    }

    fn run(
        &mut self,
        plan: &RemotePlan,
        store: &dyn Store,
        cancel: &Cancel,
        reporter: &Reporter,
    ) -> anyhow::Result<Vec<TargetResult>> {
        if !store.url().starts_with("s3://") {
            bail!("a databricks remote needs an s3:// store that the clusters can read, not `{}`", store.url());
        }
        let mut plan = plan.clone();
        let tasks = self.assign_tasks(&mut plan);
        let store_env = self.remote.store_env();
        plan.env.extend(store_env.clone());
        let digest = plan.digest()?;
        let base = store.url().trim_end_matches('/').to_string();
        let run_dir = format!(".dsmake/runs/{}", &digest[..16]);
        store.write(&format!("{run_dir}/plan.json"), &serde_json::to_vec(&plan)?)?;
        store.write(&format!("{run_dir}/spark_driver.py"), super::spark::DRIVER.as_bytes())?;
        let binary = match &self.settings.binary {
            Some(b) => b.clone(),
            None => {
                let exe = std::env::current_exe().context("cannot find this dsmake binary to upload")?;
                super::upload_binary(store, self.settings.binary_dir.as_deref(), &self.remote, &exe)?
            }
        };
        // Tasks that run a GPU step get the CUDA build, where the remote file names one.
        let gpu_binary = match &self.settings.gpu_binary {
            Some(b) if b.starts_with("s3://") => Some(b.clone()),
            Some(path) => {
                let file = self.remote.file.parent().unwrap_or(std::path::Path::new(".")).join(path);
                if !file.is_file() {
                    bail!(
                        "gpu_binary `{path}` ({}) is not a file: build it with scripts/build-cuda-worker.sh, or give \
                         an s3:// URL",
                        file.display()
                    );
                }
                Some(super::upload_binary(store, self.settings.binary_dir.as_deref(), &self.remote, &file)?)
            }
            None => None,
        };
        let gpu_tasks: std::collections::HashSet<&str> =
            plan.waves.iter().flatten().filter(|j| j.resource == Resource::Gpu).map(|j| j.task.as_str()).collect();
        let mut task_bodies = Vec::new();
        for (i, (key, cluster)) in tasks.iter().enumerate() {
            let binary = match &gpu_binary {
                Some(gpu) if gpu_tasks.contains(key.as_str()) => gpu.clone(),
                _ => binary.clone(),
            };
            let mut task = json!({
                "task_key": key,
                "new_cluster": self.cluster_json(cluster, &store_env)?,
                "spark_python_task": {
                    "python_file": format!("{base}/{run_dir}/spark_driver.py"),
                    "parameters": [
                        "--plan", format!("{base}/{run_dir}/plan.json"),
                        "--binary", binary,
                        "--task", key,
                        "--results", format!("{base}/{run_dir}/results-{key}.jsonl"),
                    ],
                },
            });
            if i > 0 {
                task["depends_on"] = json!([{ "task_key": tasks[i - 1].0 }]);
            }
            if let Some(t) = self.settings.timeout_seconds.filter(|t| *t > 0) {
                task["timeout_seconds"] = json!(t);
            }
            task_bodies.push(task);
        }
        let mut body = json!({
            "run_name": format!("dsmake {} ({} targets)", plan.pipeline, plan.len()),
            "tasks": task_bodies,
            "idempotency_token": idempotency_token(&digest),
        });
        if let Some(t) = self.settings.timeout_seconds.filter(|t| *t > 0) {
            body["timeout_seconds"] = json!(t);
        }

        let before = self.manifest_versions(&plan, store);
        let submitted = self.call("POST", "2.1/jobs/runs/submit", Some(&body))?;
        let run_id = submitted["run_id"].as_i64().context("runs/submit answered without a run_id")?;
        let mut run = self.call("GET", &format!("2.1/jobs/runs/get?run_id={run_id}"), None)?;
        let url = run["run_page_url"].as_str().unwrap_or("").to_string();
        reporter.note(&format!(
            "Databricks run {run_id} ({} tasks: {}): {url}",
            tasks.len(),
            tasks.iter().map(|t| t.0.as_str()).collect::<Vec<_>>().join(" → ")
        ));

        let mut mirrored: BTreeMap<String, TargetResult> = BTreeMap::new();
        let mut last_state = String::new();
        let mut cancelled_at: Option<Instant> = None;
        loop {
            let life = run["state"]["life_cycle_state"].as_str().unwrap_or("").to_string();
            if life != last_state {
                reporter.note(&format!("run {run_id}: {life}"));
                last_state = life.clone();
            }
            for (target, version) in self.manifest_versions(&plan, store) {
                if before.get(&target) != Some(&version) && !mirrored.contains_key(&target) {
                    let result = TargetResult {
                        target: target.clone(),
                        ok: true,
                        error: None,
                        attempts: 1,
                        seconds: 0.0,
                        bytes: 0,
                    };
                    reporter.report(&result);
                    mirrored.insert(target, result);
                }
            }
            if terminal(&life) {
                break;
            }
            if cancel.is_cancelled() && cancelled_at.is_none() {
                reporter.note(&format!("Cancelling run {run_id}…"));
                self.call("POST", "2.1/jobs/runs/cancel", Some(&json!({ "run_id": run_id })))?;
                cancelled_at = Some(Instant::now());
            }
            if cancelled_at.is_some_and(|t| t.elapsed() > Duration::from_secs(120)) {
                break;
            }
            std::thread::sleep(self.poll);
            run = self.call("GET", &format!("2.1/jobs/runs/get?run_id={run_id}"), None)?;
        }

        // What the driver says about each target (errors, bytes), where it got to write it.
        let mut results: BTreeMap<String, TargetResult> = BTreeMap::new();
        for (key, _) in &tasks {
            if let Ok(Some(bytes)) = store.read(&format!("{run_dir}/results-{key}.jsonl"), ReadLimit::RESULTS) {
                for line in String::from_utf8_lossy(&bytes).lines() {
                    if let Ok(r) = serde_json::from_str::<TargetResult>(line) {
                        results.insert(r.target.clone(), r);
                    }
                }
            }
        }
        for (target, r) in mirrored {
            results.entry(target).or_insert(r);
        }
        for r in results.values().filter(|r| !r.ok) {
            reporter.report(r);
        }
        let life = run["state"]["life_cycle_state"].as_str().unwrap_or("");
        let result_state = run["state"]["result_state"].as_str().unwrap_or("");
        if cancel.is_cancelled() || (life == "TERMINATED" && result_state == "SUCCESS") {
            return Ok(results.into_values().collect());
        }
        let failure = self.describe_failure(&run, run_id, &url);
        let built = results.values().filter(|r| r.ok).count();
        if results.values().any(|r| !r.ok) {
            reporter.note(&format!("error: {failure}"));
            return Ok(results.into_values().collect());
        }
        bail!(
            "{failure}\n{built} targets built before the failure are kept; run the same command again to build the rest"
        )
    }
}

impl DatabricksExecutor {
    /// `Databricks run N ended FAILED: task `cpu-1` failed: <its error>`.
    fn describe_failure(&self, run: &Value, run_id: i64, url: &str) -> String {
        let state = &run["state"];
        let life = state["life_cycle_state"].as_str().unwrap_or("?");
        let result = state["result_state"].as_str();
        let ended = match result {
            Some(r) if life == "TERMINATED" => r.to_string(),
            _ => life.to_string(),
        };
        let failed_task = run["tasks"].as_array().into_iter().flatten().find(|t| {
            let s = &t["state"];
            matches!(s["result_state"].as_str(), Some("FAILED" | "TIMEDOUT" | "CANCELED"))
                || s["life_cycle_state"].as_str() == Some("INTERNAL_ERROR")
        });
        let detail = match failed_task {
            Some(task) => {
                let key = task["task_key"].as_str().unwrap_or("?");
                let mut message = task["state"]["state_message"].as_str().unwrap_or("").to_string();
                if let Some(task_run) = task["run_id"].as_i64()
                    && let Ok(output) = self.call("GET", &format!("2.1/jobs/runs/get-output?run_id={task_run}"), None)
                    && let Some(error) = output["error"].as_str().filter(|e| !e.is_empty())
                {
                    message = error.to_string();
                }
                format!("task `{key}` failed: {message}")
            }
            None => state["state_message"].as_str().unwrap_or("no message").to_string(),
        };
        format!("Databricks run {run_id} ended {ended}: {detail} ({url})")
    }
}
