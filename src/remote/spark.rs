//! The `spark` executor: `spark-submit` runs the PySpark driver (`remotes/spark_driver.py`, built into this
//! binary so that driver and worker always match) on the remote plan; the driver runs one Spark task per
//! target, each calling `dsmake worker`, and prints a JSON line per result, which is read here as it comes.

use super::{Remote, ShipBinary, SparkSection};
use crate::exec::remote::{Executor, RemotePlan, Reporter, TargetResult};
use crate::kind::Cancel;
use crate::store::Store;
use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The driver, as shipped with this dsmake.
pub const DRIVER: &str = include_str!("../../remotes/spark_driver.py");

pub struct SparkExecutor {
    remote: Remote,
    settings: SparkSection,
    master: String,
    spark_submit: PathBuf,
    python: Option<PathBuf>,
    ship_via_store: bool,
}

impl SparkExecutor {
    pub fn new(remote: &Remote, settings: &SparkSection) -> anyhow::Result<SparkExecutor> {
        let e = settings;
        let python = e.python.as_deref().map(|p| remote.resolve(p));
        let spark_submit = match (&e.spark_submit, &python) {
            (Some(s), _) => remote.resolve(s),
            (None, Some(py)) if py.with_file_name("spark-submit").is_file() => py.with_file_name("spark-submit"),
            _ => PathBuf::from("spark-submit"),
        };
        Ok(SparkExecutor {
            remote: remote.clone(),
            settings: settings.clone(),
            master: master_with_retries(e.master.as_deref().unwrap_or("local[*]"), &e.conf),
            spark_submit,
            python,
            ship_via_store: e.ship_binary == ShipBinary::Store,
        })
    }
}

/// In local mode Spark takes the task retries from the master URL (`local[N,F]`), not from
/// spark.task.maxFailures: carry the setting over so that it means the same everywhere.
fn master_with_retries(master: &str, conf: &std::collections::BTreeMap<String, String>) -> String {
    let Some(failures) = conf.get("spark.task.maxFailures") else { return master.to_string() };
    match master.strip_prefix("local[").and_then(|r| r.strip_suffix(']')) {
        Some(threads) if !threads.contains(',') => format!("local[{threads},{failures}]"),
        _ => master.to_string(),
    }
}

/// Where run files go: plans, results and the Spark log.
fn run_dir() -> anyhow::Result<PathBuf> {
    let dir = crate::util::cache_dir().join("remote-runs");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

impl Executor for SparkExecutor {
    fn describe(&self) -> String {
        format!("spark ({})", self.master)
    }

    fn run(
        &mut self,
        plan: &RemotePlan,
        store: &dyn Store,
        cancel: &Cancel,
        reporter: &Reporter,
    ) -> anyhow::Result<Vec<TargetResult>> {
        let mut plan = plan.clone();
        plan.env.extend(self.remote.store_env());
        plan.env.extend(self.settings.env.clone());
        let dir = tempfile::Builder::new().prefix("spark-").tempdir_in(run_dir()?)?;
        let plan_file = dir.path().join("plan.json");
        std::fs::write(&plan_file, serde_json::to_vec(&plan)?)?;
        let driver = dir.path().join("spark_driver.py");
        std::fs::write(&driver, DRIVER)?;
        let log_file = dir.path().join("spark.log");
        let exe = std::env::current_exe().context("cannot find this dsmake binary to ship")?;

        let mut cmd = Command::new(&self.spark_submit);
        cmd.arg("--master").arg(&self.master).arg("--name").arg(format!("dsmake {}", plan.pipeline));
        let mut conf = self.settings.conf.clone();
        conf.entry("spark.ui.enabled".into()).or_insert_with(|| "false".into());
        // The environment travels in the plan file (private to this user's run folder), which the driver
        // reads and closes its tasks over, never as `--conf spark.executorEnv.*`: argv is public to `ps`.
        for (k, v) in &conf {
            cmd.arg("--conf").arg(format!("{k}={v}"));
        }
        let binary = if self.ship_via_store {
            super::upload_binary(store, None, &self.remote, &exe)?
        } else {
            cmd.arg("--files").arg(&exe);
            exe.file_name().and_then(|n| n.to_str()).unwrap_or("dsmake").to_string()
        };
        cmd.arg(&driver).arg("--plan").arg(&plan_file).arg("--binary").arg(&binary);
        if !self.ship_via_store {
            cmd.arg("--shipped");
        }
        cmd.arg("--results").arg(dir.path().join("results.jsonl"));
        if let Some(python) = &self.python {
            cmd.env("PYSPARK_PYTHON", python).env("PYSPARK_DRIVER_PYTHON", python);
        }
        let log = std::fs::File::create(&log_file)?;
        cmd.stdout(Stdio::piped()).stderr(log).stdin(Stdio::null()).process_group(0);
        let mut child =
            cmd.spawn().with_context(|| format!("cannot run {} (is Spark installed?)", self.spark_submit.display()))?;
        let stdout = child.stdout.take().context("no stdout from spark-submit")?;
        let (sender, receiver) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });

        let mut results = Vec::new();
        let mut stopped = false;
        let status = loop {
            match receiver.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(result) = parse_result(&line) {
                        reporter.report(&result);
                        results.push(result);
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if cancel.is_cancelled() && !stopped {
                stopped = true;
                // The whole group: spark-submit, its JVM and the Python workers with their dsmake workers.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
            }
            if let Some(status) = child.try_wait()? {
                break status;
            }
        };
        let _ = reader.join();
        for line in receiver.try_iter() {
            if let Some(result) = parse_result(&line) {
                reporter.report(&result);
                results.push(result);
            }
        }
        if !status.success() && !stopped && results.iter().all(|r| r.ok) {
            bail!(
                "spark-submit failed ({status}); the last lines of its log ({}):\n{}",
                log_file.display(),
                tail(&log_file, 25)
            );
        }
        if !status.success() || stopped {
            // Keep the log of a failed run for the user.
            let kept = run_dir()?.join(format!("spark-{}.log", std::process::id()));
            let _ = std::fs::copy(&log_file, &kept);
        }
        Ok(results)
    }
}

fn parse_result(line: &str) -> Option<TargetResult> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    if value.get("dsmake")?.as_str()? != "result" {
        return None;
    }
    serde_json::from_value(value).ok()
}

/// The last `n` lines of a file, without lines that are Spark's own progress bars.
pub fn tail(file: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("[Stage ")).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::master_with_retries;

    #[test]
    fn local_masters_get_task_retries() {
        let conf = [("spark.task.maxFailures".to_string(), "4".to_string())].into_iter().collect();
        assert_eq!(master_with_retries("local[2]", &conf), "local[2,4]");
        assert_eq!(master_with_retries("local[2,1]", &conf), "local[2,1]");
        assert_eq!(master_with_retries("spark://h:7077", &conf), "spark://h:7077");
        assert_eq!(master_with_retries("local[2]", &Default::default()), "local[2]");
    }
}
