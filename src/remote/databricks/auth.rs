//! Databricks authentication the way the Databricks CLI does it: a `~/.databrickscfg` profile (`-p`), or
//! `DATABRICKS_HOST` and `DATABRICKS_TOKEN`. `DATABRICKS_CONFIG_FILE` moves the file. Tokens are never
//! printed: `Debug` shows them redacted.

use anyhow::{Context, bail};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Clone)]
pub struct Auth {
    /// `https://…`, without a trailing `/`.
    pub host: String,
    pub token: String,
    /// Where they came from, for messages: `DATABRICKS_HOST/DATABRICKS_TOKEN` or `profile X in FILE`.
    pub source: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("host", &self.host)
            .field("token", &"<redacted>")
            .field("source", &self.source)
            .finish()
    }
}

/// The Databricks CLI's config file.
pub fn config_file() -> PathBuf {
    if let Some(file) = std::env::var_os("DATABRICKS_CONFIG_FILE") {
        return PathBuf::from(file);
    }
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".databrickscfg")
}

pub fn normalise_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('/');
    if host.contains("://") { host.to_string() } else { format!("https://{host}") }
}

/// `[profile]` sections with their `key = value` settings.
pub fn parse_config(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut profiles: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_string();
            profiles.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(profile), Some((k, v))) = (&current, line.split_once('=')) {
            profiles.entry(profile.clone()).or_default().insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    profiles
}

/// `-p` wins; then `DATABRICKS_HOST` + `DATABRICKS_TOKEN`; then the remote file's profile, or `DEFAULT`.
pub fn resolve(profile: Option<&str>, remote_profile: Option<&str>, remote_host: Option<&str>) -> anyhow::Result<Auth> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if profile.is_none()
        && let (Some(host), Some(token)) =
            (env("DATABRICKS_HOST").or(remote_host.map(str::to_string)), env("DATABRICKS_TOKEN"))
    {
        return Ok(Auth { host: normalise_host(&host), token, source: "DATABRICKS_HOST/DATABRICKS_TOKEN".into() });
    }
    let file = config_file();
    let (name, explicit) = match (profile, remote_profile) {
        (Some(p), _) => (p.to_string(), true),
        (None, Some(p)) => (p.to_string(), true),
        (None, None) => ("DEFAULT".to_string(), false),
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if explicit {
                bail!(
                    "Databricks profile `{name}` not found: there is no {} (run `dsmake remote login --host https://… -p {name}`)",
                    file.display()
                );
            }
            bail!(
                "no Databricks credentials: set DATABRICKS_HOST and DATABRICKS_TOKEN, or run `dsmake remote login --host https://…` (writes a profile to {})",
                file.display()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let profiles = parse_config(&text);
    let Some(settings) = profiles.get(&name) else {
        let known: Vec<&str> = profiles.keys().map(String::as_str).collect();
        let hint = crate::util::suggest::help_for(&name, "profile", &known);
        bail!(
            "Databricks profile `{name}` not found in {} ({hint}); run `dsmake remote login --host https://… -p {name}` to add it",
            file.display()
        );
    };
    let source = format!("profile {name} in {}", file.display());
    let host = settings
        .get("host")
        .cloned()
        .or(remote_host.map(str::to_string))
        .with_context(|| format!("{source} has no `host`"))?;
    let token = settings.get("token").cloned().with_context(|| {
        format!("{source} has no `token` (dsmake uses personal access tokens: `dsmake remote login` writes one)")
    })?;
    Ok(Auth { host: normalise_host(&host), token, source })
}

/// Writes (or replaces) a profile in the config file, keeping the others; the file is readable by its owner only.
pub fn write_profile(name: &str, host: &str, token: &str) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file = config_file();
    let old = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let mut out = String::new();
    let mut skipping = false;
    for line in old.lines() {
        let trimmed = line.trim();
        if let Some(section) = trimmed.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            skipping = section.trim() == name;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(&format!("[{name}]\nhost  = {}\ntoken = {token}\n", normalise_host(host)));
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = file.with_extension("dsmake-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(out.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &file).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_profiles_like_the_cli() {
        let p = parse_config("; c\n[DEFAULT]\nhost = https://a\n\n[dev]\nhost=b.cloud.databricks.com\ntoken = dapi1\n");
        assert_eq!(p["DEFAULT"]["host"], "https://a");
        assert_eq!(p["dev"]["token"], "dapi1");
        assert_eq!(normalise_host("b.cloud.databricks.com/"), "https://b.cloud.databricks.com");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let a = Auth { host: "h".into(), token: "dapi-secret".into(), source: "s".into() };
        assert!(!format!("{a:?}").contains("dapi-secret"));
    }
}
