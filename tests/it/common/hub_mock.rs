//! A Hugging Face Hub on 127.0.0.1: dataset revisions, recursive tree listings with LFS oids and last
//! commits (paged when asked), and `resolve` downloads with ETag, X-Repo-Commit and Range; a token when the
//! repo is gated, and faults on demand (a download cut after some bytes, a file served with the wrong content).
//! As the real Hub does when asked: downloads redirected to a CDN on another port, a renamed repo redirected to
//! its new name, and next-page links that name another server. Model repos beside the dataset (`commit_model`):
//! `/api/models/{repo}/revision/{rev}` (with `siblings`), tree listings, and `/{repo}/resolve/{rev}/{file}` with
//! ETag, X-Repo-Commit, X-Linked-Etag/X-Linked-Size for LFS files and Range; `.json` files are served as small
//! git files (no LFS oid), as the Hub keeps configs.
#![allow(dead_code)]

use super::http::{Reply, Request, Server};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// (sha, files path → bytes, path → last commit sha).
pub type Commit = (String, BTreeMap<String, Vec<u8>>, BTreeMap<String, String>);

#[derive(Default)]
pub struct HubState {
    pub repo: String,
    /// Commits in order: (sha, files path → bytes, path → last commit sha).
    pub commits: Vec<Commit>,
    pub branches: BTreeMap<String, String>,
    /// Required as `Authorization: Bearer …` when set.
    pub token: Option<String>,
    /// A token that is valid but has not accepted the dataset's conditions.
    pub forbidden_token: Option<String>,
    /// The next download of this path is cut after this many bytes (once).
    pub cut_once: Option<(String, usize)>,
    /// Paths served with different content than their oid.
    pub corrupt: Vec<String>,
    /// Entries per tree listing page, when set: each page but the last names the next in a
    /// `Link: <…>; rel="next"` header, as the Hub pages its listings.
    pub page_size: Option<usize>,
    /// Where next-page links point instead of this server (`http://host:port`): a proxy that passes the Hub's
    /// links through unchanged, or a hostile Hub.
    pub next_link_base: Option<String>,
    /// Set by `start_cdn`: `resolve` answers 302 to the file's content on this server, as the Hub sends LFS
    /// downloads to its CDN.
    pub cdn: Option<String>,
    /// A former name of the repo: requests naming it are answered 307 with the same path under `repo`.
    pub renamed_from: Option<String>,
    /// Model repos: name → (commits in order, branches).
    pub models: BTreeMap<String, (Vec<Commit>, BTreeMap<String, String>)>,
}

pub struct HubMock {
    pub server: Server,
    pub state: Arc<Mutex<HubState>>,
}

pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl HubMock {
    pub fn start(repo: &str) -> HubMock {
        let state = Arc::new(Mutex::new(HubState { repo: repo.to_string(), ..Default::default() }));
        let s = state.clone();
        let server = Server::start(move |r| handle(&s, r));
        HubMock { server, state }
    }

    pub fn endpoint(&self) -> String {
        self.server.url("")
    }

    /// A new commit on `main`: the previous files with `changes` applied (None deletes). Returns its sha.
    pub fn commit(&self, changes: &[(&str, Option<Vec<u8>>)]) -> String {
        let mut st = self.state.lock().unwrap();
        let st = &mut *st;
        add_commit(&mut st.commits, &mut st.branches, "", changes)
    }

    /// A new commit on `main` of model repo `repo` (created on first use), as [`HubMock::commit`]. Returns its sha.
    pub fn commit_model(&self, repo: &str, changes: &[(&str, Option<Vec<u8>>)]) -> String {
        let mut st = self.state.lock().unwrap();
        let (commits, branches) = st.models.entry(repo.to_string()).or_default();
        add_commit(commits, branches, repo, changes)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.server.requests()
    }

    /// A CDN on its own port that serves the files' content by sha256 (`/{repo}/{sha256}?X-Signature=…`, Range and
    /// faults as `resolve`); from now on `resolve` redirects there.
    pub fn start_cdn(&self) -> Server {
        let s = self.state.clone();
        let cdn = Server::start(move |r| {
            let mut st = s.lock().unwrap();
            let prefix = format!("/{}/", st.repo);
            let oid = r.path().strip_prefix(&prefix).unwrap_or_default();
            let found = st.commits.iter().find_map(|(sha, files, _)| {
                files.iter().find(|(_, b)| sha256(b) == oid).map(|(p, b)| (sha.clone(), p.clone(), b.clone()))
            });
            match found {
                Some((sha, path, bytes)) => serve(&mut st, r, &path, sha, bytes),
                None => Reply::status(404, "no such object"),
            }
        });
        self.state.lock().unwrap().cdn = Some(cdn.url(""));
        cdn
    }
}

/// Appends a commit to `commits` with `changes` applied to the last one's files, and moves `main` to it.
fn add_commit(
    commits: &mut Vec<Commit>,
    branches: &mut BTreeMap<String, String>,
    repo: &str,
    changes: &[(&str, Option<Vec<u8>>)],
) -> String {
    let (mut files, mut last) = commits.last().map(|(_, f, l)| (f.clone(), l.clone())).unwrap_or_default();
    let paths: Vec<&str> = changes.iter().map(|c| c.0).collect();
    // The dataset's commits keep the ids they always had; a model repo's name makes its own distinct.
    let label = if repo.is_empty() { String::new() } else { format!("{repo} ") };
    let sha = sha256(format!("{label}commit {} {paths:?}", commits.len()).as_bytes())[..40].to_string();
    for (path, bytes) in changes {
        match bytes {
            Some(b) => {
                files.insert(path.to_string(), b.clone());
                last.insert(path.to_string(), sha.clone());
            }
            None => {
                files.remove(*path);
                last.remove(*path);
            }
        }
    }
    commits.push((sha.clone(), files, last));
    branches.insert("main".into(), sha.clone());
    sha
}

fn json_reply(status: u16, body: serde_json::Value) -> Reply {
    Reply::Full {
        status,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn error(status: u16, code: &str) -> Reply {
    json_reply(status, serde_json::json!({"error": code})).with_header("X-Error-Code", code)
}

/// One page of a listing: `size` entries from the request's `cursor` (an offset here; opaque on the Hub), and
/// an absolute link to the next page with the request's other query parameters kept.
fn page(r: &Request, entries: Vec<serde_json::Value>, size: usize, next_link_base: Option<String>) -> Reply {
    let mut query: Vec<&str> = r.query().split('&').filter(|p| !p.is_empty()).collect();
    let from = query.iter().find_map(|p| p.strip_prefix("cursor=")).and_then(|c| c.parse().ok()).unwrap_or(0);
    query.retain(|p| !p.starts_with("cursor="));
    let to = (from + size.max(1)).min(entries.len());
    let reply = json_reply(200, serde_json::Value::Array(entries[from.min(to)..to].to_vec()));
    if to == entries.len() {
        return reply;
    }
    let next_cursor = format!("cursor={to}");
    query.push(&next_cursor);
    let base = next_link_base.unwrap_or_else(|| format!("http://{}", r.header("Host").unwrap_or_default()));
    let next = format!("{base}{}?{}", r.path(), query.join("&"));
    reply.with_header("Link", &format!("<{next}>; rel=\"next\""))
}

fn handle(state: &Mutex<HubState>, r: &Request) -> Reply {
    let mut st = state.lock().unwrap();
    let auth = r.header("Authorization").map(str::to_string);
    if let Some(token) = &st.token {
        let ok = auth.as_deref() == Some(&format!("Bearer {token}"));
        let forbidden = st.forbidden_token.as_ref().is_some_and(|f| auth.as_deref() == Some(&format!("Bearer {f}")));
        if forbidden {
            return error(403, "GatedRepo");
        }
        if !ok {
            return Reply::Full { status: 401, headers: vec![], body: b"Invalid credentials".to_vec() };
        }
    }
    let path = r.path().to_string();
    if let Some(old) = &st.renamed_from {
        let (old, new) = (format!("/datasets/{old}"), format!("/datasets/{}", st.repo));
        if path.ends_with(&old) || path.contains(&format!("{old}/")) {
            // A relative Location, as the Hub writes it.
            let location = r.target.replacen(&old, &new, 1);
            return Reply::status(307, "moved").with_header("Location", &location);
        }
    }
    let api = format!("/api/datasets/{}", st.repo);
    let resolve = format!("/datasets/{}/resolve/", st.repo);
    let find = |st: &HubState, rev: &str| -> Option<usize> {
        let sha = st.branches.get(rev).cloned().unwrap_or_else(|| rev.to_string());
        st.commits.iter().position(|(s, _, _)| *s == sha)
    };
    if let Some(rest) = path.strip_prefix(&format!("{api}/revision/")) {
        let rev = rest.replace("%2F", "/");
        return match find(&st, &rev) {
            Some(i) => json_reply(200, serde_json::json!({"id": st.repo, "sha": st.commits[i].0})),
            None => error(404, "RevisionNotFound"),
        };
    }
    if path == api {
        return json_reply(200, serde_json::json!({"id": st.repo}));
    }
    if let Some(rest) = path.strip_prefix(&format!("{api}/tree/")) {
        let rev = rest.split('/').next().unwrap_or("");
        let Some(i) = find(&st, rev) else { return error(404, "RevisionNotFound") };
        let entries = tree_entries(&st.commits[i], false);
        return match st.page_size {
            Some(size) => page(r, entries, size, st.next_link_base.clone()),
            None => json_reply(200, serde_json::Value::Array(entries)),
        };
    }
    if path.starts_with("/api/datasets/") {
        return error(404, "RepoNotFound");
    }
    if let Some(reply) = handle_model(&mut st, r, &path) {
        return reply;
    }
    if let Some(rest) = path.strip_prefix(&resolve) {
        let Some((rev, file)) = rest.split_once('/') else { return error(404, "EntryNotFound") };
        let Some(i) = find(&st, rev) else { return error(404, "RevisionNotFound") };
        let sha = st.commits[i].0.clone();
        let Some(bytes) = st.commits[i].1.get(file).cloned() else { return error(404, "EntryNotFound") };
        if let Some(cdn) = &st.cdn {
            let location = format!("{cdn}/{}/{}?X-Signature=signed-for-one-hour", st.repo, sha256(&bytes));
            return Reply::status(302, "Found").with_header("Location", &location).with_header("X-Repo-Commit", &sha);
        }
        let file = file.to_string();
        return serve(&mut st, r, &file, sha, bytes);
    }
    error(404, "RepoNotFound")
}

/// A tree listing's entries for one commit: files with their LFS oid (or, for `.json` files of a model repo, a
/// git blob id only) and last commit, then the folders.
fn tree_entries((_, files, last): &Commit, small_json: bool) -> Vec<serde_json::Value> {
    let mut dirs = std::collections::BTreeSet::new();
    let mut entries = Vec::new();
    for (p, bytes) in files {
        let mut d = p.as_str();
        while let Some((parent, _)) = d.rsplit_once('/') {
            dirs.insert(parent.to_string());
            d = parent;
        }
        let mut entry = serde_json::json!({
            "type": "file", "path": p, "size": bytes.len(), "oid": &sha256(bytes)[..40],
            "lastCommit": {"id": last[p], "title": "update", "date": "2026-01-01T00:00:00.000Z"},
        });
        if !(small_json && p.ends_with(".json")) {
            entry["lfs"] = serde_json::json!({"oid": sha256(bytes), "size": bytes.len(), "pointerSize": 134});
        }
        entries.push(entry);
    }
    for d in dirs {
        entries.push(serde_json::json!({"type": "directory", "path": d, "size": 0, "oid": "0"}));
    }
    entries
}

/// The routes of model repos, or None when the path names none.
fn handle_model(st: &mut HubState, r: &Request, path: &str) -> Option<Reply> {
    let (repo, rest) = st.models.keys().find_map(|name| {
        let api = format!("/api/models/{name}");
        if path == api {
            return Some((name.clone(), String::new()));
        }
        if let Some(rest) = path.strip_prefix(&format!("{api}/")) {
            return Some((name.clone(), format!("api/{rest}")));
        }
        path.strip_prefix(&format!("/{name}/resolve/")).map(|rest| (name.clone(), format!("resolve/{rest}")))
    })?;
    let (commits, branches) = &st.models[&repo];
    let find = |rev: &str| -> Option<usize> {
        let sha = branches.get(rev).cloned().unwrap_or_else(|| rev.to_string());
        commits.iter().position(|(s, _, _)| *s == sha)
    };
    if rest.is_empty() {
        return Some(json_reply(200, serde_json::json!({"id": repo})));
    }
    if let Some(rev) = rest.strip_prefix("api/revision/") {
        let rev = rev.replace("%2F", "/");
        let Some(i) = find(&rev) else { return Some(error(404, "RevisionNotFound")) };
        let siblings: Vec<serde_json::Value> =
            commits[i].1.keys().map(|p| serde_json::json!({"rfilename": p})).collect();
        return Some(json_reply(200, serde_json::json!({"id": repo, "sha": commits[i].0, "siblings": siblings})));
    }
    if let Some(rev) = rest.strip_prefix("api/tree/") {
        let rev = rev.split('/').next().unwrap_or("");
        let Some(i) = find(rev) else { return Some(error(404, "RevisionNotFound")) };
        return Some(json_reply(200, serde_json::Value::Array(tree_entries(&commits[i], true))));
    }
    if let Some(rest) = rest.strip_prefix("resolve/") {
        let Some((rev, file)) = rest.split_once('/') else { return Some(error(404, "EntryNotFound")) };
        let Some(i) = find(rev) else { return Some(error(404, "RevisionNotFound")) };
        let sha = commits[i].0.clone();
        let Some(bytes) = commits[i].1.get(file).cloned() else { return Some(error(404, "EntryNotFound")) };
        let lfs = !file.ends_with(".json");
        let size = bytes.len();
        let mut reply = serve(st, r, file, sha, bytes);
        if lfs && let Reply::Full { headers, .. } | Reply::Cut { headers, .. } = &mut reply {
            let etag = headers.iter().find(|(k, _)| k == "ETag").map(|(_, v)| v.clone()).unwrap_or_default();
            headers.push(("X-Linked-Etag".into(), etag));
            headers.push(("X-Linked-Size".into(), size.to_string()));
        }
        return Some(reply);
    }
    Some(error(404, "EntryNotFound"))
}

/// A file's content as a download: ETag, X-Repo-Commit, Range, and the faults asked for.
fn serve(st: &mut HubState, r: &Request, file: &str, sha: String, mut bytes: Vec<u8>) -> Reply {
    if st.corrupt.iter().any(|c| c == file) {
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
    }
    let etag = format!("\"{}\"", sha256(&bytes));
    let (status, body, range) = match r
        .header("Range")
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(from) if from >= bytes.len() => return Reply::status(416, "range not satisfiable"),
        Some(from) => (206, bytes[from..].to_vec(), Some(format!("bytes {from}-{}/{}", bytes.len() - 1, bytes.len()))),
        None => (200, bytes.clone(), None),
    };
    let mut headers = vec![
        ("ETag".to_string(), etag),
        ("X-Repo-Commit".to_string(), sha),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
    ];
    if let Some(range) = range {
        headers.push(("Content-Range".to_string(), range));
    }
    if let Some((cut_path, n)) = st.cut_once.clone()
        && cut_path == file
    {
        st.cut_once = None;
        return Reply::Cut { status, headers, body, cut: n, reset: true };
    }
    Reply::Full { status, headers, body }
}
