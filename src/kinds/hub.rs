//! A small client for the Hugging Face Hub's API, for datasets (`hf-dataset`) and models (`clip-embed`'s
//! weights): revision → commit, recursive tree listings with LFS oids, and range-resumable downloads of one
//! file.
//!
//! HTTP client: `ureq` 3 (rustls). The worker builds a target synchronously on its own thread, so a
//! blocking client fits it without a runtime inside the kind; ureq is small, speaks rustls (no OpenSSL on
//! workers), exposes timeouts per phase, bounded bodies and redirect control, and lets img2dataset plug in
//! its own resolver (DNS cache and destination checks). reqwest's blocking client would start a tokio
//! runtime per client and pull in hyper for the same requests.

use crate::retry::{Budget, Transient};
use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Redirects one request may follow: the Hub sends LFS downloads to its CDN in one, a renamed repo in another.
const MAX_REDIRECTS: usize = 10;

/// How the Hub is reached: endpoint and token from the environment, as `huggingface_hub` reads them.
#[derive(Clone)]
pub struct Hub {
    pub endpoint: String,
    /// The endpoint's scheme, host and port: the only place the token is sent.
    origin: url::Origin,
    token: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Hub").field("endpoint", &self.endpoint).field("token", &self.token.is_some()).finish()
    }
}

/// `HF_HUB_OFFLINE` as huggingface_hub reads it.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HubFile {
    pub path: String,
    pub size: u64,
    /// sha256 of the content (the LFS oid), or the git blob id for files not in LFS.
    pub oid: String,
    pub lfs: bool,
    /// The last commit that changed this file, where the listing says it.
    pub last_commit: Option<String>,
}

/// What a Hub repository holds: its API paths and how errors name it differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoKind {
    Dataset,
    Model,
}

impl RepoKind {
    fn noun(self) -> &'static str {
        match self {
            RepoKind::Dataset => "dataset",
            RepoKind::Model => "model",
        }
    }

    /// The setting that names the repo, for "check `…`".
    fn setting(self) -> &'static str {
        match self {
            RepoKind::Dataset => "repo",
            RepoKind::Model => "model",
        }
    }
}

/// A repository on the Hub: `dataset `laion/relaion-pop``, `model `openai/clip-vit-large-patch14``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub kind: RepoKind,
    pub id: String,
}

impl Repo {
    pub fn dataset(id: &str) -> Repo {
        Repo { kind: RepoKind::Dataset, id: id.to_string() }
    }

    pub fn model(id: &str) -> Repo {
        Repo { kind: RepoKind::Model, id: id.to_string() }
    }

    /// `api/datasets/ORG/NAME` or `api/models/ORG/NAME`.
    fn api_path(&self) -> String {
        match self.kind {
            RepoKind::Dataset => format!("api/datasets/{}", self.id),
            RepoKind::Model => format!("api/models/{}", self.id),
        }
    }

    /// Where files are downloaded from: `datasets/ORG/NAME/resolve/…`, or `ORG/NAME/resolve/…` for a model.
    fn web_path(&self) -> String {
        match self.kind {
            RepoKind::Dataset => format!("datasets/{}", self.id),
            RepoKind::Model => self.id.clone(),
        }
    }
}

impl std::fmt::Display for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`", self.kind.noun(), self.id)
    }
}

#[derive(Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    oid: String,
    lfs: Option<Lfs>,
    #[serde(rename = "lastCommit")]
    last_commit: Option<LastCommit>,
}

#[derive(Deserialize)]
struct Lfs {
    oid: String,
    size: u64,
}

#[derive(Deserialize)]
struct LastCommit {
    id: String,
}

/// What went wrong talking to the Hub, in words that say which of token, repo or revision to fix.
fn explain(status: u16, repo: &Repo, revision: Option<&str>, has_token: bool, error_code: Option<&str>) -> String {
    let noun = repo.kind.noun();
    let rev = revision.map(|r| format!(" at revision `{r}`")).unwrap_or_default();
    match (status, error_code) {
        (401, _) if has_token => format!(
            "the Hub refused HF_TOKEN for {repo} (401): the token is invalid or expired; create a new one \
             at https://huggingface.co/settings/tokens"
        ),
        (401, _) => format!(
            "{repo} needs a token (401) or does not exist: it is gated or private and HF_TOKEN is not \
             set; set HF_TOKEN, or check the repo name"
        ),
        (403, _) => format!(
            "HF_TOKEN has no access to {repo} (403): accept the {noun}'s conditions on its Hub page with \
             this account, or use a token with read access"
        ),
        (404, Some("RevisionNotFound")) | (404, Some("EntryNotFound")) if revision.is_some() => {
            format!("{repo} has no revision `{}` (404): check `revision`", revision.unwrap_or_default())
        }
        (404, Some("RepoNotFound")) => {
            format!(
                "there is no {noun} `{}` on the Hub (404): check `{}` (the form is owner/name)",
                repo.id,
                repo.kind.setting()
            )
        }
        (404, _) => format!("not found on the Hub (404): {repo}{rev}"),
        (429, _) => format!("the Hub is rate-limiting requests for {repo} (429)"),
        (s, _) => format!("the Hub answered HTTP {s} for {repo}{rev}"),
    }
}

fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// How a request is named in errors: its URL, and where a redirect took it (without the query, which holds the
/// CDN's signature).
fn hop(url: &str, at: &url::Url, redirects: usize) -> String {
    if redirects == 0 {
        return format!("GET {url}");
    }
    format!("GET {url} (redirected to {}{})", at.origin().ascii_serialization(), at.path())
}

/// The next page that a listing page names in its Link headers (one or several), or None on the last page.
fn next_page(response: &ureq::http::Response<ureq::Body>, page: &url::Url) -> anyhow::Result<Option<url::Url>> {
    let mut values = Vec::new();
    for value in response.headers().get_all("Link") {
        values.push(value.to_str().map_err(|_| anyhow!("GET {page}: the Hub's Link header is not ASCII text"))?);
    }
    let header = values.join(", ");
    next_link(&header, page).map_err(|e| {
        anyhow!("GET {page}: cannot read the Hub's Link header `{header}` ({e}), so the listing cannot be paged")
    })
}

/// Transport errors (no answer, reset, timeout) are worth a retry; the caller decides.
fn transport(e: ureq::Error, what: &str) -> anyhow::Error {
    anyhow::Error::new(Transient(format!("{what}: {e}")))
}

impl Hub {
    pub fn from_env() -> anyhow::Result<Hub> {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            bail!("HF_ENDPOINT `{endpoint}` is not an http(s) URL");
        }
        let origin = url::Url::parse(&endpoint)
            .map_err(|e| anyhow!("HF_ENDPOINT `{endpoint}` is not a URL ({e}): set it to the Hub's address"))?
            .origin();
        let token = std::env::var("HF_TOKEN")
            .or_else(|_| std::env::var("HUGGING_FACE_HUB_TOKEN"))
            .ok()
            .filter(|t| !t.trim().is_empty());
        let config = ureq::Agent::config_builder()
            // Unlike image downloads, the Hub's addresses come from HF_ENDPOINT and the Hub's own redirects, not
            // from dataset rows: the environment's proxy settings apply, as in huggingface_hub.
            .proxy(ureq::Proxy::try_from_env())
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(Some(Duration::from_secs(120)))
            .user_agent(format!("dsmake/{}", env!("CARGO_PKG_VERSION")))
            // `send` follows redirects itself, to decide at each hop whether the token goes along.
            .max_redirects(0)
            .build();
        Ok(Hub { endpoint, origin, token, agent: config.new_agent() })
    }

    /// GET `url`, following redirects. The token goes only to the endpoint's origin: the Hub redirects LFS
    /// downloads to a CDN on another host, which must not see it, while a redirect within the Hub (a renamed
    /// repo) keeps it. `range_from` asks every hop for the bytes from there on. Returns the answer and the
    /// URL that gave it.
    fn send(&self, url: &str, range_from: Option<u64>) -> anyhow::Result<(ureq::http::Response<ureq::Body>, url::Url)> {
        let mut at = url::Url::parse(url).with_context(|| format!("`{url}` is not a URL: check HF_ENDPOINT"))?;
        for redirects in 0..=MAX_REDIRECTS {
            let mut request = self.agent.get(at.as_str());
            if let Some(token) = &self.token
                && at.origin() == self.origin
            {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            if let Some(from) = range_from {
                request = request.header("Range", format!("bytes={from}-"));
            }
            let response = request.call().map_err(|e| transport(e, &hop(url, &at, redirects)))?;
            let location = match response.status().as_u16() {
                301 | 302 | 303 | 307 | 308 => header(&response, "Location"),
                _ => None,
            };
            // A redirect without a Location is answered as it is; `check` names its status.
            let Some(location) = location else { return Ok((response, at)) };
            let next = at.join(&location).map_err(|e| {
                anyhow!("{}: redirected to `{location}`, which is not a URL ({e})", hop(url, &at, redirects))
            })?;
            if !matches!(next.scheme(), "http" | "https") {
                bail!("{}: redirected to `{location}`, which is not an http(s) URL", hop(url, &at, redirects));
            }
            at = next;
        }
        bail!("GET {url}: more than {MAX_REDIRECTS} redirects; the Hub (HF_ENDPOINT) is redirecting in a loop")
    }

    fn check(
        &self,
        response: &ureq::http::Response<ureq::Body>,
        repo: &Repo,
        revision: Option<&str>,
    ) -> anyhow::Result<()> {
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let code = header(response, "X-Error-Code");
        let message = explain(status, repo, revision, self.token.is_some(), code.as_deref());
        if status == 429 || status >= 500 {
            return Err(Transient(message).into());
        }
        Err(anyhow!(message))
    }

    /// The commit that `revision` names now.
    pub fn resolve_revision(&self, repo: &Repo, revision: &str) -> anyhow::Result<String> {
        let url = format!("{}/{}/revision/{}", self.endpoint, repo.api_path(), encode(revision));
        let (mut response, _) = self.send(&url, None)?;
        if response.status().as_u16() == 404 && header(&response, "X-Error-Code").is_none() {
            // Which is wrong, the repo or the revision? Ask about the repo alone.
            let repo_url = format!("{}/{}", self.endpoint, repo.api_path());
            let (probe, _) = self.send(&repo_url, None)?;
            let code = if probe.status().is_success() { "RevisionNotFound" } else { "RepoNotFound" };
            bail!(explain(404, repo, Some(revision), self.token.is_some(), Some(code)));
        }
        self.check(&response, repo, Some(revision))?;
        #[derive(Deserialize)]
        struct Info {
            sha: String,
        }
        let text = response.body_mut().read_to_string().map_err(|e| transport(e, &format!("GET {url}")))?;
        let info: Info =
            serde_json::from_str(&text).with_context(|| format!("GET {url}: the Hub's answer has no commit sha"))?;
        if info.sha.len() < 7 || !info.sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("GET {url}: `{}` is not a commit sha", info.sha);
        }
        Ok(info.sha)
    }

    /// Every file of the repo at `commit`, following the listing's pages.
    pub fn list_files(&self, repo: &Repo, commit: &str) -> anyhow::Result<Vec<HubFile>> {
        let mut url = Some(format!("{}/{}/tree/{commit}?recursive=true&expand=true", self.endpoint, repo.api_path()));
        let mut files = Vec::new();
        let mut visited = std::collections::HashSet::new();
        while let Some(page) = url.take() {
            visited.insert(page.clone());
            let (mut response, answered) = self.send(&page, None)?;
            self.check(&response, repo, Some(commit))?;
            if let Some(next) = next_page(&response, &answered)? {
                // A listing never leaves the Hub; a next page elsewhere is a misconfigured proxy or a hostile
                // server, and following it would send it the token.
                if next.origin() != self.origin {
                    bail!(
                        "GET {page}: the Hub names the listing's next page at {next}, outside HF_ENDPOINT ({}); not \
                         followed (a listing stays on the Hub, and HF_TOKEN goes nowhere else): check HF_ENDPOINT, or \
                         the proxy in front of the Hub that writes these Link headers",
                        self.endpoint
                    );
                }
                url = Some(next.into());
            }
            let text = response
                .body_mut()
                .with_config()
                .limit(256 << 20)
                .read_to_string()
                .map_err(|e| transport(e, &format!("GET {page}")))?;
            let entries: Vec<TreeEntry> =
                serde_json::from_str(&text).with_context(|| format!("GET {page}: not a tree listing"))?;
            if let Some(next) = &url {
                follow(&visited, entries.len(), next).map_err(|why| anyhow!("GET {page}: {why}"))?;
            }
            for e in entries.into_iter().filter(|e| e.kind == "file") {
                let (oid, size, lfs) = match e.lfs {
                    Some(l) => (l.oid, l.size, true),
                    None => (e.oid, e.size, false),
                };
                files.push(HubFile { path: e.path, size, oid, lfs, last_commit: e.last_commit.map(|c| c.id) });
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }

    /// Downloads `file` at `commit` into `partial` (resuming what it holds), verifies it, and returns the
    /// number of bytes fetched over the network. The partial file is removed when the content is wrong.
    pub fn download(
        &self,
        repo: &Repo,
        commit: &str,
        file: &HubFile,
        partial: &Path,
        cancel: &crate::kind::Cancel,
    ) -> anyhow::Result<u64> {
        let url = format!("{}/{}/resolve/{commit}/{}", self.endpoint, repo.web_path(), encode_path(&file.path));
        let mut fetched = 0u64;
        let mut attempts = 0u32;
        // Every attempt that leaves the file incomplete (a cut connection, a short body, a 416, an empty 206)
        // draws on the retry budget of the target being built (`crate::retry`) and waits its backoff, so no
        // answer can keep this loop going; each attempt resumes from what arrived.
        let budget = Budget::current_or_default();
        loop {
            cancel.check()?;
            let mut have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
            if have > file.size {
                // Left by something else (the body limit keeps downloads within the size): start again.
                std::fs::remove_file(partial).ok();
                have = 0;
            }
            if have == file.size {
                break;
            }
            attempts += 1;
            let result = self.fetch_from(&url, repo, commit, partial, have..file.size, cancel);
            let now = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
            fetched += match &result {
                Ok(n) => *n,
                Err(_) => now.saturating_sub(have),
            };
            let error = match result {
                Ok(_) => match progress(&url, have, now, file.size) {
                    Ok(()) => continue,
                    Err(message) => anyhow::Error::new(Transient(message)),
                },
                Err(e) => e,
            };
            let Some(wait) = budget.should_retry(&error) else {
                if attempts > 1 && crate::retry::is_transient(&error) {
                    return Err(error.context(format!(
                        "downloading {} of {repo}: gave up after {attempts} attempts (the retry budget \
                         is spent; --retries sets it)",
                        file.path
                    )));
                }
                return Err(error);
            };
            // In slices: waits grow to 30 s, and Ctrl-C should not wait for them.
            let until = std::time::Instant::now() + wait;
            while !cancel.is_cancelled() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(100).min(until - std::time::Instant::now()));
            }
        }
        if file.lfs {
            let got = sha256_file(partial)?;
            if got != file.oid {
                std::fs::remove_file(partial).ok();
                bail!(
                    "sha256 mismatch for {} of {repo} at {commit}: expected {} (LFS oid), got {got}; the \
                     download was discarded",
                    file.path,
                    file.oid
                );
            }
        } else {
            let got = std::fs::metadata(partial)?.len();
            if got != file.size {
                bail!("{} of {repo}: {got} bytes, the listing says {}", file.path, file.size);
            }
        }
        Ok(fetched)
    }

    fn fetch_from(
        &self,
        url: &str,
        repo: &Repo,
        commit: &str,
        partial: &Path,
        wanted: std::ops::Range<u64>,
        cancel: &crate::kind::Cancel,
    ) -> anyhow::Result<u64> {
        // The bytes still wanted: from what `partial` holds to the listing's size.
        let (have, size) = (wanted.start, wanted.end);
        let (mut response, answered) = self.send(url, (have > 0).then_some(have))?;
        let status = response.status().as_u16();
        if status == 416 {
            // What we hold does not fit the file: start again, as a failed attempt (with its backoff), so that a
            // server answering 416 to everything cannot keep the download going.
            std::fs::remove_file(partial).ok();
            return Err(Transient(format!(
                "GET {url}: HTTP 416 (range not satisfiable) for bytes {have}- of a {size}-byte file; the partial \
                 download was discarded"
            ))
            .into());
        }
        if answered.origin() != self.origin && !response.status().is_success() {
            // The CDN the Hub redirected to, not the Hub: its refusals say nothing about the token or the repo. Its
            // signed URL expires (403), so another attempt, which asks the Hub for a new one, may well succeed.
            let message = format!(
                "GET {url}: HTTP {status} from {}, where the Hub redirected the download",
                answered.origin().ascii_serialization()
            );
            if status == 403 || status == 429 || status >= 500 {
                return Err(Transient(message).into());
            }
            bail!(message);
        }
        self.check(&response, repo, Some(commit)).with_context(|| format!("GET {url}"))?;
        let append = status == 206 && have > 0;
        if append && let Some(range) = header(&response, "Content-Range") {
            // A part from elsewhere in the file would corrupt it; sha256 would catch that only at the end.
            if content_range_start(&range) != Some(have) {
                return Err(Transient(format!(
                    "GET {url}: asked for bytes {have}- and got `Content-Range: {}`",
                    excerpt(&range)
                ))
                .into());
            }
        }
        // The listing's size bounds the body: a longer one is not this file, and must not fill the disk.
        let room = if append { size - have } else { size };
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(partial)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        // ureq's own limit is set past `room` so that the check below, which names the URL, is the one that trips.
        let mut body = response.body_mut().with_config().limit(room.saturating_add(1)).reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        loop {
            cancel.check()?;
            let got = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(got) if n + got as u64 > room => {
                    drop(out);
                    std::fs::remove_file(partial).ok();
                    bail!(
                        "GET {url}: the body is longer than the {room} bytes expected (HTTP {status}, a {size}-byte \
                         file per the listing, {} bytes held before); it is not this file, and was discarded",
                        if append { have } else { 0 }
                    );
                }
                Ok(got) => got,
                Err(e) => {
                    out.flush().ok();
                    return Err(Transient(format!("GET {url}: the connection broke after {n} bytes: {e}")).into());
                }
            };
            out.write_all(&buf[..got]).with_context(|| format!("cannot write {}", partial.display()))?;
            n += got as u64;
        }
        out.sync_all().ok();
        Ok(n)
    }
}

/// A revision pinned to a commit, with the files there: what a plan keys targets on, saved for offline plans.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing {
    pub endpoint: String,
    pub repo: String,
    pub revision: String,
    pub commit: String,
    pub listed_at: String,
    pub files: Vec<HubFile>,
}

/// The files cannot be known now (offline, nothing saved): a plan says why instead of failing.
#[derive(Debug)]
pub struct NotKnown(pub String);

impl std::fmt::Display for NotKnown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for NotKnown {}

/// Where the listing of `repo` at `revision` from `endpoint` is saved, under the dsmake cache's `folder`.
fn listing_path(folder: &str, endpoint: &str, repo: &str, revision: &str) -> std::path::PathBuf {
    let id = blake3::hash(format!("{endpoint}\n{repo}\n{revision}").as_bytes()).to_hex();
    crate::util::cache_dir().join(folder).join("listings").join(format!(
        "{}-{}.json",
        repo.replace('/', "--"),
        &id[..16]
    ))
}

/// The listing saved by the last online plan; `missing` is the error when there is none.
fn saved_listing(saved: &Path, missing: impl FnOnce() -> anyhow::Error) -> anyhow::Result<Listing> {
    let bytes = std::fs::read(saved).map_err(|_| missing())?;
    serde_json::from_slice(&bytes).with_context(|| format!("unreadable saved listing {}", saved.display()))
}

/// `revision` of `repo` pinned to a commit, with its files. Online, the Hub is asked every time (nothing cached
/// hides a moved revision) and the answer is saved under the dsmake cache's `folder`; with `HF_HUB_OFFLINE` the
/// saved listing is used and `who` (the step, as messages name it) says so, or the files are [`NotKnown`];
/// `local_only` plans (`dsmake status`) read only the saved listing.
pub fn pinned_listing(
    repo: &Repo,
    revision: &str,
    folder: &str,
    who: &str,
    local_only: bool,
) -> anyhow::Result<Listing> {
    let hub = Hub::from_env()?;
    let saved = listing_path(folder, &hub.endpoint, &repo.id, revision);
    if offline() {
        let listing = saved_listing(&saved, || {
            anyhow::Error::new(NotKnown(format!(
                "HF_HUB_OFFLINE is set and no earlier listing of {repo} at `{revision}` is saved in {}: plan once \
                 online, or unset HF_HUB_OFFLINE",
                saved.display()
            )))
        })?;
        crate::util::say_once(format!(
            "{who}: offline (HF_HUB_OFFLINE): using the listing of {}@{revision} saved {} (commit {}); the revision \
             may have moved since",
            repo.id, listing.listed_at, listing.commit
        ));
        return Ok(listing);
    }
    if local_only {
        // Unavailable here rather than "not known yet": building other steps would not tell it.
        return saved_listing(&saved, || {
            anyhow!(
                "no listing of {repo} at `{revision}` is saved yet (this command does not ask the Hub): run `dsmake \
                 plan` once"
            )
        });
    }
    let commit = hub.resolve_revision(repo, revision)?;
    let files = hub.list_files(repo, &commit)?;
    let listing = Listing {
        endpoint: hub.endpoint.clone(),
        repo: repo.id.clone(),
        revision: revision.to_string(),
        commit,
        listed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        files,
    };
    // Saved only for offline plans; an online plan always asks the Hub again.
    if let Some(parent) = saved.parent()
        && std::fs::create_dir_all(parent).is_ok()
    {
        let tmp = saved.with_extension("json.tmp");
        if std::fs::write(&tmp, serde_json::to_vec(&listing)?).is_ok() {
            std::fs::rename(&tmp, &saved).ok();
        }
    }
    crate::util::say_once(format!("{who}: {}@{revision} → commit {}", repo.id, listing.commit));
    Ok(listing)
}

/// Whether a listing's next page may be followed: paging that names a page already read, or goes on from a page
/// with no entries, would loop for ever.
fn follow(visited: &std::collections::HashSet<String>, entries: usize, next: &str) -> Result<(), String> {
    if visited.contains(next) {
        return Err(format!("the listing's next page is {next}, which was already read: its paging loops"));
    }
    if entries == 0 {
        return Err(format!("a listing page with no entries names a next page ({next}): its paging would not end"));
    }
    Ok(())
}

/// Whether an attempt that ended without an error moved the download on: from `before` bytes held to `after`,
/// of `size`. Anything short of the whole file is a failed attempt (the caller draws on the retry budget): a
/// body that ended early (a mirror's error page served as 200, a proxy's cut) or one that added nothing (an
/// empty 206).
fn progress(url: &str, before: u64, after: u64, size: u64) -> Result<(), String> {
    if after == size {
        return Ok(());
    }
    if after <= before {
        return Err(format!(
            "GET {url}: the answer added nothing (holding {after} of {size} bytes, {before} before this request)"
        ));
    }
    Err(format!("GET {url}: the body ended early, at byte {after} of {size} (the listing's size); resuming from there"))
}

/// The first byte of a `Content-Range: bytes first-last/total` header.
fn content_range_start(value: &str) -> Option<u64> {
    let spec = value.trim().strip_prefix("bytes")?.trim_start();
    spec.split_once('-')?.0.trim().parse().ok()
}

/// A header value as errors show it: at most 80 characters, control characters escaped.
fn excerpt(value: &str) -> String {
    let mut out: String = value.chars().take(80).flat_map(char::escape_debug).collect();
    if value.chars().count() > 80 {
        out.push('…');
    }
    out
}

pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A revision in a URL path: `refs/convert/parquet` → `refs%2Fconvert%2Fparquet`.
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect::<String>().replace('+', "%20")
}

fn encode_path(path: &str) -> String {
    path.split('/').map(encode).collect::<Vec<_>>().join("/")
}

/// One link-value of a Link header: its target as written (a URI reference) and its relation types.
#[derive(Debug, PartialEq)]
struct LinkValue<'a> {
    target: &'a str,
    /// The first `rel` parameter's space-separated types, lowercased (they compare case-insensitively).
    rels: Vec<String>,
}

/// RFC 7230's token characters: what a parameter name or an unquoted value is made of.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// The link-values of a Link header (RFC 8288 §3): `<target>` then `; name[=value]` parameters, values
/// quoted or not, link-values separated by commas. Commas inside `<...>` or a quoted value belong to them,
/// which splitting the header on commas gets wrong. Says what it could not read rather than guessing.
fn parse_links(header: &str) -> Result<Vec<LinkValue<'_>>, String> {
    const OWS: [char; 2] = [' ', '\t'];
    let mut links = Vec::new();
    let mut rest = header;
    loop {
        // Empty list elements are allowed (RFC 7230 §7).
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Ok(links);
        }
        let Some(after) = rest.strip_prefix('<') else {
            return Err(format!("expected `<` where `{rest}` starts"));
        };
        let Some(end) = after.find('>') else {
            return Err(format!("`<{after}` has no closing `>`"));
        };
        let target = &after[..end];
        rest = &after[end + 1..];
        let mut rels = None;
        while let Some(param) = rest.trim_start_matches(OWS).strip_prefix(';') {
            rest = param.trim_start_matches(OWS);
            let name_end = rest.find(|c| !is_tchar(c)).unwrap_or(rest.len());
            let name = &rest[..name_end];
            rest = rest[name_end..].trim_start_matches(OWS);
            let mut value = String::new();
            if let Some(v) = rest.strip_prefix('=') {
                rest = v.trim_start_matches(OWS);
                if let Some(quoted) = rest.strip_prefix('"') {
                    let mut chars = quoted.char_indices();
                    let close = loop {
                        match chars.next() {
                            Some((i, '"')) => break i,
                            Some((_, '\\')) => match chars.next() {
                                Some((_, c)) => value.push(c),
                                None => return Err(format!("`\"{quoted}` has no closing quote")),
                            },
                            Some((_, c)) => value.push(c),
                            None => return Err(format!("`\"{quoted}` has no closing quote")),
                        }
                    };
                    rest = &quoted[close + 1..];
                } else {
                    let value_end = rest.find(|c| !is_tchar(c)).unwrap_or(rest.len());
                    value.push_str(&rest[..value_end]);
                    rest = &rest[value_end..];
                }
            }
            // Only the first `rel` counts (RFC 8288 §3.3).
            if name.eq_ignore_ascii_case("rel") && rels.is_none() {
                rels = Some(value.split_ascii_whitespace().map(str::to_ascii_lowercase).collect());
            }
        }
        rest = rest.trim_start_matches(OWS);
        if !(rest.is_empty() || rest.starts_with(',')) {
            return Err(format!("unexpected `{rest}` after the link to `{target}`"));
        }
        links.push(LinkValue { target, rels: rels.unwrap_or_default() });
    }
}

/// The `rel="next"` target of a Link header, resolved against `base` (the URL the header came with), or None
/// on the last page.
fn next_link(header: &str, base: &url::Url) -> Result<Option<url::Url>, String> {
    let links = parse_links(header)?;
    let Some(next) = links.iter().find(|l| l.rels.iter().any(|r| r == "next")) else {
        return Ok(None);
    };
    base.join(next.target).map(Some).map_err(|e| format!("the next page `{}` is not a URL: {e}", next.target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(header: &str) -> Result<Option<String>, String> {
        let base = url::Url::parse("https://hf.co/api/datasets/o/r/tree/main?recursive=true").unwrap();
        next_link(header, &base).map(|u| u.map(String::from))
    }

    #[test]
    fn next_links_are_read_as_rfc_8288_writes_them() {
        let some = |s: &str| Ok(Some(s.to_string()));
        assert_eq!(
            next(r#"<https://hf.co/api/x?cursor=a>; rel="next", <https://hf.co/p>; rel="prev""#),
            some("https://hf.co/api/x?cursor=a")
        );
        assert_eq!(next(r#"<https://hf.co/p>; rel="prev""#), Ok(None));
        assert_eq!(next(""), Ok(None));
        // Commas inside the target or a quoted value do not split link-values.
        assert_eq!(
            next(r#"<https://hf.co/p?c=1,2>; rel="prev", <https://hf.co/n?c=3,4>; rel="next""#),
            some("https://hf.co/n?c=3,4")
        );
        assert_eq!(
            next(r#"<https://hf.co/a>; title="a, b; rel=next", <https://hf.co/b>;rel=next"#),
            some("https://hf.co/b")
        );
        // Unquoted, several types, any case, other parameters first, empty list elements.
        assert_eq!(next("<https://hf.co/n>; rel=next"), some("https://hf.co/n"));
        assert_eq!(next(r#", <https://hf.co/n> ; type="x" ; REL = "Last NEXT" ,"#), some("https://hf.co/n"));
        assert_eq!(next(r#"<https://hf.co/n>; rel="nextish""#), Ok(None));
        // Only the first `rel` counts.
        assert_eq!(next(r#"<https://hf.co/n>; rel="prev"; rel="next""#), Ok(None));
        // Escapes in a quoted value.
        assert_eq!(next(r#"<https://hf.co/n>; title="say \"hi\""; rel="next""#), some("https://hf.co/n"));
        // Relative references resolve against the URL the header came with.
        assert_eq!(
            next("</api/datasets/o/r/tree/main?recursive=true&cursor=2>; rel=next"),
            some("https://hf.co/api/datasets/o/r/tree/main?recursive=true&cursor=2")
        );
        assert_eq!(next("<?cursor=3>; rel=next"), some("https://hf.co/api/datasets/o/r/tree/main?cursor=3"));
        assert_eq!(next("<//cdn.example/x>; rel=next"), some("https://cdn.example/x"));
        // What cannot be read is said, not guessed at.
        assert!(next("https://hf.co/n; rel=next").unwrap_err().contains("expected `<`"));
        assert!(next("<https://hf.co/n; rel=next").unwrap_err().contains("no closing `>`"));
        assert!(next(r#"<https://hf.co/n>; rel="next"#).unwrap_err().contains("no closing quote"));
        assert!(next("<https://hf.co/n> rel=next").unwrap_err().contains("unexpected `rel=next`"));
        assert!(next("<http://[::1>; rel=next").unwrap_err().contains("is not a URL"));
    }

    #[test]
    fn an_attempt_counts_as_progress_only_when_it_completes_the_file() {
        let url = "http://hub/f";
        assert_eq!(progress(url, 0, 10, 10), Ok(()));
        assert_eq!(progress(url, 4, 10, 10), Ok(()));
        let short = progress(url, 0, 4, 10).unwrap_err();
        assert!(short.contains("GET http://hub/f") && short.contains("ended early, at byte 4 of 10"), "{short}");
        let empty = progress(url, 4, 4, 10).unwrap_err();
        assert!(empty.contains("added nothing"), "{empty}");
        // A 200 that rewrote the file from the start and stopped below what was held: nothing gained.
        assert!(progress(url, 6, 3, 10).unwrap_err().contains("added nothing"));
    }

    #[test]
    fn listing_pages_that_loop_are_not_followed() {
        let visited: std::collections::HashSet<String> = ["http://hub/p1".to_string()].into();
        assert_eq!(follow(&visited, 10, "http://hub/p2"), Ok(()));
        assert!(follow(&visited, 10, "http://hub/p1").unwrap_err().contains("already read"));
        assert!(follow(&visited, 0, "http://hub/p2").unwrap_err().contains("no entries"));
    }

    #[test]
    fn content_ranges_and_excerpts() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-0/*"), Some(0));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
        assert_eq!(excerpt("a\nb"), "a\\nb");
        assert_eq!(excerpt(&"x".repeat(100)).chars().count(), 81);
    }

    #[test]
    fn encoding() {
        assert_eq!(encode("refs/convert/parquet"), "refs%2Fconvert%2Fparquet");
        assert_eq!(encode_path("data/a b.parquet"), "data/a%20b.parquet");
    }

    #[test]
    fn messages_name_what_is_wrong() {
        assert!(explain(401, &Repo::dataset("o/r"), None, true, None).contains("HF_TOKEN"));
        assert!(explain(401, &Repo::dataset("o/r"), None, false, None).contains("HF_TOKEN is not set"));
        assert!(
            explain(404, &Repo::model("o/r"), Some("v9"), false, Some("RevisionNotFound")).contains("no revision `v9`")
        );
        assert!(
            explain(404, &Repo::dataset("o/r"), Some("main"), false, Some("RepoNotFound")).contains("check `repo`")
        );
    }
}
