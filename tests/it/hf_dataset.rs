//! `hf-dataset` against a Hub served on 127.0.0.1: pinning, keys that follow file content, resume after a
//! cut connection, sha256 mismatch, tokens (sent to the Hub only: not to its CDN, not to a next page elsewhere),
//! error messages, offline mode, paged listings, renamed repos.

use crate::common::{Backend, Sandbox, actions, built, http, hub_mock, parquet_rows, work};

on_every_store!(
    pins_the_commit_downloads_verified_files_and_records_rows,
    a_new_file_adds_only_its_target_and_a_changed_file_is_stale,
);
use hub_mock::HubMock;
use parquet_rows::{row, urls_parquet};

const PIPELINE: &str = r#"
[steps.meta]
kind = "hf-dataset"
repo = "laion/tiny"
"#;

fn file(n: usize, tag: &str) -> Vec<u8> {
    let urls: Vec<String> = (0..n).map(|i| format!("http://img.example/{tag}/{i}.jpg")).collect();
    let rows: Vec<_> = urls.iter().map(|u| row(u, "a caption")).collect();
    urls_parquet(&rows)
}

fn sandbox(hub: &HubMock) -> Sandbox {
    sandbox_on(Backend::Local, hub)
}

fn sandbox_on(backend: Backend, hub: &HubMock) -> Sandbox {
    let mut sb = Sandbox::on(backend, PIPELINE);
    sb.env.push(("HF_ENDPOINT".into(), hub.endpoint()));
    sb.env.push(("HF_TOKEN".into(), "hf_secret_token".into()));
    sb
}

fn manifest(sb: &Sandbox, shard: &str) -> serde_json::Value {
    serde_json::from_str(&sb.read_store(&format!("pipeline/meta/_dsmake/{shard}.json"))).unwrap()
}

fn pins_the_commit_downloads_verified_files_and_records_rows(backend: Backend) {
    let hub = HubMock::start("laion/tiny");
    hub.state.lock().unwrap().token = Some("hf_secret_token".into());
    let a = file(25, "a");
    let c1 = hub.commit(&[("data/part-0.parquet", Some(a.clone())), ("README.md", Some(b"# tiny".to_vec()))]);
    let sb = sandbox_on(backend, &hub);

    let plan = sb.run(&["plan"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(plan.stderr.contains(&format!("hf-dataset `meta`: laion/tiny@main → commit {c1}")), "{}", plan.stderr);

    let summary = sb.build(&[]);
    assert_eq!(built(&summary), ["meta/data/part-0.parquet"]);
    assert_eq!(std::fs::read(sb.store().join("pipeline/meta/data/part-0.parquet")).unwrap(), a);
    let m = manifest(&sb, "data/part-0.parquet");
    assert_eq!(m["rows"], 25);
    assert_eq!(m["stats"]["commit"], c1.as_str());
    assert_eq!(m["stats"]["sha256"], hub_mock::sha256(&a).as_str());
    // Every request carried the token; no manifest or plan shows it.
    let requests = hub.requests();
    assert!(requests.iter().all(|r| r.header("Authorization") == Some("Bearer hf_secret_token")), "{requests:?}");
    assert!(!sb.read_store("pipeline/meta/_dsmake/data/part-0.parquet.json").contains("hf_secret"));

    // Unchanged: fresh, nothing downloaded.
    hub.server.clear();
    assert!(work(&sb.plan(&[])).is_empty());
    assert!(hub.requests().iter().all(|r| !r.path().contains("/resolve/")));
}

fn a_new_file_adds_only_its_target_and_a_changed_file_is_stale(backend: Backend) {
    let hub = HubMock::start("laion/tiny");
    hub.commit(&[("data/part-0.parquet", Some(file(10, "a"))), ("data/part-1.parquet", Some(file(10, "b")))]);
    let sb = sandbox_on(backend, &hub);
    sb.build(&[]);

    let c2 = hub.commit(&[("data/part-2.parquet", Some(file(5, "c")))]);
    let plan = sb.run(&["plan", "--format", "json"]);
    assert!(plan.stderr.contains(&c2), "the plan names the new commit: {}", plan.stderr);
    let todo = work(&plan.json());
    assert_eq!(todo.len(), 1, "{todo:?}");
    assert_eq!((todo[0].0.as_str(), todo[0].2.as_str()), ("meta/data/part-2.parquet", "never built"));
    hub.server.clear();
    let summary = sb.build(&[]);
    assert_eq!(built(&summary), ["meta/data/part-2.parquet"]);
    let downloads: Vec<String> =
        hub.requests().iter().filter(|r| r.path().contains("/resolve/")).map(|r| r.path().to_string()).collect();
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    assert!(downloads[0].ends_with("/data/part-2.parquet"));

    hub.commit(&[("data/part-1.parquet", Some(file(12, "b2")))]);
    let todo = work(&sb.plan(&[]));
    assert_eq!(todo.len(), 1, "{todo:?}");
    assert_eq!(todo[0].0, "meta/data/part-1.parquet");
    assert!(todo[0].2.starts_with("shard.commit: ") && todo[0].2.contains("; shard.oid: "), "{}", todo[0].2);
    sb.build(&[]);
    assert_eq!(manifest(&sb, "data/part-1.parquet")["rows"], 12);
}

#[test]
fn a_cut_download_resumes_with_a_range_request() {
    let hub = HubMock::start("laion/tiny");
    let a = file(400, "a");
    hub.commit(&[("part-0.parquet", Some(a.clone()))]);
    hub.state.lock().unwrap().cut_once = Some(("part-0.parquet".into(), 1000));
    let sb = sandbox(&hub);
    sb.build(&[]);
    assert_eq!(std::fs::read(sb.store().join("pipeline/meta/part-0.parquet")).unwrap(), a);
    let ranges: Vec<Option<String>> = hub
        .requests()
        .iter()
        .filter(|r| r.path().contains("/resolve/"))
        .map(|r| r.header("Range").map(str::to_string))
        .collect();
    assert_eq!(ranges, [None, Some("bytes=1000-".to_string())]);
    let m = manifest(&sb, "part-0.parquet");
    assert_eq!(m["stats"]["bytes_downloaded"], a.len());
}

#[test]
fn a_sha256_mismatch_fails_the_target_and_publishes_nothing() {
    let hub = HubMock::start("laion/tiny");
    let a = file(10, "a");
    hub.commit(&[("part-0.parquet", Some(a.clone())), ("part-1.parquet", Some(file(10, "b")))]);
    hub.state.lock().unwrap().corrupt.push("part-0.parquet".into());
    let sb = sandbox(&hub);
    let run = sb.run(&["build", "--keep-going"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let expected = "sha256 mismatch for part-0.parquet of dataset `laion/tiny`";
    assert!(run.stderr.contains(expected) || run.stdout.contains(expected), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains(&hub_mock::sha256(&a)) || run.stdout.contains(&hub_mock::sha256(&a)));
    assert!(!sb.store().join("pipeline/meta/part-0.parquet").exists());
    assert!(sb.store().join("pipeline/meta/part-1.parquet").exists());
}

#[test]
fn hub_errors_say_which_of_token_repo_or_revision_is_wrong() {
    let hub = HubMock::start("laion/tiny");
    hub.commit(&[("part-0.parquet", Some(file(3, "a")))]);
    {
        let mut st = hub.state.lock().unwrap();
        st.token = Some("good".into());
        st.forbidden_token = Some("not-accepted".into());
    }
    let plan_error = |pipeline: &str, token: Option<&str>| {
        let mut sb = Sandbox::new(pipeline);
        sb.env.push(("HF_ENDPOINT".into(), hub.endpoint()));
        match token {
            Some(t) => sb.env.push(("HF_TOKEN".into(), t.into())),
            None => sb.env.push(("HF_TOKEN".into(), String::new())),
        }
        let run = sb.run(&["plan"]);
        assert_ne!(run.code, 0);
        run.stderr
    };
    let e = plan_error(PIPELINE, None);
    assert!(e.contains("HF_TOKEN is not set"), "{e}");
    let e = plan_error(PIPELINE, Some("bad"));
    assert!(e.contains("the Hub refused HF_TOKEN for dataset `laion/tiny` (401)"), "{e}");
    let e = plan_error(PIPELINE, Some("not-accepted"));
    assert!(e.contains("HF_TOKEN has no access to dataset `laion/tiny` (403)"), "{e}");
    let e = plan_error(&PIPELINE.replace("laion/tiny", "laion/tinny"), Some("good"));
    assert!(e.contains("there is no dataset `laion/tinny` on the Hub (404): check `repo`"), "{e}");
    let e = plan_error(&format!("{PIPELINE}revision = \"v9\"\n"), Some("good"));
    assert!(e.contains("dataset `laion/tiny` has no revision `v9` (404): check `revision`"), "{e}");
}

#[test]
fn offline_plans_use_the_last_listing_and_say_so() {
    let hub = HubMock::start("laion/tiny");
    let c1 = hub.commit(&[("part-0.parquet", Some(file(3, "a")))]);
    let mut sb = sandbox(&hub);
    sb.env.push(("HF_HUB_OFFLINE".into(), "1".into()));
    // Nothing saved: the plan says the files are not known yet, and why.
    let plan = sb.plan(&[]);
    let why = plan["steps"][0]["unknown"].as_str().unwrap_or_default().to_string();
    assert!(
        why.starts_with("HF_HUB_OFFLINE is set and no earlier listing of dataset `laion/tiny` at `main`"),
        "{plan}"
    );

    sb.env.retain(|(k, _)| k != "HF_HUB_OFFLINE");
    sb.build(&[]);
    hub.commit(&[("part-1.parquet", Some(file(3, "b")))]);
    sb.env.push(("HF_HUB_OFFLINE".into(), "1".into()));
    hub.server.clear();
    let run = sb.run(&["plan", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("offline (HF_HUB_OFFLINE)") && run.stderr.contains(&c1), "{}", run.stderr);
    assert!(work(&run.json()).is_empty());
    assert!(hub.requests().is_empty(), "offline plans send nothing");
}

#[test]
fn a_listing_longer_than_one_page_is_followed_to_its_last_page() {
    let hub = HubMock::start("laion/tiny");
    // 11 parquet files and a README in two folders: 14 entries with the folders, 4 pages of 4.
    let parquets: Vec<String> = (0..11)
        .map(
            |i| if i % 2 == 0 { format!("data/part-{i:02}.parquet") } else { format!("data/more/part-{i:02}.parquet") },
        )
        .collect();
    let mut changes: Vec<(&str, Option<Vec<u8>>)> = parquets.iter().map(|p| (p.as_str(), Some(file(2, p)))).collect();
    changes.push(("README.md", Some(b"# tiny".to_vec())));
    hub.commit(&changes);
    hub.state.lock().unwrap().page_size = Some(4);
    let sb = sandbox(&hub);

    let plan = sb.plan(&[]);
    let targets: Vec<String> = actions(&plan).into_iter().map(|(target, ..)| target).collect();
    let mut expected: Vec<String> = parquets.iter().map(|p| format!("meta/{p}")).collect();
    expected.sort();
    assert_eq!(targets, expected);
    // Each page was asked for once, through the Link the one before gave, with the listing's parameters kept.
    let pages: Vec<String> =
        hub.requests().iter().filter(|r| r.path().contains("/tree/")).map(|r| r.query().to_string()).collect();
    let query = "recursive=true&expand=true";
    assert_eq!(
        pages,
        [query.to_string(), format!("{query}&cursor=4"), format!("{query}&cursor=8"), format!("{query}&cursor=12")]
    );
}

#[test]
fn downloads_redirected_to_the_cdn_go_there_without_the_token() {
    let hub = HubMock::start("laion/tiny");
    hub.state.lock().unwrap().token = Some("hf_secret_token".into());
    let a = file(400, "a");
    hub.commit(&[("part-0.parquet", Some(a.clone()))]);
    let cdn = hub.start_cdn();
    // The CDN cuts the first download: the resumed request is redirected again, with its Range.
    hub.state.lock().unwrap().cut_once = Some(("part-0.parquet".into(), 1000));
    let sb = sandbox(&hub);
    sb.build(&[]);
    assert_eq!(std::fs::read(sb.store().join("pipeline/meta/part-0.parquet")).unwrap(), a);

    // The Hub refuses requests without the token, so each one had it; the CDN saw none.
    let requests = hub.requests();
    assert!(requests.iter().all(|r| r.header("Authorization") == Some("Bearer hf_secret_token")), "{requests:?}");
    let downloads = cdn.requests();
    assert!(downloads.iter().all(|r| r.header("Authorization").is_none()), "{downloads:?}");
    let ranges: Vec<Option<&str>> = downloads.iter().map(|r| r.header("Range")).collect();
    assert_eq!(ranges, [None, Some("bytes=1000-")]);
    assert!(downloads.iter().all(|r| r.path() == format!("/laion/tiny/{}", hub_mock::sha256(&a))));
}

#[test]
fn a_renamed_repo_is_followed_within_the_hub_with_the_token() {
    let hub = HubMock::start("laion/tiny");
    {
        let mut st = hub.state.lock().unwrap();
        st.token = Some("hf_secret_token".into());
        st.renamed_from = Some("laion/tiny-old".into());
    }
    let a = file(3, "a");
    hub.commit(&[("part-0.parquet", Some(a.clone()))]);
    let mut sb = Sandbox::new(&PIPELINE.replace("laion/tiny", "laion/tiny-old"));
    sb.env.push(("HF_ENDPOINT".into(), hub.endpoint()));
    sb.env.push(("HF_TOKEN".into(), "hf_secret_token".into()));
    sb.build(&[]);
    assert_eq!(std::fs::read(sb.store().join("pipeline/meta/part-0.parquet")).unwrap(), a);
    let requests = hub.requests();
    assert!(requests.iter().any(|r| r.path().contains("/laion/tiny-old/resolve/")), "{requests:?}");
    assert!(requests.iter().any(|r| r.path().contains("/laion/tiny/resolve/")), "{requests:?}");
    assert!(requests.iter().all(|r| r.header("Authorization") == Some("Bearer hf_secret_token")), "{requests:?}");
}

#[test]
fn a_next_page_on_another_server_is_refused_and_never_sees_the_token() {
    let hub = HubMock::start("laion/tiny");
    let elsewhere = http::Server::start(|_| http::Reply::ok("application/json", "[]"));
    let parquets: Vec<String> = (0..5).map(|i| format!("data/part-{i}.parquet")).collect();
    hub.commit(&parquets.iter().map(|p| (p.as_str(), Some(file(2, p)))).collect::<Vec<_>>());
    {
        let mut st = hub.state.lock().unwrap();
        st.page_size = Some(2);
        st.next_link_base = Some(elsewhere.url(""));
    }
    let sb = sandbox(&hub);
    let run = sb.run(&["plan"]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    let named = format!("the Hub names the listing's next page at {}", elsewhere.url("/api/datasets/laion/tiny/tree/"));
    assert!(run.stderr.contains(&named) && run.stderr.contains("check HF_ENDPOINT"), "{}", run.stderr);
    let seen = elsewhere.requests();
    assert!(seen.iter().all(|r| r.header("Authorization").is_none()), "{seen:?}");
    assert!(seen.is_empty(), "the link is not followed at all: {seen:?}");
    assert!(!run.stderr.contains("hf_secret_token"));
}

/// A one-file repo whose downloads go to a CDN that always answers `status`; the build's run and the CDN.
fn build_through_a_cdn_answering(status: u16, body: &'static str, args: &[&str]) -> (crate::common::Run, http::Server) {
    let hub = HubMock::start("laion/tiny");
    hub.commit(&[("part-0.parquet", Some(file(3, "a")))]);
    let cdn = http::Server::start(move |_| http::Reply::status(status, body));
    hub.state.lock().unwrap().cdn = Some(cdn.url(""));
    let run = sandbox(&hub).run(&[&["build"], args].concat());
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    (run, cdn)
}

#[test]
fn a_refusal_from_the_cdn_is_not_blamed_on_the_token() {
    let (run, cdn) = build_through_a_cdn_answering(404, "NoSuchKey", &[]);
    let said = format!("{}{}", run.stdout, run.stderr);
    let expected = format!("HTTP 404 from {}, where the Hub redirected the download", cdn.url(""));
    assert!(said.contains(&expected), "{said}");
    assert!(!said.contains("HF_TOKEN") && !said.contains("signed-for-one-hour"), "{said}");
}

#[test]
fn a_download_that_keeps_failing_is_tried_once_per_retry_of_the_target_budget() {
    // Every layer draws on the target's one budget: with --retries 2, three requests in all, not the
    // downloader's attempts times the target's.
    let (run, cdn) = build_through_a_cdn_answering(503, "SlowDown", &["--retries", "2"]);
    assert!(run.stderr.contains("HTTP 503 from"), "{}", run.stderr);
    assert_eq!(cdn.requests().len(), 3, "{:?}", cdn.requests());
}

/// A one-file repo whose downloads go to a CDN that answers `reply` to every request; the run, the CDN, and
/// the file's size.
fn build_through_a_cdn_replying(
    reply: impl Fn() -> http::Reply + Send + Sync + 'static,
    args: &[&str],
) -> (crate::common::Run, http::Server, usize) {
    let hub = HubMock::start("laion/tiny");
    let bytes = file(50, "a");
    let size = bytes.len();
    hub.commit(&[("part-0.parquet", Some(bytes))]);
    let cdn = http::Server::start(move |_| reply());
    hub.state.lock().unwrap().cdn = Some(cdn.url(""));
    let started = std::time::Instant::now();
    let run = sandbox(&hub).run(&[&["build"], args].concat());
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "the download gave up in time");
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    (run, cdn, size)
}

#[test]
fn a_short_2xx_body_is_a_failed_attempt_and_the_budget_ends_it() {
    // A mirror's HTML error page served as 200: before, the loop asked again at once, forever.
    let (run, cdn, size) = build_through_a_cdn_replying(
        || http::Reply::Full { status: 200, headers: vec![], body: b"<html>mirror error</html>".to_vec() },
        &["--retries", "2"],
    );
    let said = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(cdn.requests().len(), 3, "one attempt and two retries: {:?}", cdn.requests());
    assert!(said.contains("GET ") && said.contains("/datasets/laion/tiny/resolve/"), "names the URL: {said}");
    assert!(said.contains(&format!("of {size}")), "says how far it got of the file's size: {said}");
    assert!(said.contains("gave up after 3 attempts"), "{said}");
    assert!(!said.contains("<html>"), "{said}");
}

#[test]
fn a_repeated_416_is_a_failed_attempt_with_backoff() {
    let (run, cdn, _) =
        build_through_a_cdn_replying(|| http::Reply::status(416, "range not satisfiable"), &["--retries", "2"]);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(cdn.requests().len(), 3, "{:?}", cdn.requests());
    assert!(said.contains("HTTP 416"), "{said}");
    // Backoff: the default policy waits at least 125 ms then 250 ms between the three requests.
    let times: Vec<_> = cdn.requests().iter().map(|r| r.at).collect();
    assert!(times[2] - times[0] >= std::time::Duration::from_millis(375), "{times:?}");
}

#[test]
fn an_empty_206_makes_no_progress_and_counts_as_an_attempt() {
    let (run, cdn, _) = build_through_a_cdn_replying(
        || http::Reply::Full { status: 206, headers: vec![], body: Vec::new() },
        &["--retries", "1"],
    );
    let said = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(cdn.requests().len(), 2, "{:?}", cdn.requests());
    assert!(said.contains("added nothing"), "{said}");
}

#[test]
fn a_body_longer_than_the_lfs_size_is_an_error_naming_the_url_and_is_not_kept() {
    // 8 MiB where the listing says a few KB: before, all of it was written (and any length would be).
    let (run, cdn, size) = build_through_a_cdn_replying(
        || http::Reply::Full { status: 200, headers: vec![], body: vec![b'x'; 8 << 20] },
        &["--retries", "2"],
    );
    let said = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(cdn.requests().len(), 1, "not retried: the server serves something else: {:?}", cdn.requests());
    assert!(said.contains(&format!("the body is longer than the {size} bytes expected")), "{said}");
    assert!(said.contains("/datasets/laion/tiny/resolve/"), "{said}");
}

#[test]
fn a_listing_whose_next_page_is_itself_is_not_followed_for_ever() {
    // A Hub (or a proxy in front of it) whose tree listing names itself as the next page: before, planning
    // asked for it again and again.
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let hub = http::Server::start(move |r| {
        if r.path().ends_with("/revision/main") {
            return http::Reply::ok("application/json", format!(r#"{{"id":"laion/tiny","sha":"{sha}"}}"#).into_bytes());
        }
        let this = format!("http://{}{}", r.header("Host").unwrap_or_default(), r.target);
        let entry = r#"[{"type":"file","path":"part-0.parquet","size":3,"oid":"abc"}]"#;
        http::Reply::ok("application/json", entry.as_bytes().to_vec())
            .with_header("Link", &format!("<{this}>; rel=\"next\""))
    });
    let mut sb = Sandbox::new(PIPELINE);
    sb.env.push(("HF_ENDPOINT".into(), hub.url("")));
    let run = sb.run(&["plan"]);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(said.contains("which was already read: its paging loops"), "{said}");
    assert_eq!(hub.requests().iter().filter(|r| r.path().contains("/tree/")).count(), 1, "{:?}", hub.requests());
}
