//! `dsmake worker`: builds one target from its job, in a scratch folder, then publishes the outputs and,
//! last, the manifest. Local and remote builds both come through here.

use super::job::{Expected, FORMAT, Job, JobFile};
use crate::kind::{BuildCx, Cancel, LocalInput, MemoryBudget};
use crate::kinds;
use crate::retry::Transient;
use crate::store::manifest::{self, Manifest, OutputFile};
use crate::store::{ObjectMeta, ReadLimit, Store, TooLarge, join, manifest_path, version_tag};
use crate::util::hash_file;
use anyhow::{Context, anyhow, bail};
use rayon::prelude::*;
use std::path::Path;
use std::time::{Instant, SystemTime};

#[derive(Debug)]
pub struct Outcome {
    pub manifest: Manifest,
    pub manifest_meta: ObjectMeta,
}

/// Parses a serialised job and builds it, within the process's memory budget.
pub fn run_json(job: &str, store: &dyn Store, cancel: &Cancel, memory: &MemoryBudget) -> anyhow::Result<Outcome> {
    let job: Job = serde_json::from_str(job).context("invalid job description")?;
    if job.job_format != FORMAT {
        bail!(
            "job format {} is not {FORMAT}: the worker and the planner are different dsmake versions",
            job.job_format
        );
    }
    run(&job, store, cancel, memory)
}

pub fn run(job: &Job, store: &dyn Store, cancel: &Cancel, memory: &MemoryBudget) -> anyhow::Result<Outcome> {
    let kind = kinds::lookup(&job.key_parts.kind)
        .ok_or_else(|| anyhow!("unknown step kind `{}` in job for {}", job.key_parts.kind, job.target))?;
    if kind.version() != job.key_parts.kind_version {
        bail!(
            "kind `{}` is version {} here but the job wants {}: use the same dsmake for planning and work",
            kind.name(),
            kind.version(),
            job.key_parts.kind_version
        );
    }
    let started_at = SystemTime::now();
    let clock = Instant::now();
    let scratch = super::scratch::Scratch::new(&store.scratch_root())?;
    let (out_dir, work_dir, in_dir) =
        (scratch.path().join("out"), scratch.path().join("work"), scratch.path().join("in"));
    for dir in [&out_dir, &work_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }

    let inputs = job
        .inputs
        .iter()
        .map(|input| {
            let what = || format!("input {}", input.target);
            let files = local_files(store, &input.files, &in_dir, &input.target, input.expect.as_ref(), what)?;
            Ok(LocalInput { target: input.target.clone(), shard: input.shard.clone(), files, rows: input.rows })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let previous_dir = scratch.path().join("previous");
    let previous = match &job.retry {
        Some(retry) => {
            let what = || format!("the last build of {}", job.target);
            local_files(store, &retry.previous, &previous_dir, &job.target, retry.expect.as_ref(), what)?
        }
        None => Vec::new(),
    };

    let cx = BuildCx {
        pipeline: &job.pipeline,
        step: &job.step,
        shard: &job.shard,
        target: &job.target,
        coords: &job.key_parts.coords,
        base_dir: &job.base_dir,
        allow_hosts: &job.allow_hosts,
        inputs,
        out_dir: &out_dir,
        work_dir: &work_dir,
        cancel,
        memory,
        previous,
    };
    let built = kind.build(&job.key_parts.settings, &cx)?;
    cancel.check()?;
    let mut outputs: Vec<OutputFile> = built
        .outputs
        .par_iter()
        .map(|name| {
            let path = out_dir.join(name);
            let size =
                std::fs::metadata(&path).with_context(|| format!("declared output `{name}` was not written"))?.len();
            Ok(OutputFile { name: name.clone(), size, blake3: hash_file(&path)?, version: String::new() })
        })
        .collect::<anyhow::Result<_>>()?;
    // An old manifest would vouch for outputs while they are being replaced: remove it before they are. (Not
    // earlier: a build that fails leaves the last one standing.) Under the manifest's lock where the store has
    // one: another build's manifest cannot land between the removal and the last output, where it would vouch
    // for a mix of both builds' bytes if this one were killed before its own.
    let manifest_at = manifest_path(&job.dir, &job.shard);
    let held = store.hold(&manifest_at)?;
    store.delete(&manifest_at)?;
    let record_versions = store.versions_identify_content();
    let mut published = Vec::with_capacity(outputs.len());
    for output in &mut outputs {
        cancel.check()?;
        let meta = store.publish(&out_dir.join(&output.name), &join(&job.dir, &output.name))?;
        if record_versions {
            output.version = meta.version.clone();
        }
        published.push(meta);
    }
    drop(held);

    let manifest = Manifest {
        manifest_format: manifest::FORMAT,
        target: job.target.clone(),
        key: job.key.clone(),
        key_parts: job.key_parts.clone(),
        outputs,
        rows: built.rows,
        failures: built.failures,
        retryable: built.retryable,
        retry: job.retry.as_ref().map(|r| r.of.clone()),
        stats: built.stats,
        started_at: humantime::format_rfc3339_seconds(started_at).to_string(),
        duration_s: clock.elapsed().as_secs_f64(),
        dsmake_version: env!("CARGO_PKG_VERSION").to_string(),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
    };
    commit(store, &job.dir, &manifest_at, manifest, &published, &scratch.path().join("check"))
}

/// How many times a commit reads the manifest again after another build changed it in between.
const COMMIT_ATTEMPTS: usize = 8;

/// Puts the manifest of a target whose outputs this build has just published, last. Outputs go to fixed
/// names, so another build of the same target (a duplicate remote task) may have published over them, or
/// may yet: as Bazel trusts an output only by its digest, a manifest is written only over objects that were
/// checked to be its own, and only if the manifest checked is still the one there (compare and swap, as git
/// updates a ref). Then whichever build publishes last is the last to check, and no manifest outlives a check
/// that its objects failed.
///
/// Uncontended, this is one conditional put. If another build's manifest is there: it is adopted when the
/// objects are the bytes it records; ours replaces it when they are ours; when they mix both builds', no
/// manifest may vouch for them: it is removed and the target fails as transient, so that a retry or the next
/// build makes it whole. With another key, two pipelines share a folder.
///
/// Where the store can hold the manifest ([`Store::hold`], a local folder), all of this is under its lock, as
/// another build's removal of the manifest and publishing of its outputs are: uncontended, ours goes in only
/// if every output is still the object this build published (its size and version, a stat each), so that a
/// build that published over ours and died before its manifest leaves none.
fn commit(
    store: &dyn Store,
    dir: &str,
    manifest_at: &str,
    ours: Manifest,
    published: &[ObjectMeta],
    check_dir: &Path,
) -> anyhow::Result<Outcome> {
    let target = &ours.target;
    let bytes = serde_json::to_vec_pretty(&ours)?;
    let held = store.hold(manifest_at)?;
    let still_ours = || -> anyhow::Result<bool> {
        for meta in published {
            let now = store.head(&meta.path)?;
            if now.as_ref().is_none_or(|now| now.size != meta.size || now.version != meta.version) {
                return Ok(false);
            }
        }
        Ok(true)
    };
    // Replaced since: the loop below decides by content (adopt theirs, or fail as replaced).
    if (held.is_none() || still_ours()?)
        && let Some(manifest_meta) = store.write_if_absent(manifest_at, &bytes)?
    {
        return Ok(Outcome { manifest: ours, manifest_meta });
    }
    for _ in 0..COMMIT_ATTEMPTS {
        let Some((current, tag)) = store.read_tagged(manifest_at, ReadLimit::MANIFEST)? else {
            // Removed meanwhile (a build that found the objects mixed, or one about to publish over them):
            // ours goes in only over objects that are still ours.
            if let Some(differs) = differing_output(store, dir, &ours.outputs, check_dir)? {
                return Err(replaced(target, dir, &differs));
            }
            match store.write_if_absent(manifest_at, &bytes)? {
                Some(manifest_meta) => return Ok(Outcome { manifest: ours, manifest_meta }),
                None => continue,
            }
        };
        let theirs = Manifest::parse(&current, manifest_at)?;
        if theirs.key != ours.key {
            bail!("{} was published by another build with a different key: two pipelines write to {}", target, dir);
        }
        let Some(theirs_differ) = differing_output(store, dir, &theirs.outputs, check_dir)? else {
            // As read, not listed: a listing of a folder of 10⁶ manifests for one would cost more than the
            // index's reading it again, which is all a version that is not the listed one costs (a local
            // store's tag is a digest, its listed version a time).
            let manifest_meta = ObjectMeta { path: manifest_at.to_string(), size: current.len() as u64, version: tag };
            return Ok(Outcome { manifest: theirs, manifest_meta });
        };
        match differing_output(store, dir, &ours.outputs, check_dir)? {
            // The other build's manifest describes bytes that ours replaced: ours is the true one.
            None => match store.write_if_tag(manifest_at, &bytes, &tag)? {
                Some(manifest_meta) => return Ok(Outcome { manifest: ours, manifest_meta }),
                None => continue,
            },
            Some(ours_differ) => {
                // Only the manifest that was checked: one written since was checked by its own build.
                store.delete_if_tag(manifest_at, &tag)?;
                return Err(Transient(format!(
                    "{}: a concurrent build of the same key made different bytes and the two builds' outputs are \
                     mixed in {} ({theirs_differ} for the other build's manifest; {ours_differ} for this one's); \
                     removed the manifest so that no build trusts them, build it again",
                    target, dir
                ))
                .into());
            }
        }
    }
    Err(Transient(format!(
        "{target}: its manifest kept changing while this build checked its outputs ({COMMIT_ATTEMPTS} times): other \
         builds of the same target are publishing; build it again"
    ))
    .into())
}

/// Our outputs were replaced by another build's since we published them.
fn replaced(target: &str, dir: &str, differs: &str) -> anyhow::Error {
    Transient(format!(
        "{target}: another build of the same key published over this one's outputs in {dir} ({differs}) and \
         removed its manifest; build it again"
    ))
    .into()
}

/// The first of `outputs` whose object in `dir` lacks the recorded size or blake3, described; `None` when all
/// match. Objects of stores without local paths are downloaded into `check_dir` to be hashed, unless the store
/// reports the very version (S3: the ETag) the manifest recorded for them: as Bazel trusts a digest it
/// recorded, that version is those bytes, and a HEAD costs a round trip where a download costs the object.
fn differing_output(
    store: &dyn Store,
    dir: &str,
    outputs: &[OutputFile],
    check_dir: &Path,
) -> anyhow::Result<Option<String>> {
    for (n, output) in outputs.iter().enumerate() {
        let at = join(dir, &output.name);
        let (path, fetched) = match store.local_path(&at) {
            Some(path) => (path, false),
            None => {
                if store.versions_identify_content() && version_tag(&output.version) != 0 {
                    match store.head(&at)? {
                        None => return Ok(Some(format!("{at} is missing"))),
                        Some(meta) if meta.size != output.size => {
                            return Ok(Some(wrong_size(&at, meta.size, output.size)));
                        }
                        Some(meta) if meta.version == output.version => continue,
                        // Another version may still hold the same bytes (uploaded again): the hash decides.
                        Some(_) => {}
                    }
                }
                std::fs::create_dir_all(check_dir).with_context(|| format!("cannot create {}", check_dir.display()))?;
                let dest = check_dir.join(format!("{n}"));
                match store.fetch(&at, &dest, output.size) {
                    Ok(()) => (dest, true),
                    Err(e) => match e.downcast_ref::<TooLarge>() {
                        Some(large) => {
                            return Ok(Some(match large.size {
                                Some(found) => wrong_size(&at, found, output.size),
                                None => format!("{at} is larger than {} bytes", output.size),
                            }));
                        }
                        None => return Err(e.context(format!("reading {at} back to check it"))),
                    },
                }
            }
        };
        let found = match std::fs::metadata(&path) {
            Ok(meta) if meta.len() != output.size => Some(wrong_size(&at, meta.len(), output.size)),
            Ok(_) => {
                let digest = hash_file(&path)?;
                (digest != output.blake3).then(|| format!("{at} has blake3 {digest}, not {}", output.blake3))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!("{at} is missing")),
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
        };
        if fetched {
            let _ = std::fs::remove_file(&path);
        }
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

fn wrong_size(at: &str, found: u64, recorded: u64) -> String {
    format!("{at} is {found} bytes, not {recorded}")
}

/// Local inputs larger than this are checked by size only: hashing them on every build would cost more than
/// the check is worth where no download could have cut or mixed them.
const LOCAL_HASH_LIMIT: u64 = 256 << 20;

/// Checks an input's files, as fetched or found, against what its manifest records: every file's size, and
/// its blake3 where the file was downloaded (always) or is small. A mismatch is transient: a concurrent
/// rebuild of the input, with a command that is not deterministic, explains it, and a retry reads the new
/// manifest.
fn verify_input(
    store: &dyn Store,
    target: &str,
    expect: &Expected,
    files: &[JobFile],
    local: &[std::path::PathBuf],
) -> anyhow::Result<()> {
    let changed = |at: &str, mismatch: String| input_changed(target, at, &mismatch);
    // Sizes first, for every file (a stat); then digests, only where they are worth computing.
    let mut to_hash = Vec::new();
    for ((file, path), output) in files.iter().zip(local).zip(&expect.outputs) {
        let JobFile::Store(at) = file else { continue };
        let size = std::fs::metadata(path).with_context(|| format!("cannot stat input {}", path.display()))?.len();
        if size != output.size {
            return Err(changed(at, format!("is {size} bytes, but its manifest records {}", output.size)));
        }
        if store.local_path(at).is_none() || size <= LOCAL_HASH_LIMIT {
            to_hash.push((at, path, output.clone()));
        }
    }
    // The step index keeps no digests: read them from the input's manifest, once, when one is needed.
    if to_hash.iter().any(|(_, _, o)| o.blake3.is_empty()) {
        let rebuilt = |what: String| -> anyhow::Error {
            Transient(format!("input {target} {what} while this build ran: its files may have changed")).into()
        };
        let bytes = store
            .read(&expect.manifest, ReadLimit::MANIFEST)?
            .ok_or_else(|| rebuilt(format!("lost its manifest {}", expect.manifest)))?;
        let manifest = Manifest::parse(&bytes, &expect.manifest)?;
        if manifest.key != expect.key {
            return Err(rebuilt(format!("was rebuilt with key {}, not {}", manifest.key, expect.key)));
        }
        for (_, _, output) in &mut to_hash {
            if let Some(found) = manifest.outputs.iter().find(|o| o.name == output.name) {
                output.blake3 = found.blake3.clone();
            }
        }
    }
    to_hash.par_iter().try_for_each(|(at, path, output)| {
        if output.blake3.is_empty() {
            return Ok(());
        }
        let digest = hash_file(path)?;
        match digest == output.blake3 {
            true => Ok(()),
            false => Err(changed(at, format!("has blake3 {digest}, but its manifest records {}", output.blake3))),
        }
    })
}

/// An input file of `target` at `at` that is not what its manifest records (`mismatch` says how).
fn input_changed(target: &str, at: &str, mismatch: &str) -> anyhow::Error {
    Transient(format!(
        "input file {at} of {target} {mismatch}: it changed after its manifest was written (a concurrent rebuild, \
         or damage to the store); build again, and rebuild {target} if this recurs"
    ))
    .into()
}

/// The local paths of `files` (fetched into `dir` where the store is remote; `what` they are, for errors),
/// checked against what their manifest says where `expect` is given.
fn local_files(
    store: &dyn Store,
    files: &[JobFile],
    dir: &Path,
    target: &str,
    expect: Option<&Expected>,
    what: impl Fn() -> String,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let local = files
        .iter()
        .enumerate()
        .map(|(n, file)| {
            let size = expect.and_then(|e| e.outputs.get(n)).map(|o| o.size);
            local_file(store, file, dir, n, size).map_err(|e| match (e.downcast_ref::<TooLarge>(), file) {
                (Some(large), JobFile::Store(at)) => input_changed(
                    target,
                    at,
                    &format!("is larger than the {} bytes its manifest records", large.limit.bytes),
                ),
                _ => e,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(what)?;
    if let Some(expect) = expect {
        verify_input(store, target, expect, files, &local)?;
    }
    Ok(local)
}

/// `size`: what its manifest records, which bounds a download (a store file comes with its manifest's record).
fn local_file(
    store: &dyn Store,
    file: &JobFile,
    in_dir: &Path,
    n: usize,
    size: Option<u64>,
) -> anyhow::Result<std::path::PathBuf> {
    match file {
        JobFile::Local(path) => Ok(path.clone()),
        JobFile::Store(path) => match store.local_path(path) {
            Some(local) => Ok(local),
            None => {
                std::fs::create_dir_all(in_dir)?;
                let name = path.rsplit('/').next().unwrap_or("input");
                let dest = in_dir.join(format!("{n}-{name}"));
                let size = size.with_context(|| format!("{path}: no manifest records its size"))?;
                store.fetch(path, &dest, size)?;
                Ok(dest)
            }
        },
    }
}

/// Removes scratch folders left by workers that no longer run (a build killed with -9); see `exec::scratch`.
pub fn clean_abandoned_scratch(store: &dyn Store) {
    super::scratch::clean_abandoned(&store.scratch_root());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::interleaved::Interleaved;
    use crate::store::local::LocalStore;
    use crate::store::manifest::KeyParts;

    fn manifest(outputs: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            manifest_format: manifest::FORMAT,
            target: "step/s0".into(),
            key: "k1".into(),
            key_parts: KeyParts {
                kind: "command".into(),
                kind_version: 1,
                settings: serde_json::json!({}),
                shard: "s0".into(),
                coords: serde_json::Value::Null,
                inputs: Vec::new(),
                source: None,
            },
            outputs: outputs
                .iter()
                .map(|(name, bytes)| OutputFile {
                    version: String::new(),
                    name: (*name).into(),
                    size: bytes.len() as u64,
                    blake3: blake3::hash(bytes).to_hex().to_string(),
                })
                .collect(),
            rows: None,
            failures: None,
            retryable: None,
            retry: None,
            stats: serde_json::Value::Null,
            started_at: String::new(),
            duration_s: 0.0,
            dsmake_version: String::new(),
            host: String::new(),
        }
    }

    /// A store holding `objects` in `step/` and `theirs` as the manifest of `step/s0`.
    fn store_with(objects: &[(&str, &[u8])], theirs: &Manifest) -> (tempfile::TempDir, LocalStore, String) {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::new(root.path().to_path_buf());
        for (name, bytes) in objects {
            store.write(&join("step", name), bytes).unwrap();
        }
        let at = manifest_path("step", "s0");
        store.write(&at, &serde_json::to_vec(theirs).unwrap()).unwrap();
        (root, store, at)
    }

    fn stored_manifest(store: &LocalStore, at: &str) -> Option<Manifest> {
        store.read(at, ReadLimit::MANIFEST).unwrap().map(|b| Manifest::parse(&b, at).unwrap())
    }

    #[test]
    fn a_concurrent_manifest_is_adopted_when_its_objects_match_it() {
        let theirs = manifest(&[("a", b"AAAA"), ("b", b"BBBB")]);
        let (root, store, at) = store_with(&[("a", b"AAAA"), ("b", b"BBBB")], &theirs);
        let ours = manifest(&[("a", b"aaaa"), ("b", b"bbbb")]);
        let outcome = commit(&store, "step", &at, ours, &[], &root.path().join("check")).unwrap();
        assert_eq!(outcome.manifest.outputs, theirs.outputs);
    }

    #[test]
    fn our_manifest_replaces_one_that_describes_other_bytes_than_those_there() {
        // Same sizes, other bytes: a size check alone would adopt the other build's manifest.
        let theirs = manifest(&[("a", b"AAAA"), ("b", b"BBBB")]);
        let (root, store, at) = store_with(&[("a", b"aaaa"), ("b", b"bbbb")], &theirs);
        let ours = manifest(&[("a", b"aaaa"), ("b", b"bbbb")]);
        let outcome = commit(&store, "step", &at, ours.clone(), &[], &root.path().join("check")).unwrap();
        assert_eq!(outcome.manifest.outputs, ours.outputs);
        assert_eq!(stored_manifest(&store, &at).unwrap().outputs, ours.outputs, "ours is written over theirs");
    }

    #[test]
    fn mixed_outputs_of_two_builds_leave_no_manifest_and_a_transient_error() {
        let theirs = manifest(&[("a", b"AAAA"), ("b", b"BBBB")]);
        let (root, store, at) = store_with(&[("a", b"AAAA"), ("b", b"bbbb")], &theirs);
        let ours = manifest(&[("a", b"aaaa"), ("b", b"bbbb")]);
        let err = commit(&store, "step", &at, ours, &[], &root.path().join("check")).unwrap_err();
        assert!(crate::retry::is_transient(&err), "{err:#}");
        let text = format!("{err:#}");
        assert!(text.contains("step/b has blake3") && text.contains("step/a has blake3"), "{text}");
        assert!(stored_manifest(&store, &at).is_none(), "no manifest vouches for mixed bytes");
    }

    #[test]
    fn a_remote_object_larger_than_its_manifest_records_differs_by_its_size_and_is_not_downloaded() {
        let theirs = manifest(&[("a", b"AAAA"), ("b", b"BBBB")]);
        let (root, inner, at) = store_with(&[("a", b"AAAA"), ("b", b"a larger b")], &theirs);
        let store = Interleaved::new(&inner, true);
        let ours = manifest(&[("a", b"aaaa"), ("b", b"bbbb")]);
        let err = commit(&store, "step", &at, ours, &[], &root.path().join("check")).unwrap_err();
        assert!(crate::retry::is_transient(&err), "{err:#}");
        assert!(format!("{err:#}").contains("(step/b is 10 bytes, not 4 for the other build's manifest"), "{err:#}");
        assert!(!root.path().join("check/1").exists(), "not downloaded");
    }

    #[test]
    fn a_concurrent_manifest_with_another_key_is_refused() {
        let mut theirs = manifest(&[("a", b"AAAA")]);
        theirs.key = "k2".into();
        let (root, store, at) = store_with(&[("a", b"AAAA")], &theirs);
        let err = commit(&store, "step", &at, manifest(&[("a", b"AAAA")]), &[], &root.path().join("c")).unwrap_err();
        assert!(format!("{err:#}").contains("different key"), "{err:#}");
    }

    /// `m` with each output's version set as a remote store records it at upload (see `Interleaved`).
    fn uploaded(mut m: Manifest) -> Manifest {
        for output in &mut m.outputs {
            output.version = output.blake3.clone();
        }
        m
    }

    #[test]
    fn a_remote_object_with_the_recorded_version_is_not_downloaded_to_be_checked() {
        let theirs = uploaded(manifest(&[("a", b"AAAA"), ("b", b"BBBB")]));
        let (root, inner, at) = store_with(&[("a", b"AAAA"), ("b", b"BBBB")], &theirs);
        let store = Interleaved::new(&inner, true);
        let ours = uploaded(manifest(&[("a", b"aaaa"), ("b", b"bbbb")]));
        let outcome = commit(&store, "step", &at, ours, &[], &root.path().join("check")).unwrap();
        assert_eq!(outcome.manifest.outputs, theirs.outputs, "their manifest is adopted");
        assert_eq!(store.fetched(), 0, "versions vouched for both");

        // A version the manifest does not record (the same bytes uploaded again): downloaded and hashed.
        let mut other = theirs.clone();
        other.outputs[1].version = "an-etag-of-another-upload".into();
        inner.write(&at, &serde_json::to_vec(&other).unwrap()).unwrap();
        let ours = uploaded(manifest(&[("a", b"aaaa"), ("b", b"bbbb")]));
        let outcome = commit(&store, "step", &at, ours, &[], &root.path().join("check")).unwrap();
        assert_eq!(outcome.manifest.outputs, other.outputs);
        assert_eq!(store.fetched(), 1, "only step/b was downloaded");

        // Bytes that differ are found either way, by size from the HEAD, by blake3 after a download.
        inner.write("step/b", b"XXXX").unwrap();
        inner.write(&at, &serde_json::to_vec(&theirs).unwrap()).unwrap();
        let ours = uploaded(manifest(&[("a", b"AAAA"), ("b", b"XXXX")]));
        let outcome = commit(&store, "step", &at, ours.clone(), &[], &root.path().join("check")).unwrap();
        assert_eq!(outcome.manifest.outputs, ours.outputs, "the objects are ours: ours replaces theirs");
    }

    #[test]
    fn a_manifest_checked_against_its_objects_is_not_written_over_a_later_builds() {
        // A stale manifest (A), our objects (B), and a third build (C) that publishes and commits its own
        // between our check and our write: an unconditional write would leave B's manifest over C's bytes.
        let a = manifest(&[("a", b"AAAA"), ("b", b"AAAA")]);
        let ours = manifest(&[("a", b"BBBB"), ("b", b"BBBB")]);
        let c = manifest(&[("a", b"CCCC"), ("b", b"CCCC")]);
        let (root, inner, at) = store_with(&[("a", b"BBBB"), ("b", b"BBBB")], &a);
        let store = Interleaved::new(&inner, false).before_swap(Box::new(|store: &LocalStore| {
            store.write("step/a", b"CCCC").unwrap();
            store.write("step/b", b"CCCC").unwrap();
            let (_, tag) = store.read_tagged(&manifest_path("step", "s0"), ReadLimit::MANIFEST).unwrap().unwrap();
            let written = store.write_if_tag(&manifest_path("step", "s0"), &serde_json::to_vec(&c).unwrap(), &tag);
            assert!(written.unwrap().is_some(), "C replaces A's manifest");
        }));
        let outcome = commit(&store, "step", &at, ours, &[], &root.path().join("check")).unwrap();
        assert_eq!(outcome.manifest.outputs, c.outputs, "the objects are C's: C's manifest is adopted");
        assert_eq!(stored_manifest(&inner, &at).unwrap().outputs, c.outputs);
    }

    #[test]
    fn a_build_that_published_over_ours_and_died_leaves_no_manifest_over_its_bytes() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::new(root.path().to_path_buf());
        let at = manifest_path("step", "s0");
        let publish = |name: &str, bytes: &[u8]| {
            let local = root.path().join("scratch");
            std::fs::write(&local, bytes).unwrap();
            store.publish(&local, &join("step", name)).unwrap()
        };
        let ours = manifest(&[("a", b"aaaa"), ("b", b"bbbb")]);
        let published = vec![publish("a", b"aaaa"), publish("b", b"bbbb")];
        // Another build of the same key publishes over ours, under the manifest's lock as a worker does (no
        // manifest to remove yet), and is killed before its own manifest. Same size: a size check would pass.
        let other_build = |bytes: &[u8]| {
            let _held = store.hold(&at).unwrap();
            publish("b", bytes);
        };
        other_build(b"BBBB");
        let err = commit(&store, "step", &at, ours.clone(), &published, &root.path().join("check")).unwrap_err();
        assert!(crate::retry::is_transient(&err), "{err:#}");
        assert!(format!("{err:#}").contains("published over this one's outputs"), "{err:#}");
        assert!(stored_manifest(&store, &at).is_none(), "no manifest vouches for the other build's bytes");
        // The same bytes published again are ours by content: the manifest goes in.
        other_build(b"bbbb");
        let outcome = commit(&store, "step", &at, ours.clone(), &published, &root.path().join("check")).unwrap();
        assert_eq!(stored_manifest(&store, &at).unwrap().outputs, ours.outputs);
        assert_eq!(outcome.manifest.outputs, ours.outputs);
    }

    #[test]
    fn conditional_writes_and_deletes_of_the_local_store_compare_the_content() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::new(root.path().to_path_buf());
        assert!(store.read_tagged("x/m.json", ReadLimit::MANIFEST).unwrap().is_none());
        store.write("x/m.json", b"one").unwrap();
        let (bytes, tag) = store.read_tagged("x/m.json", ReadLimit::MANIFEST).unwrap().unwrap();
        assert_eq!(bytes, b"one");
        store.write("x/m.json", b"two").unwrap();
        assert!(store.write_if_tag("x/m.json", b"three", &tag).unwrap().is_none(), "changed since it was read");
        assert!(!store.delete_if_tag("x/m.json", &tag).unwrap());
        let (_, tag) = store.read_tagged("x/m.json", ReadLimit::MANIFEST).unwrap().unwrap();
        assert!(store.write_if_tag("x/m.json", b"three", &tag).unwrap().is_some());
        assert_eq!(store.read("x/m.json", ReadLimit::MANIFEST).unwrap().unwrap(), b"three");
        let (_, tag) = store.read_tagged("x/m.json", ReadLimit::MANIFEST).unwrap().unwrap();
        assert!(store.delete_if_tag("x/m.json", &tag).unwrap());
        assert!(store.read("x/m.json", ReadLimit::MANIFEST).unwrap().is_none());
        assert!(store.write_if_tag("x/m.json", b"four", &tag).unwrap().is_none(), "gone: nothing to swap");
    }

    fn expect_for(
        store: &LocalStore,
        at: &str,
        published: &Manifest,
    ) -> (Expected, Vec<JobFile>, Vec<std::path::PathBuf>) {
        // As the planner hands it over: sizes from the index, no digests.
        let outputs: Vec<OutputFile> =
            published.outputs.iter().map(|o| OutputFile { blake3: String::new(), ..o.clone() }).collect();
        let files: Vec<JobFile> = outputs.iter().map(|o| JobFile::Store(join("step", &o.name))).collect();
        let local = outputs.iter().map(|o| store.local_path(&join("step", &o.name)).unwrap()).collect();
        (Expected { manifest: at.into(), key: published.key.clone(), outputs }, files, local)
    }

    #[test]
    fn inputs_that_match_their_manifest_pass() {
        let published = manifest(&[("a", b"AAAA")]);
        let (_root, store, at) = store_with(&[("a", b"AAAA")], &published);
        let (expect, files, local) = expect_for(&store, &at, &published);
        verify_input(&store, "step/s0", &expect, &files, &local).unwrap();
    }

    #[test]
    fn an_input_with_the_right_size_and_other_bytes_is_a_transient_error_naming_it() {
        let published = manifest(&[("a", b"AAAA")]);
        let (_root, store, at) = store_with(&[("a", b"aaaa")], &published);
        let (expect, files, local) = expect_for(&store, &at, &published);
        let err = verify_input(&store, "step/s0", &expect, &files, &local).unwrap_err();
        assert!(crate::retry::is_transient(&err), "{err:#}");
        assert!(format!("{err:#}").contains("input file step/a of step/s0 has blake3"), "{err:#}");
    }

    #[test]
    fn an_input_of_another_size_or_rebuilt_with_another_key_is_a_transient_error() {
        let published = manifest(&[("a", b"AAAA")]);
        let (_root, store, at) = store_with(&[("a", b"AAA")], &published);
        let (expect, files, local) = expect_for(&store, &at, &published);
        let err = verify_input(&store, "step/s0", &expect, &files, &local).unwrap_err();
        assert!(crate::retry::is_transient(&err) && format!("{err:#}").contains("is 3 bytes"), "{err:#}");

        // Sizes that match, under a manifest that another key has replaced since the plan.
        store.write("step/a", b"AAAA").unwrap();
        let mut rebuilt = published.clone();
        rebuilt.key = "k2".into();
        store.write(&at, &serde_json::to_vec(&rebuilt).unwrap()).unwrap();
        let err = verify_input(&store, "step/s0", &expect, &files, &local).unwrap_err();
        assert!(crate::retry::is_transient(&err) && format!("{err:#}").contains("rebuilt with key k2"), "{err:#}");
    }

    #[test]
    fn a_retry_checks_the_last_builds_outputs_before_it_reads_them() {
        let published = manifest(&[("a", b"AAAA")]);
        let (root, store, at) = store_with(&[("a", b"aaaa")], &published);
        let (expect, previous, _) = expect_for(&store, &at, &published);
        let mut key_parts = published.key_parts.clone();
        key_parts.kind_version = kinds::lookup("command").unwrap().version();
        let job = Job {
            job_format: FORMAT,
            pipeline: "p".into(),
            target: "step/s0".into(),
            step: "step".into(),
            shard: "s0".into(),
            dir: "step".into(),
            key: "k2".into(),
            key_parts,
            inputs: Vec::new(),
            store: store.url(),
            base_dir: root.path().into(),
            allow_hosts: Vec::new(),
            retry: Some(super::super::job::JobRetry {
                of: manifest::RetryOf { of_key: "k1".into(), attempt: 1 },
                previous,
                expect: Some(expect),
            }),
        };
        let err = run(&job, &store, &Cancel::default(), &MemoryBudget::new(1 << 30, 1)).unwrap_err();
        assert!(crate::retry::is_transient(&err), "{err:#}");
        assert!(format!("{err:#}").contains("input file step/a of step/s0 has blake3"), "{err:#}");
    }
}
