//! `command`: a shell command per input shard, per group of shards, over all of them, or once. It runs in a
//! scratch folder; its declared outputs are published to the store only if it exits 0 and wrote them all.

mod shell;
mod template;

use crate::kind::{BuildCx, Built, Cancel, Cancelled, Inputs, Kind, Mapping, SettingError, ShardCx, Shards};
use anyhow::{Context, anyhow, bail};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use template::{Segment, expand, segments};

pub struct Command;

crate::setting_enum! {
    /// What one target of the step covers.
    pub enum Per {
        Shard = "shard",
        Group = "group",
        All = "all",
        Once = "once",
    }
}

crate::settings! {
    pub struct Settings {
        /// the shell command; {input}, {output}, {outputs}, {out_dir}, {shard}, {stem}, {step} and {pipeline}
        /// are filled in
        run: String,
        /// the files the command writes, relative to the step's folder; may use {shard}, {stem}, {step}
        outputs: Vec<String> = vec!["{shard}".into()],
        /// "shard" (one target per input shard), "group" (per `group_size` shards), "all" or "once"; default:
        /// "shard" with `from`, "once" without
        per: Option<Per>,
        /// input shards per target when per = "group"
        group_size: Option<i64>,
        /// environment variables for the command
        env: Option<BTreeMap<String, String>>,
        /// names of variables of dsmake's environment the command needs (secrets: their names enter the key,
        /// their values never); a target fails when one is unset
        pass_env: Vec<String> = vec![],
        /// the shell that runs `run` with -c; bash runs with -e -o pipefail, so a failing stage fails the target
        shell: String = "bash".into(),
        /// seconds before the command is killed and the target fails
        timeout: Option<f64>,
    }
}

const RUN_VARS: &[&str] = &["input", "inputs", "output", "outputs", "out_dir", "shard", "stem", "step", "pipeline"];
const OUTPUT_VARS: &[&str] = &["shard", "stem", "step", "pipeline"];
/// Lines of stderr shown when a command fails.
const STDERR_TAIL_LINES: usize = 20;

fn mapping(s: &Settings, has_inputs: bool) -> Result<Mapping, SettingError> {
    let per = s.per.unwrap_or(if has_inputs { Per::Shard } else { Per::Once });
    let needs_inputs = |m| {
        if has_inputs {
            Ok(m)
        } else {
            Err(SettingError::new("per", format!("per = \"{per}\" needs `from`")).help("or set per = \"once\""))
        }
    };
    match per {
        Per::Shard => needs_inputs(Mapping::OneToOne),
        Per::All => needs_inputs(Mapping::All),
        Per::Group => match s.group_size {
            Some(k) if k > 0 => needs_inputs(Mapping::Group(k as usize)),
            Some(k) => {
                Err(SettingError::new("group_size", format!("`group_size` must be a positive integer, found {k}")))
            }
            None => Err(SettingError::new("per", "per = \"group\" needs `group_size` (a positive integer)")
                .help("add e.g. `group_size = 2`: the number of input shards per target")),
        },
        Per::Once if has_inputs => {
            Err(SettingError::new("per", "per = \"once\" reads no input, but the step has `from`")
                .help("use per = \"all\" for one target over every input shard"))
        }
        Per::Once => Ok(Mapping::Once),
    }
}

/// Expands `template` with placeholders `known` only; an unknown one is reported with a hint: why it is not
/// available here, or the known placeholder it is a typo of.
fn check_placeholders(key: &str, template: &str, known: &[&str]) -> Result<(), SettingError> {
    let unknown = std::cell::RefCell::new(String::new());
    let lookup = |name: &str| {
        if known.contains(&name) {
            Some("x".to_string())
        } else {
            *unknown.borrow_mut() = name.to_string();
            None
        }
    };
    expand(template, &lookup).map(drop).map_err(|message| {
        let name = unknown.borrow();
        let listed = || known.iter().map(|v| format!("{{{v}}}")).collect::<Vec<_>>().join(", ");
        let help = if RUN_VARS.contains(&name.as_str()) && key == "run" {
            format!("a step without `from` has no {{{name}}}")
        } else if RUN_VARS.contains(&name.as_str()) {
            format!("`{key}` may use only {}", listed())
        } else if let Some(best) = crate::util::suggest::closest(&name, known.iter().copied()) {
            format!("did you mean `{{{best}}}`?")
        } else {
            format!("expected one of {}; write {{{{{name}}}}} for a literal {{{name}}}", listed())
        };
        SettingError::new(key, message).help(help)
    })
}

/// The quoting context of each placeholder of `run`; a placeholder that cannot be passed safely, or any
/// placeholder under a shell that is not POSIX sh, is an error that says what to write instead.
fn script_contexts(s: &Settings) -> Result<Vec<shell::Context>, SettingError> {
    let parts = segments(&s.run);
    let uses = parts.iter().any(|p| matches!(p, Segment::Var(_)));
    if uses && !shell::is_posix(&s.shell) {
        return Err(SettingError::new(
            "run",
            format!("dsmake places {{…}} values safely only for POSIX shells (bash, sh, dash, ksh, zsh), not `{}`", s.shell),
        )
        .help("read the values from the environment instead: DSMAKE_INPUT_1…DSMAKE_INPUT_COUNT, DSMAKE_OUTPUT, DSMAKE_SHARD, …"));
    }
    shell::contexts(&parts).map_err(|message| {
        SettingError::new("run", message)
            .help("write the placeholder as a word of its own, e.g. `cat {input}`, or inside \"…\"")
    })
}

/// A shard id is a name, not a path, so a leading `-` would reach the command as an option (`tar`'s
/// `--to-command=…` runs code): refused at plan time where `run` uses `{shard}` or `{stem}`.
fn refuse_option_like(s: &Settings, shards: &Shards) -> anyhow::Result<()> {
    let Shards::Known(specs) = shards else { return Ok(()) };
    let parts = segments(&s.run);
    for name in ["shard", "stem"] {
        if !parts.contains(&Segment::Var(name)) {
            continue;
        }
        for spec in specs {
            let value = if name == "shard" { spec.id.as_str() } else { stem(&spec.id) };
            if value.starts_with('-') {
                bail!(
                    "shard `{}` gives {{{name}}} = `{value}`, which starts with `-` and could be read as an option by \
                     the command in `run`; rename the input file, or use {{input}} (an absolute path) instead",
                    spec.id
                );
            }
        }
    }
    Ok(())
}

fn stem(shard: &str) -> &str {
    let name = shard.rsplit('/').next().unwrap_or(shard);
    name.split('.').next().filter(|s| !s.is_empty()).unwrap_or(name)
}

fn output_names(s: &Settings, shard: &str, step: &str, pipeline: &str) -> Result<Vec<String>, String> {
    let vars = |name: &str| match name {
        "shard" => Some(shard.to_string()),
        "stem" => Some(stem(shard).to_string()),
        "step" => Some(step.to_string()),
        "pipeline" => Some(pipeline.to_string()),
        _ => None,
    };
    let mut names = Vec::with_capacity(s.outputs.len());
    for template in &s.outputs {
        let name = expand(template, &vars)?;
        let bad = name.is_empty()
            || name.starts_with('/')
            || name.starts_with(crate::kind::META_DIR)
            || name.split('/').any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with(".dsmake-tmp-"));
        if bad {
            return Err(format!("output `{name}` must be a plain relative path in the step's folder"));
        }
        if names.contains(&name) {
            return Err(format!("output `{name}` is declared twice"));
        }
        names.push(name);
    }
    Ok(names)
}

impl Kind for Command {
    type Settings = Settings;
    const NAME: &'static str = "command";
    const VERSION: u32 = 1;
    const ABOUT: &'static str = "a shell command per input shard, per group of shards, over all of them, or once";
    const INPUTS: Inputs = Inputs::Optional;

    fn check(&self, s: &Settings, has_inputs: bool) -> Result<(), SettingError> {
        mapping(s, has_inputs)?;
        let run_vars: Vec<&str> =
            RUN_VARS.iter().copied().filter(|v| has_inputs || !matches!(*v, "input" | "inputs")).collect();
        check_placeholders("run", &s.run, &run_vars)?;
        script_contexts(s)?;
        if s.outputs.is_empty() {
            return Err(SettingError::new("outputs", "`outputs` is empty").help("declare the files the command writes"));
        }
        for template in &s.outputs {
            check_placeholders("outputs", template, OUTPUT_VARS)?;
        }
        output_names(s, "x", "x", "x").map_err(|e| SettingError::new("outputs", e))?;
        // `env` values enter keys and manifests; a secret must come from the environment instead.
        if let Some(name) = s.env.iter().flatten().map(|(k, _)| k).find(|k| crate::util::secret::looks_secret(k)) {
            return Err(SettingError::new(
                "env",
                format!("env.{name} looks like a secret: its value would be written into every manifest"),
            )
            .help(format!("export {name} where dsmake runs and set pass_env = [\"{name}\"]")));
        }
        if let Some(bad) = s.pass_env.iter().find(|n| n.is_empty() || n.contains(['=', '\0'])) {
            return Err(SettingError::new("pass_env", format!("`{bad}` is not an environment variable name")));
        }
        if s.timeout.is_some_and(|t| t <= 0.0) {
            return Err(SettingError::new("timeout", "`timeout` must be positive (seconds)"));
        }
        Ok(())
    }

    fn shards(&self, s: &Settings, cx: &ShardCx) -> anyhow::Result<Shards> {
        let mapping = mapping(s, !cx.inputs.is_empty()).map_err(|e| anyhow!(e.message))?;
        let shards = mapping.shards(&cx.inputs).map_err(|e| anyhow!(e))?;
        refuse_option_like(s, &shards)?;
        Ok(shards)
    }

    fn build(&self, s: &Settings, cx: &BuildCx) -> anyhow::Result<Built> {
        let outputs = output_names(s, cx.shard, cx.step, cx.pipeline).map_err(|e| anyhow!(e))?;
        for name in &outputs {
            if let Some(parent) = cx.out_dir.join(name).parent() {
                std::fs::create_dir_all(parent)?;
            }
        }
        // Values go to the shell in the environment, never spliced into the script (see `shell`).
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).into_os_string();
        let inputs: Vec<OsString> = cx.inputs.iter().flat_map(|i| i.files.iter()).map(|p| absolute(p)).collect();
        let output_paths: Vec<_> = outputs.iter().map(|o| cx.out_dir.join(o)).collect();
        let outputs_os: Vec<OsString> = output_paths.iter().map(|p| absolute(p)).collect();
        let contexts = script_contexts(s).map_err(|e| anyhow!("{}", e.message))?;
        let mut env: Vec<(String, OsString)> = Vec::new();
        let mut list = |prefix: &str, values: &[OsString]| {
            let names: Vec<String> = (1..=values.len()).map(|n| format!("{prefix}_{n}")).collect();
            env.push((format!("{prefix}_COUNT"), values.len().to_string().into()));
            env.extend(names.iter().cloned().zip(values.iter().cloned()));
            names
        };
        let input_vars = list("DSMAKE_INPUT", &inputs);
        let output_vars = list("DSMAKE_OUTPUT", &outputs_os);
        let scalars: [(&str, OsString); 6] = [
            ("DSMAKE_OUTPUT", outputs_os.first().cloned().unwrap_or_default()),
            ("DSMAKE_OUT_DIR", absolute(cx.out_dir)),
            ("DSMAKE_SHARD", cx.shard.into()),
            ("DSMAKE_STEM", stem(cx.shard).into()),
            ("DSMAKE_STEP", cx.step.into()),
            ("DSMAKE_PIPELINE", cx.pipeline.into()),
        ];
        env.extend(scalars.into_iter().map(|(k, v)| (k.to_string(), v)));
        let vars_of = |name: &str| -> Vec<String> {
            match name {
                "input" | "inputs" => input_vars.clone(),
                "outputs" => output_vars.clone(),
                "output" => output_vars.iter().take(1).cloned().collect(),
                other => vec![format!("DSMAKE_{}", other.to_ascii_uppercase())],
            }
        };
        let mut script = String::with_capacity(s.run.len());
        let mut contexts = contexts.into_iter();
        for segment in segments(&s.run) {
            match segment {
                Segment::Text(text) => script.push_str(&text),
                Segment::Var(name) => {
                    let context = contexts.next().ok_or_else(|| anyhow!("bug: a placeholder without a context"))?;
                    script.push_str(&shell::reference(&vars_of(name), context));
                }
            }
        }

        // The command inherits dsmake's environment; this only makes a missing secret a clear error.
        if let Some(name) = s.pass_env.iter().find(|n| std::env::var_os(n).is_none()) {
            bail!("pass_env: {name} is not set in dsmake's environment");
        }
        let stdout_log = cx.work_dir.join(".dsmake-stdout.log");
        let stderr_log = cx.work_dir.join(".dsmake-stderr.log");
        let mut command = std::process::Command::new(&s.shell);
        if Path::new(&s.shell).file_name().is_some_and(|n| n == "bash") {
            command.args(["-e", "-o", "pipefail"]);
        }
        command
            .arg("-c")
            .arg(&script)
            .current_dir(cx.work_dir)
            .envs(s.env.iter().flatten())
            .env("DSMAKE_TARGET", cx.target)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_log)?)
            .stderr(File::create(&stderr_log)?)
            // Its own process group, so that an interrupted build can stop it and everything it started.
            .process_group(0);
        let mut child = command.spawn().with_context(|| format!("cannot start `{}`", s.shell))?;
        let timeout = s.timeout.map(Duration::from_secs_f64);
        let status = wait(&mut child, cx.cancel, timeout)?;
        let tail = || stderr_tail(&stderr_log);
        match status {
            Waited::Cancelled => return Err(Cancelled.into()),
            Waited::TimedOut(after) => bail!("command timed out after {:.1}s{}", after.as_secs_f64(), tail()),
            Waited::Exited(status) if !status.success() => {
                bail!("command {}{}", describe(status), tail())
            }
            Waited::Exited(_) => {}
        }
        for (name, path) in outputs.iter().zip(&output_paths) {
            if !path.is_file() {
                bail!("the command exited 0 but did not write its declared output `{name}`{}", tail());
            }
        }
        Ok(Built { outputs, ..Default::default() })
    }
}

enum Waited {
    Exited(ExitStatus),
    Cancelled,
    TimedOut(Duration),
}

fn wait(child: &mut std::process::Child, cancel: &Cancel, timeout: Option<Duration>) -> anyhow::Result<Waited> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Waited::Exited(status));
        }
        let timed_out = timeout.is_some_and(|t| started.elapsed() >= t);
        if cancel.is_cancelled() || timed_out {
            // SAFETY: kill(2) on the child's own process group; no memory is touched.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Ok(if timed_out { Waited::TimedOut(started.elapsed()) } else { Waited::Cancelled });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(141), _) => "exited with status 141 (SIGPIPE: a stage of a pipeline was still writing when a \
                           later one stopped reading; bash runs with -o pipefail)"
            .to_string(),
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "failed".to_string(),
    }
}

fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return " (no stderr)".to_string();
    }
    let from = lines.len().saturating_sub(STDERR_TAIL_LINES);
    let skipped = if from > 0 { format!("  … {from} earlier lines\n") } else { String::new() };
    format!("\nstderr:\n{skipped}{}", lines[from..].iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::DynKind;
    use crate::kind::settings::Settings as _;
    use serde_json::{Value, json};

    fn settings(value: &Value) -> Result<Settings, SettingError> {
        Settings::from_effective(value.as_object().unwrap())
    }

    fn with(extra: Value) -> Value {
        let mut base = json!({"run": "cat {input} > {output}", "outputs": ["{shard}"], "per": null,
            "group_size": null, "env": null, "pass_env": [], "shell": "bash", "timeout": null});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    #[test]
    fn per_defaults_follow_inputs() {
        let s = settings(&with(json!({}))).unwrap();
        assert_eq!(mapping(&s, true).unwrap(), Mapping::OneToOne);
        assert_eq!(mapping(&s, false).unwrap(), Mapping::Once);
    }

    #[test]
    fn checks_templates_and_combinations() {
        let cmd: &dyn DynKind = &Command;
        assert_eq!(cmd.check(&with(json!({})), false).unwrap_err().key, "run");
        let e = cmd.check(&with(json!({"per": "group"})), true).unwrap_err();
        assert_eq!(e.message, "per = \"group\" needs `group_size` (a positive integer)");
        let e = cmd.check(&with(json!({"outputs": ["{shrd}.txt"]})), true).unwrap_err();
        assert_eq!((e.key.as_str(), e.message.as_str()), ("outputs", "unknown placeholder `{shrd}`"));
        let e = cmd.check(&with(json!({"outputs": ["../x"]})), true).unwrap_err();
        assert_eq!(e.key, "outputs");
        let e = cmd.check(&with(json!({"run": "echo > {ouput}"})), false).unwrap_err();
        assert_eq!(e.help.as_deref(), Some("did you mean `{output}`?"));
        let e = cmd.check(&with(json!({"per": "group", "group_size": -1})), true).unwrap_err();
        assert_eq!(e.key, "group_size");
        assert!(cmd.check(&with(json!({"per": "group", "group_size": 2})), true).is_ok());
        let e = cmd.check(&with(json!({"env": {"HF_TOKEN": "x"}})), true).unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.help.as_deref()),
            ("env", Some("export HF_TOKEN where dsmake runs and set pass_env = [\"HF_TOKEN\"]"))
        );
        assert!(cmd.check(&with(json!({"env": {"LANG": "C"}, "pass_env": ["HF_TOKEN"]})), true).is_ok());
    }

    #[test]
    fn refuses_placeholders_it_cannot_pass_safely() {
        let cmd: &dyn DynKind = &Command;
        let e = cmd.check(&with(json!({"run": "echo $(( {shard} + 1 )) > {output}"})), true).unwrap_err();
        assert_eq!(e.key, "run");
        assert!(e.message.contains("`{shard}` is inside arithmetic"), "{}", e.message);
        assert!(e.help.unwrap().contains("a word of its own"));
        let e = cmd.check(&with(json!({"run": "cat <<'EOF' > {output}\n{input}\nEOF"})), true).unwrap_err();
        assert!(e.message.contains("`{input}` is in a heredoc with a quoted delimiter"), "{}", e.message);
        let e = cmd.check(&with(json!({"shell": "fish"})), true).unwrap_err();
        assert!(e.message.contains("not `fish`") && e.help.unwrap().contains("DSMAKE_INPUT_1"));
        assert!(cmd.check(&with(json!({"shell": "python3", "run": "print(1)"})), false).is_ok());
        assert!(cmd.check(&with(json!({"run": "cat \"{input}\" > \"{output}\""})), true).is_ok());
        assert!(cmd.check(&with(json!({"shell": "/bin/sh"})), true).is_ok());
    }

    #[test]
    fn refuses_shard_ids_that_look_like_options() {
        use crate::kind::ShardSpec;
        let spec = |id: &str| ShardSpec { id: id.into(), coords: Value::Null, inputs: vec![], source: None };
        let shards = Shards::Known(vec![spec("a.txt"), spec("sub/-rf.txt")]);
        let s = settings(&with(json!({"run": "cp {input} {output}"}))).unwrap();
        assert!(refuse_option_like(&s, &shards).is_ok());
        let s = settings(&with(json!({"run": "touch {stem}.seen; cp {input} {output}"}))).unwrap();
        let e = refuse_option_like(&s, &shards).unwrap_err().to_string();
        assert!(e.contains("shard `sub/-rf.txt` gives {stem} = `-rf`"), "{e}");
    }

    #[test]
    fn stems_drop_folders_and_extensions() {
        assert_eq!(stem("sub/a.tar.gz"), "a");
        assert_eq!(stem("00003"), "00003");
    }
}
