//! The one glob dialect of pipeline files.

/// A glob as every kind that takes globs reads it (`files` paths, `hf-dataset` includes): ripgrep's matcher,
/// where `*`, `?` and `[...]` stay within one folder, `**` crosses folders (`**/*.csv` also matches a top-level
/// `a.csv`) and `{a,b}` is either.
pub fn glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(pattern).literal_separator(true).build()
}
