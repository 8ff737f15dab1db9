//! `{name}` templates in commands and output names. Only `{identifier}` is a placeholder, so awk programs
//! and shell `${VAR}` pass through untouched; `{{name}}` is a literal `{name}`.

fn identifier_at(text: &str) -> Option<&str> {
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len());
    let name = &text[..end];
    (!name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit())).then_some(name)
}

/// Expands `{name}` with `lookup`; an unknown name is an error that names it.
pub fn expand(template: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        let after_dollar = at > 0 && rest.as_bytes()[at - 1] == b'$';
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if let Some(name) = tail.strip_prefix('{').and_then(identifier_at)
            && tail[1 + name.len()..].starts_with("}}")
        {
            {
                out.push('{');
                out.push_str(name);
                out.push('}');
                rest = &tail[name.len() + 3..];
                continue;
            }
        }
        match identifier_at(tail) {
            Some(name) if !after_dollar && tail[name.len()..].starts_with('}') => {
                out.push_str(&lookup(name).ok_or_else(|| format!("unknown placeholder `{{{name}}}`"))?);
                rest = &tail[name.len() + 1..];
            }
            _ => {
                out.push('{');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Quotes a word for `sh`, leaving plain words alone.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain { word.to_string() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "shard" => Some("a.csv".into()),
            "input" => Some("/in/a b".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_and_escapes() {
        assert_eq!(expand("wc -l {input} > {shard}.n", &vars).unwrap(), "wc -l /in/a b > a.csv.n");
        assert_eq!(expand("echo {{shard}} {shard}", &vars).unwrap(), "echo {shard} a.csv");
    }

    #[test]
    fn leaves_awk_and_shell_braces_alone() {
        let awk = "awk '{ n[$2] += $1 } END {for (w in n) print n[w], w}}' {shard}";
        assert_eq!(expand(awk, &vars).unwrap(), "awk '{ n[$2] += $1 } END {for (w in n) print n[w], w}}' a.csv");
        assert_eq!(expand("echo ${HOME} {shard", &vars).unwrap(), "echo ${HOME} {shard");
    }

    #[test]
    fn rejects_unknown_placeholders() {
        assert_eq!(expand("{nope}", &vars).unwrap_err(), "unknown placeholder `{nope}`");
    }

    #[test]
    fn quotes_for_sh() {
        assert_eq!(shell_quote("/a/b.csv"), "/a/b.csv");
        assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
    }
}
