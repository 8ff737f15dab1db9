//! Errors in a pipeline file, shown the way rustc and just show them: file, line, column, the line itself,
//! a caret under the offending span, and a hint when there is one.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Boxed: a pipeline error travels up through every parsing function, and should cost a pointer.
#[derive(Debug, Clone)]
pub struct Diagnostic(Box<Details>);

#[derive(Debug, Clone)]
pub struct Details {
    pub file: PathBuf,
    pub message: String,
    /// 1-based line and column of the start of the span; `None` when the problem has no place in the file
    /// (a `--set` on the command line, say).
    pub position: Option<Position>,
    pub help: Option<String>,
    source_line: Option<String>,
    span_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Diagnostic {
    pub fn at(file: &Path, text: &str, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        let mut diagnostic = Details {
            file: file.to_path_buf(),
            message: message.into(),
            position: None,
            help: None,
            source_line: None,
            span_len: 1,
        };
        if let Some(span) = span {
            let start = span.start.min(text.len());
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
            let line = text[..start].matches('\n').count() + 1;
            let column = text[line_start..start].chars().count() + 1;
            let line_text = text[line_start..line_end].trim_end_matches('\r');
            let span_end = span.end.clamp(start, line_end);
            diagnostic.position = Some(Position { line, column });
            diagnostic.source_line = Some(line_text.to_string());
            diagnostic.span_len = text[start..span_end].chars().count().max(1);
        }
        Diagnostic(Box::new(diagnostic))
    }

    /// A problem that belongs to the file as a whole, or to the command line.
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Diagnostic::at(file, "", None, message)
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.0.help = Some(help.into());
        self
    }
}

impl std::ops::Deref for Diagnostic {
    type Target = Details;
    fn deref(&self) -> &Details {
        &self.0
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.message)?;
        match (&self.position, &self.source_line) {
            (Some(pos), Some(line_text)) => {
                let gutter = pos.line.to_string().len();
                let pad = " ".repeat(gutter);
                writeln!(f, "{pad}--> {}:{}:{}", self.file.display(), pos.line, pos.column)?;
                writeln!(f, "{pad} |")?;
                writeln!(f, "{} | {line_text}", pos.line)?;
                let lead: String =
                    line_text.chars().take(pos.column - 1).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
                write!(f, "{pad} | {lead}{}", "^".repeat(self.span_len))?;
            }
            _ => write!(f, " --> {}", self.file.display())?,
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}
