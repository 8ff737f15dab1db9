//! Placing values in a shell command without the shell ever parsing them (issue 11, item 7).
//!
//! Values (file names, shard ids, …) travel in the environment; each placeholder becomes a parameter expansion
//! of its variable, written for the quoting context it sits in. The result of `${VAR}` is never re-parsed as
//! shell syntax, so no name can run code; the lexer below only decides which spelling keeps the value one
//! word with its exact bytes, and refuses the contexts where an expansion would be evaluated (arithmetic,
//! `[[ … ]]`, array subscripts) or not expanded at all (a heredoc with a quoted delimiter).

use super::template::Segment;
#[cfg(test)]
use std::path::Path;

/// Where a placeholder sits, as the shell will read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// A word of a command (also inside `$(…)` and backquotes): `"${VAR}"`, one word per value.
    Bare,
    /// Inside `"…"`: `${VAR}`.
    Double,
    /// Inside `'…'`: the quote is closed, `"${VAR}"` added and the quote reopened.
    Single,
    /// The body of a heredoc whose delimiter is unquoted: `${VAR}`.
    Heredoc,
}

/// Shells that parse `'…'`, `"…"`, `$(…)`, backquotes, heredocs and `${VAR}` as POSIX sh does.
pub fn is_posix(shell: &str) -> bool {
    let name = std::path::Path::new(shell).file_name().and_then(|n| n.to_str()).unwrap_or(shell);
    matches!(name, "bash" | "sh" | "dash" | "ash" | "ksh" | "ksh93" | "mksh" | "zsh" | "busybox")
}

#[derive(Debug)]
enum Closer {
    Top,
    Paren,
    /// Backquotes; `opaque` once a backslash escape inside them changes what the inner parse sees.
    Backtick {
        opaque: bool,
    },
}

#[derive(Debug)]
enum Frame {
    Cmd { closer: Closer, word: String, parens: u32, dbracket: bool },
    Double,
    Single,
    AnsiC,
    Param(u32),
    Arith(u32),
    Comment,
    Heredoc { delim: String, strip_tabs: bool, quoted: bool, line: String },
}

struct Lexer {
    stack: Vec<Frame>,
    /// Heredocs opened on the current line: their bodies start at its end.
    pending: Vec<(String, bool, bool)>,
}

/// The context of each placeholder of `segments`, in order, or an error naming the first one that cannot be
/// placed safely.
pub fn contexts(segments: &[Segment]) -> Result<Vec<Context>, String> {
    let mut lx = Lexer {
        stack: vec![Frame::Cmd { closer: Closer::Top, word: String::new(), parens: 0, dbracket: false }],
        pending: Vec::new(),
    };
    let mut out = Vec::new();
    for segment in segments {
        match segment {
            Segment::Text(text) => lx.feed(text),
            Segment::Var(name) => {
                let context = lx.context().map_err(|why| {
                    format!("placeholder `{{{name}}}` is {why}, where dsmake cannot pass its value safely")
                })?;
                out.push(context);
                // The placeholder is part of the word it sits in.
                match lx.stack.last_mut() {
                    Some(Frame::Cmd { word, .. }) => word.push('x'),
                    Some(Frame::Heredoc { line, .. }) => line.push('\0'),
                    _ => {}
                }
            }
        }
    }
    Ok(out)
}

fn ends_word(c: char) -> bool {
    c.is_whitespace() || ";&|<>()".contains(c)
}

impl Lexer {
    fn context(&self) -> Result<Context, &'static str> {
        let opaque =
            self.stack.iter().any(|f| matches!(f, Frame::Cmd { closer: Closer::Backtick { opaque: true }, .. }));
        let context = match self.stack.last() {
            Some(Frame::Cmd { dbracket: true, .. }) => return Err("inside `[[ … ]]` (which evaluates operands)"),
            Some(Frame::Cmd { word, .. }) if is_subscript(word) => return Err("inside an array subscript"),
            Some(Frame::Cmd { .. } | Frame::Comment) => Context::Bare,
            Some(Frame::Double) => Context::Double,
            Some(Frame::Single) => Context::Single,
            Some(Frame::AnsiC) => return Err("inside `$'…'`"),
            Some(Frame::Param(_)) => return Err("inside `${…}`"),
            Some(Frame::Arith(_)) => return Err("inside arithmetic (`$((…))` or `((…))`)"),
            Some(Frame::Heredoc { quoted: true, .. }) => return Err("in a heredoc with a quoted delimiter"),
            Some(Frame::Heredoc { .. }) => Context::Heredoc,
            None => return Err("after the end of the command"),
        };
        if opaque {
            return Err("inside backquotes that use backslash escapes (use `$(…)`)");
        }
        Ok(context)
    }

    fn feed(&mut self, text: &str) {
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            i = self.step(&chars, i);
        }
    }

    /// Reads the character at `i` (and any it belongs with); returns where to go on.
    fn step(&mut self, s: &[char], i: usize) -> usize {
        let c = s[i];
        let next = s.get(i + 1).copied();
        let next2 = s.get(i + 2).copied();
        let Some(top) = self.stack.last_mut() else { return s.len() };
        match top {
            Frame::Single => {
                if c == '\'' {
                    self.stack.pop();
                }
                i + 1
            }
            Frame::AnsiC => match c {
                '\\' => i + 2,
                '\'' => {
                    self.stack.pop();
                    i + 1
                }
                _ => i + 1,
            },
            Frame::Comment => {
                if c == '\n' {
                    self.stack.pop();
                    return i; // the newline ends a line of the command below
                }
                i + 1
            }
            Frame::Param(depth) => match c {
                '\\' => i + 2,
                '{' => {
                    *depth += 1;
                    i + 1
                }
                '}' if *depth == 0 => {
                    self.stack.pop();
                    i + 1
                }
                '}' => {
                    *depth -= 1;
                    i + 1
                }
                '\'' => {
                    self.stack.push(Frame::Single);
                    i + 1
                }
                '"' => {
                    self.stack.push(Frame::Double);
                    i + 1
                }
                _ => i + 1,
            },
            Frame::Arith(depth) => match c {
                '(' => {
                    *depth += 1;
                    i + 1
                }
                ')' if *depth == 0 && next == Some(')') => {
                    self.stack.pop();
                    i + 2
                }
                ')' => {
                    *depth = depth.saturating_sub(1);
                    i + 1
                }
                _ => i + 1,
            },
            Frame::Double => match c {
                '\\' => i + 2,
                '"' => {
                    self.stack.pop();
                    i + 1
                }
                '$' | '`' => self.substitution(c, next, next2, i),
                _ => i + 1,
            },
            Frame::Heredoc { delim, strip_tabs, quoted, line } => {
                if c == '\n' {
                    let body = if *strip_tabs { line.trim_start_matches('\t') } else { line.as_str() };
                    if body == delim {
                        self.stack.pop();
                    } else {
                        line.clear();
                    }
                    return i + 1;
                }
                line.push(c);
                if *quoted {
                    return i + 1;
                }
                match c {
                    '\\' => {
                        if let Some(n) = next {
                            line.push(n);
                        }
                        i + 2
                    }
                    '$' | '`' => {
                        // A substitution inside the body: the line it sits on can no longer be the delimiter.
                        line.push('\0');
                        self.substitution(c, next, next2, i)
                    }
                    _ => i + 1,
                }
            }
            Frame::Cmd { closer, word, parens, dbracket } => {
                match c {
                    '\\' => {
                        if let Closer::Backtick { opaque } = closer
                            && matches!(next, Some('`' | '$' | '\\' | '"'))
                        {
                            *opaque = true;
                        }
                        if next != Some('\n') {
                            word.push('x');
                        }
                        return i + 2;
                    }
                    '#' if word.is_empty() => {
                        self.stack.push(Frame::Comment);
                        return i + 1;
                    }
                    '\'' => {
                        word.push('x');
                        self.stack.push(Frame::Single);
                        return i + 1;
                    }
                    '"' => {
                        word.push('x');
                        self.stack.push(Frame::Double);
                        return i + 1;
                    }
                    '`' if matches!(closer, Closer::Backtick { .. }) => {
                        self.stack.pop();
                        return i + 1;
                    }
                    '$' | '`' => {
                        word.push('x');
                        return self.substitution(c, next, next2, i);
                    }
                    '(' if word.is_empty() && next == Some('(') => {
                        self.stack.push(Frame::Arith(0));
                        return i + 2;
                    }
                    '(' => *parens += 1,
                    ')' if *parens > 0 => *parens -= 1,
                    ')' if matches!(closer, Closer::Paren) => {
                        self.stack.pop();
                        return i + 1;
                    }
                    '<' if next == Some('<') && next2 == Some('<') => {
                        word.clear();
                        return i + 3;
                    }
                    '<' if next == Some('<') => {
                        word.clear();
                        return self.heredoc(s, i + 2);
                    }
                    '\n' => {
                        word.clear();
                        // Bodies of heredocs opened on this line follow it, the first on top.
                        for (delim, strip_tabs, quoted) in self.pending.drain(..).rev() {
                            self.stack.push(Frame::Heredoc { delim, strip_tabs, quoted, line: String::new() });
                        }
                        return i + 1;
                    }
                    _ => {}
                }
                if ends_word(c) {
                    match word.as_str() {
                        "[[" => *dbracket = true,
                        "]]" => *dbracket = false,
                        _ => {}
                    }
                    word.clear();
                } else {
                    word.push(c);
                }
                i + 1
            }
        }
    }

    /// `$…` or a backquote at `i`, in a context where substitutions are active.
    fn substitution(&mut self, c: char, next: Option<char>, next2: Option<char>, i: usize) -> usize {
        // `$'` and `$"` are quotes only in a command's words.
        let in_double = matches!(self.stack.last(), Some(Frame::Double | Frame::Heredoc { .. }));
        let cmd = |closer| Frame::Cmd { closer, word: String::new(), parens: 0, dbracket: false };
        match (c, next, next2) {
            ('`', ..) => {
                self.stack.push(cmd(Closer::Backtick { opaque: false }));
                i + 1
            }
            ('$', Some('('), Some('(')) => {
                self.stack.push(Frame::Arith(0));
                i + 3
            }
            ('$', Some('('), _) => {
                self.stack.push(cmd(Closer::Paren));
                i + 2
            }
            ('$', Some('{'), _) => {
                self.stack.push(Frame::Param(0));
                i + 2
            }
            ('$', Some('\''), _) if !in_double => {
                self.stack.push(Frame::AnsiC);
                i + 2
            }
            ('$', Some('"'), _) if !in_double => {
                self.stack.push(Frame::Double);
                i + 2
            }
            _ => i + 1,
        }
    }

    /// Reads a heredoc's operator tail and delimiter word starting at `i` (just after `<<`).
    fn heredoc(&mut self, s: &[char], mut i: usize) -> usize {
        let strip_tabs = s.get(i) == Some(&'-');
        if strip_tabs {
            i += 1;
        }
        while s.get(i).is_some_and(|c| *c == ' ' || *c == '\t') {
            i += 1;
        }
        let (mut delim, mut quoted, mut quote) = (String::new(), false, None::<char>);
        while let Some(&c) = s.get(i) {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => delim.push(c),
                None if c == '\'' || c == '"' => {
                    quoted = true;
                    quote = Some(c);
                }
                None if c == '\\' => {
                    quoted = true;
                    if let Some(&n) = s.get(i + 1) {
                        delim.push(n);
                    }
                    i += 1;
                }
                None if ends_word(c) => break,
                None => delim.push(c),
            }
            i += 1;
        }
        if delim.is_empty() {
            // The delimiter is a placeholder (or missing): nothing safe can be said of the body.
            delim.push('\0');
            quoted = true;
        }
        self.pending.push((delim, strip_tabs, quoted));
        i
    }
}

/// `name[…` with the bracket still open: a subscript, which bash evaluates as arithmetic.
fn is_subscript(word: &str) -> bool {
    let Some((name, rest)) = word.split_once('[') else { return false };
    let is_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    is_name && !rest.contains(']')
}

/// The text that replaces a placeholder whose value is in the variables `vars` (one per word), in `context`.
pub fn reference(vars: &[String], context: Context) -> String {
    let refs: Vec<String> = vars.iter().map(|v| format!("${{{v}}}")).collect();
    match context {
        Context::Bare => refs.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(" "),
        Context::Double | Context::Heredoc => refs.join(" "),
        Context::Single => format!("'\"{}\"'", refs.join(" ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::command::template::segments;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    /// Expands `template` with one value per placeholder `{x}` and the list `{xs}` = [value, "second"].
    fn script(template: &str) -> Result<String, String> {
        let parts = segments(template);
        let contexts = contexts(&parts)?;
        let mut contexts = contexts.into_iter();
        let mut out = String::new();
        for part in parts {
            match part {
                Segment::Text(t) => out.push_str(&t),
                Segment::Var("x") => out.push_str(&reference(&["DSMAKE_X".into()], contexts.next().unwrap())),
                Segment::Var(_) => {
                    out.push_str(&reference(&["DSMAKE_XS_1".into(), "DSMAKE_XS_2".into()], contexts.next().unwrap()))
                }
            }
        }
        Ok(out)
    }

    fn hostile() -> Vec<OsString> {
        let names = [
            "plain.txt",
            "a b  c.txt",
            "a$(touch INJECTED).txt",
            "a`touch INJECTED`.txt",
            "a'; touch INJECTED; '.txt",
            "a\"; touch INJECTED; \".txt",
            "a'\"$(touch INJECTED)\"'.txt",
            "line\nbreak; touch INJECTED",
            "-n",
            "--version",
            "a[$(touch INJECTED)]",
            "*",
            "~root",
            "back\\slash\\",
            "${IFS}$HOME",
            "EOF",
            "{x}",
            "!!",
            "a;touch INJECTED",
            "$((1+1))",
        ];
        let mut all: Vec<OsString> = names.iter().map(OsString::from).collect();
        all.push(OsString::from_vec(b"latin1-\xe9-$(touch INJECTED)".to_vec()));
        all
    }

    /// (template, what the command must print around the value) for every supported context.
    const SHAPES: &[(&str, &str, &str)] = &[
        ("printf %s {x} > got", "", ""),
        ("printf %s \"{x}\" > got", "", ""),
        ("printf %s \"pre {x} post\" > got", "pre ", " post"),
        ("printf %s '{x}' > got", "", ""),
        ("printf %s 'a {x} b' > got", "a ", " b"),
        ("v=$(printf %s {x}; echo .); printf %s \"${v%.}\" > got", "", ""),
        ("printf %s \"$(printf %s \"{x}\"; echo .)\" | sed '$s/\\.$//' | head -c -0 > got", "", ""),
        ("v=`printf %s {x}; echo .`; printf %s \"${v%.}\" > got", "", ""),
        ("# don't be fooled by a quote in a comment\nprintf %s {x} > got", "", ""),
        ("cat > got <<EOF\n{x}\nEOF", "", "\n"),
        ("cat > got <<-EOF\n\t{x}\n\tEOF\n", "", "\n"),
        ("cat <<'A' >/dev/null\nliteral ' \" $(\nA\nprintf %s {x} > got", "", ""),
        ("case {x} in *) printf %s {x} > got;; esac", "", ""),
        ("printf %s {x} | cat > got", "", ""),
    ];

    fn run(shell: &str, script: &str, value: &OsString) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(shell)
            .arg("-c")
            .arg(script)
            .current_dir(dir.path())
            .env("DSMAKE_X", value)
            .env("DSMAKE_XS_1", value)
            .env("DSMAKE_XS_2", "second")
            .status()
            .unwrap();
        assert!(status.success(), "{shell} failed on {script:?} with {value:?}");
        dir
    }

    #[test]
    fn hostile_names_reach_the_command_intact_in_every_context() {
        let shells: Vec<&str> = ["/bin/bash", "/bin/sh"].into_iter().filter(|s| Path::new(s).exists()).collect();
        for shell in shells {
            for (template, before, after) in SHAPES {
                let script = script(template).unwrap_or_else(|e| panic!("{template:?}: {e}"));
                for value in hostile() {
                    let dir = run(shell, &script, &value);
                    let got = std::fs::read(dir.path().join("got")).unwrap();
                    let mut want = before.as_bytes().to_vec();
                    want.extend(value.as_encoded_bytes());
                    want.extend(after.as_bytes());
                    assert_eq!(
                        got,
                        want,
                        "{shell}: {template:?} with {value:?} gave {:?}",
                        String::from_utf8_lossy(&got)
                    );
                    assert!(!dir.path().join("INJECTED").exists(), "{shell}: {template:?} ran {value:?}");
                }
            }
        }
    }

    #[test]
    fn lists_are_words_when_bare_and_one_word_when_quoted() {
        let value = OsString::from("a b$(touch INJECTED)");
        let dir = run("/bin/bash", &script("printf '<%s>' {xs} > got").unwrap(), &value);
        assert_eq!(std::fs::read_to_string(dir.path().join("got")).unwrap(), "<a b$(touch INJECTED)><second>");
        let dir = run("/bin/bash", &script("printf '<%s>' \"{xs}\" '{xs}' > got").unwrap(), &value);
        let got = std::fs::read_to_string(dir.path().join("got")).unwrap();
        assert_eq!(got, "<a b$(touch INJECTED) second><a b$(touch INJECTED) second>");
        let dir = run("/bin/bash", &script("for f in {xs}; do printf '<%s>' \"$f\"; done > got").unwrap(), &value);
        assert_eq!(std::fs::read_to_string(dir.path().join("got")).unwrap(), "<a b$(touch INJECTED)><second>");
        assert!(!dir.path().join("INJECTED").exists());
    }

    #[test]
    fn refuses_contexts_that_evaluate_or_do_not_expand() {
        for (template, why) in [
            ("echo $(( {x} + 1 ))", "arithmetic"),
            ("(( {x} > 1 ))", "arithmetic"),
            ("[[ {x} -eq 1 ]]", "[[ … ]]"),
            ("a[{x}]=1", "subscript"),
            ("echo ${v:-{x}}", "${…}"),
            ("echo \"${v:-{x}}\"", "${…}"),
            ("echo $'{x}'", "$'…'"),
            ("cat <<'EOF'\n{x}\nEOF", "quoted delimiter"),
            ("cat <<\"EOF\"\n{x}\nEOF", "quoted delimiter"),
            ("cat <<\\EOF\n{x}\nEOF", "quoted delimiter"),
            ("v=`echo \\`echo {x}\\``", "backquotes"),
        ] {
            let e = script(template).unwrap_err();
            assert!(e.contains("placeholder `{x}`") && e.contains(why), "{template:?}: {e}");
        }
        // Ordinary templates, the README's and the tests', all pass.
        for ok in [
            "if [ \"${case}\" = upper ]; then tr a b; else tr b a; fi < {x} > {x}",
            "awk '{ n[$2] += $1 } END { for (w in n) print n[w], w }' {x} | sort > {x}",
            "awk -v line=\"$(cat {x})\" 'BEGIN { print line }' > {x}",
            "m=/tmp/$(basename {x}); if [ ! -e \"$m\" ]; then touch \"$m\"; fi; cp {x} {x}",
            "for f in {xs}; do case $f in *.tar) tar tf $f;; esac; done | sort > {x}",
            "[ {x} = b ] && [[ -e a ]] && echo {x}",
            "cat <<EOF > {x}\n$(echo hi) {x}\nEOF\necho {x}",
        ] {
            script(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }
}
