//! `dsmake remote login` (a ~/.databrickscfg profile, like `databricks configure`) and
//! `dsmake remote init --from-terraform DIR` (remotes/databricks.toml from `terraform output -json`); and
//! picking the executor of a `--remote` build.

use super::workspace::Workspace;
use super::{Output, UsageError};
use crate::exec::remote::Executor;
use crate::remote::ExecutorSection;
use crate::remote::databricks::{DatabricksExecutor, auth};
use crate::remote::spark::SparkExecutor;
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// Save a Databricks host and personal access token as a ~/.databrickscfg profile.
    Login(LoginArgs),
    /// Write a databricks remote file from Terraform outputs (terraform/workspace and terraform/resources).
    Init(InitArgs),
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The workspace URL (default: DATABRICKS_HOST).
    #[arg(long, env = "DATABRICKS_HOST")]
    host: Option<String>,
    /// The profile to write.
    #[arg(short = 'p', long, default_value = "DEFAULT")]
    profile: String,
    /// Do not check the token against the workspace before saving it.
    #[arg(long)]
    no_verify: bool,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// A Terraform folder (its `terraform output -json` is read) or a JSON file saved from it; repeatable
    /// (terraform/workspace, then terraform/resources).
    #[arg(long = "from-terraform", value_name = "DIR|FILE", required = true)]
    from_terraform: Vec<PathBuf>,
    /// The remote file to write.
    #[arg(long, default_value = "remotes/databricks.toml")]
    output: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    force: bool,
}

pub fn remote(command: RemoteCommand, out: Output) -> anyhow::Result<()> {
    match command {
        RemoteCommand::Login(args) => login(args, out),
        RemoteCommand::Init(args) => init(args, out),
    }
}

/// The executor of a `--remote` build; `None` for the local one.
pub fn executor(workspace: &Workspace, profile: Option<&str>) -> anyhow::Result<Option<Box<dyn Executor>>> {
    let Some(remote) = &workspace.remote else { return Ok(None) };
    let mut remote = remote.clone();
    // --store (or DSMAKE_STORE) replaced the remote's store: its endpoint and region go with it.
    if workspace.store.url().trim_end_matches('/') != remote.store.url.trim_end_matches('/') {
        remote.store.endpoint = None;
        remote.store.region = None;
    }
    Ok(match &remote.executor {
        ExecutorSection::Spark(settings) => Some(Box::new(SparkExecutor::new(&remote, settings)?)),
        ExecutorSection::Databricks(settings) => Some(Box::new(DatabricksExecutor::new(&remote, settings, profile)?)),
        ExecutorSection::Local(_) => None,
    })
}

fn read_token() -> anyhow::Result<String> {
    if let Ok(token) = std::env::var("DATABRICKS_TOKEN")
        && !token.trim().is_empty()
    {
        return Ok(token.trim().to_string());
    }
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    if terminal {
        eprint!("Personal access token (not shown): ");
        std::io::stderr().flush()?;
    }
    // Turn echo off while a person types the token.
    let saved = terminal.then(|| unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(0, &mut t) == 0).then(|| {
            let mut quiet = t;
            quiet.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &quiet);
            t
        })
    });
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(Some(t)) = saved {
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        eprintln!();
    }
    read.context("cannot read the token from standard input")?;
    let token = line.trim().to_string();
    if token.is_empty() {
        bail!("no token: set DATABRICKS_TOKEN or type it on standard input");
    }
    Ok(token)
}

fn login(args: LoginArgs, out: Output) -> anyhow::Result<()> {
    let host = args.host.ok_or_else(|| {
        UsageError("which workspace? pass --host https://….cloud.databricks.com (or set DATABRICKS_HOST)".into())
    })?;
    let token = read_token()?;
    let host = auth::normalise_host(&host);
    if !args.no_verify {
        let check = DatabricksExecutor::with_auth(auth::Auth {
            host: host.clone(),
            token: token.clone(),
            source: "the token given".into(),
        });
        check.call("GET", "2.1/jobs/runs/list?limit=1", None).context("the token was not saved")?;
    }
    let file = auth::write_profile(&args.profile, &host, &token)?;
    if !out.quiet {
        eprintln!("Saved profile {} for {host} in {}", args.profile, file.display());
    }
    Ok(())
}

/// Terraform outputs, `name → value`, from a folder (`terraform output -json`) or a saved JSON file.
fn terraform_outputs(source: &Path) -> anyhow::Result<serde_json::Map<String, Value>> {
    let text = if source.is_dir() {
        let output = std::process::Command::new("terraform")
            .arg(format!("-chdir={}", source.display()))
            .args(["output", "-json"])
            .output()
            .context("cannot run terraform (is it installed?)")?;
        if !output.status.success() {
            bail!(
                "`terraform output -json` failed in {}: {}",
                source.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8(output.stdout).context("terraform printed something that is not UTF-8")?
    } else {
        std::fs::read_to_string(source).with_context(|| format!("cannot read {}", source.display()))?
    };
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not the JSON of `terraform output -json`", source.display()))?;
    let Value::Object(map) = value else { bail!("{} is not a JSON object of outputs", source.display()) };
    // Each output is `{"value": …, "type": …, "sensitive": …}`.
    Ok(map.into_iter().map(|(k, v)| (k, v.get("value").cloned().unwrap_or(v))).collect())
}

fn q(s: &str) -> String {
    toml_edit::Value::from(s).to_string().trim().to_string()
}

fn init(args: InitArgs, out: Output) -> anyhow::Result<()> {
    let mut outputs = serde_json::Map::new();
    for source in &args.from_terraform {
        outputs.extend(terraform_outputs(source)?);
    }
    let get = |name: &str| outputs.get(name).and_then(Value::as_str).map(str::to_string).filter(|s| !s.is_empty());
    let need = |name: &str| {
        get(name).ok_or_else(|| {
            UsageError(format!(
                "the Terraform outputs have no `{name}` (found: {}); run `terraform apply` in terraform/workspace and terraform/resources first",
                outputs.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    };
    let host = need("databricks_host")?;
    let store = need("store_url")?;
    let profile_arn = need("instance_profile_arn")?;
    let region = get("region");
    let mut text = String::new();
    text.push_str("# Written by `dsmake remote init --from-terraform` from Terraform outputs; edit freely.\n");
    text.push_str("# `dsmake build PIPELINE --remote databricks -p PROFILE` runs a build here.\n");
    text.push_str(&format!(
        "description = {}\n\n[store]\nurl = {}\n",
        q(&format!("Databricks workspace {host}")),
        q(&store)
    ));
    if let Some(region) = &region {
        text.push_str(&format!("region = {}\n", q(region)));
    }
    text.push_str(&format!("\n[executor]\nkind = \"databricks\"\nhost = {}\ndefault_cluster = \"cpu\"\n", q(&host)));
    let env =
        get("hf_token_secret").map(|s| format!("spark_env_vars = {{ HF_TOKEN = {} }}\n", q(&s))).unwrap_or_default();
    let init_script = get("init_script").map(|s| format!("init_scripts = [{}]\n", q(&s))).unwrap_or_default();
    let cluster = |name: &str, version: &str, node: &str, workers: &str, policy: Option<String>, conf: &str| {
        let mut c = format!(
            "\n[executor.clusters.{name}]\nspark_version = {}\nnode_type_id = {}\n{workers}\navailability = \"SPOT_WITH_FALLBACK\"\nfirst_on_demand = 1\ninstance_profile_arn = {}\n",
            q(version),
            q(node),
            q(&profile_arn)
        );
        if let Some(p) = policy {
            c.push_str(&format!("policy_id = {}\n", q(&p)));
        }
        c.push_str(&init_script);
        c.push_str(&env);
        c.push_str(conf);
        c
    };
    text.push_str(&cluster(
        "cpu",
        &get("cpu_spark_version").unwrap_or_else(|| "15.4.x-scala2.12".into()),
        &get("cpu_node_type").unwrap_or_else(|| "r5d.2xlarge".into()),
        "autoscale = { min_workers = 2, max_workers = 10 }",
        get("cpu_policy_id"),
        "",
    ));
    text.push_str(&cluster(
        "gpu",
        &get("gpu_spark_version").unwrap_or_else(|| "15.4.x-gpu-ml-scala2.12".into()),
        &get("gpu_node_type").unwrap_or_else(|| "g5.4xlarge".into()),
        "autoscale = { min_workers = 1, max_workers = 4 }",
        get("gpu_policy_id"),
        "spark_conf = { \"spark.task.resource.gpu.amount\" = \"1\", \"spark.executor.resource.gpu.amount\" = \"1\" }\n",
    ));
    text.push_str(
        "\n# Which steps run on which cluster (GPU steps go to `gpu` without being named here).\n[executor.steps]\n",
    );
    if args.output.exists() && !args.force {
        return Err(UsageError(format!("{} exists: pass --force to replace it", args.output.display())).into());
    }
    if let Some(parent) = args.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.output, &text).with_context(|| format!("cannot write {}", args.output.display()))?;
    // What was written must load: the same checks as a build.
    crate::remote::Remote::load(&args.output)?;
    if !out.quiet {
        eprintln!("Wrote {} (store {store}, workspace {host})", args.output.display());
    }
    Ok(())
}
