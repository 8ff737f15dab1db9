//! "Did you mean …" for names the user mistyped.

/// The closest candidate to `wrong`, if one is close enough to be a plausible typo.
pub fn closest<'a>(wrong: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(wrong, c), c))
        .filter(|(distance, c)| *distance <= (c.len().max(wrong.len()) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// A help line: "did you mean `x`?" when one is close, else the list of what is allowed.
pub fn help_for(wrong: &str, what: &str, candidates: &[&str]) -> String {
    match closest(wrong, candidates.iter().copied()) {
        Some(best) => format!("did you mean `{best}`?"),
        None if candidates.is_empty() => format!("this {what} takes no keys"),
        None => {
            format!("expected one of {}", candidates.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names_only() {
        assert_eq!(closest("grop_size", ["group_size", "run"]), Some("group_size"));
        assert_eq!(closest("outptus", ["outputs", "run"]), Some("outputs"));
        assert_eq!(closest("zzz", ["outputs", "run"]), None);
    }
}
