//! `{name}` templates in commands and output names. Only `{identifier}` is a placeholder, so awk programs
//! and shell `${VAR}` pass through untouched; `{{name}}` is a literal `{name}`.

fn identifier_at(text: &str) -> Option<&str> {
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len());
    let name = &text[..end];
    (!name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit())).then_some(name)
}

/// A piece of a template: literal text (with `{{name}}` already turned into `{name}`) or a placeholder.
#[derive(Debug, PartialEq)]
pub enum Segment<'a> {
    Text(String),
    Var(&'a str),
}

/// Splits a template into literal text and placeholders.
pub fn segments(template: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        let after_dollar = at > 0 && rest.as_bytes()[at - 1] == b'$';
        text.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if let Some(name) = tail.strip_prefix('{').and_then(identifier_at)
            && tail[1 + name.len()..].starts_with("}}")
        {
            text.push('{');
            text.push_str(name);
            text.push('}');
            rest = &tail[name.len() + 3..];
            continue;
        }
        match identifier_at(tail) {
            Some(name) if !after_dollar && tail[name.len()..].starts_with('}') => {
                out.push(Segment::Text(std::mem::take(&mut text)));
                out.push(Segment::Var(name));
                rest = &tail[name.len() + 1..];
            }
            _ => {
                text.push('{');
                rest = tail;
            }
        }
    }
    text.push_str(rest);
    out.push(Segment::Text(text));
    out
}

/// Expands `{name}` with `lookup`; an unknown name is an error that names it.
pub fn expand(template: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    for segment in segments(template) {
        match segment {
            Segment::Text(text) => out.push_str(&text),
            Segment::Var(name) => {
                out.push_str(&lookup(name).ok_or_else(|| format!("unknown placeholder `{{{name}}}`"))?)
            }
        }
    }
    Ok(out)
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
}
