//! CLIP's BPE through `tokenizer.json`, made to give open_clip's token ids: open_clip cleans a caption
//! before tokenizing (ftfy, HTML unescaping twice, whitespace collapsed), wraps it in start and end tokens,
//! truncates to 77 keeping the end token last, and pads with 0.

use anyhow::{Context, anyhow};
use std::path::Path;

const START: &str = "<|startoftext|>";
const END: &str = "<|endoftext|>";

pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    start: u32,
    end: u32,
    context: usize,
}

impl ClipTokenizer {
    pub fn from_file(path: &Path, context: usize) -> anyhow::Result<Self> {
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("cannot load the tokenizer {}: {e}", path.display()))?;
        // Some tokenizer.json files carry padding or truncation for other uses; open_clip's rules apply here.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| anyhow!("cannot configure the tokenizer {}: {e}", path.display()))?;
        let id = |token: &str| {
            inner.token_to_id(token).with_context(|| format!("{} has no `{token}` token", path.display()))
        };
        let (start, end) = (id(START)?, id(END)?);
        if context < 2 {
            anyhow::bail!("a context of {context} tokens cannot hold the start and end tokens");
        }
        Ok(ClipTokenizer { inner, start, end, context })
    }

    /// Token ids for one caption: exactly `context` (77) of them, zero padded.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let cleaned = clean(text);
        // Without the post-processor's special tokens: we add them ourselves, so that a tokenizer.json
        // without a post-processor gives the same ids.
        let encoding =
            self.inner.encode(cleaned.as_str(), false).map_err(|e| anyhow!("cannot tokenize {text:?}: {e}"))?;
        let mut ids = Vec::with_capacity(self.context);
        ids.push(self.start);
        ids.extend(encoding.get_ids().iter().copied().take(self.context - 2));
        ids.push(self.end);
        ids.resize(self.context, 0);
        Ok(ids)
    }
}

/// open_clip's `_clean_lower`: `whitespace_clean(basic_clean(text)).lower()`, where `basic_clean` is
/// `html.unescape(html.unescape(ftfy.fix_text(text))).strip()`. Of ftfy, the fixes that change ordinary
/// captions are done here (HTML entities, curly quotes, ligatures, full-width ASCII, control characters);
/// its mojibake repair is not. NFC normalisation is the tokenizer's own normaliser.
pub fn clean(text: &str) -> String {
    // ftfy unescapes HTML itself unless the text looks like HTML (has '<'); open_clip then does it twice.
    let passes = if text.contains('<') { 2 } else { 3 };
    let mut s = ftfy_subset(text);
    for _ in 0..passes {
        if !s.contains('&') {
            break;
        }
        s = html_unescape(&s);
    }
    let mut out = String::with_capacity(s.len());
    for word in s.split(is_python_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.to_lowercase()
}

/// Python's `str.isspace` (what `\s` matches in `re`), which counts the ASCII separators 0x1C–0x1F too.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn ftfy_subset(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            // uncurl_quotes
            '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}' => out.push('\''),
            '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{201f}' => out.push('"'),
            // fix_latin_ligatures
            '\u{fb00}' => out.push_str("ff"),
            '\u{fb01}' => out.push_str("fi"),
            '\u{fb02}' => out.push_str("fl"),
            '\u{fb03}' => out.push_str("ffi"),
            '\u{fb04}' => out.push_str("ffl"),
            '\u{fb05}' | '\u{fb06}' => out.push_str("st"),
            '\u{0132}' => out.push_str("IJ"),
            '\u{0133}' => out.push_str("ij"),
            // fix_character_width: full-width ASCII and the ideographic space
            '\u{ff01}'..='\u{ff5e}' => out.push(char::from_u32(c as u32 - 0xfee0).unwrap_or(c)),
            '\u{3000}' => out.push(' '),
            // fix_line_breaks (the whitespace cleanup turns them into spaces anyway)
            '\r' | '\u{2028}' | '\u{2029}' | '\u{85}' => out.push('\n'),
            // remove_control_chars
            '\u{0}'..='\u{8}'
            | '\u{b}'
            | '\u{e}'..='\u{1f}'
            | '\u{7f}'
            | '\u{feff}'
            | '\u{206a}'..='\u{206f}'
            | '\u{fff9}'..='\u{fffc}'
            | '\u{e0000}'..='\u{e007f}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Python's `html.unescape`: numeric references (with the HTML5 replacements of C1 and invalid code
/// points), named references ending in ';', and the common legacy names without one.
pub fn html_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        match decode_reference(tail) {
            Some((decoded, used)) => {
                out.push_str(&decoded);
                rest = &tail[used..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Legacy named references that HTML (and Python) decode without the ';'. Longest first.
const LEGACY: &[(&str, &str)] = &[
    ("quot", "\""),
    ("QUOT", "\""),
    ("nbsp", "\u{a0}"),
    ("copy", "©"),
    ("COPY", "©"),
    ("amp", "&"),
    ("AMP", "&"),
    ("reg", "®"),
    ("REG", "®"),
    ("lt", "<"),
    ("LT", "<"),
    ("gt", ">"),
    ("GT", ">"),
];

/// Decodes the reference at the start of `s` (which begins with '&'): the text and the bytes it used.
fn decode_reference(s: &str) -> Option<(String, usize)> {
    let body = &s[1..];
    if let Some(num) = body.strip_prefix('#') {
        let (hex, digits) = match num.strip_prefix(['x', 'X']) {
            Some(h) => (true, h),
            None => (false, num),
        };
        let len = digits.chars().take_while(|c| if hex { c.is_ascii_hexdigit() } else { c.is_ascii_digit() }).count();
        if len == 0 {
            return None;
        }
        let value = u32::from_str_radix(&digits[..len], if hex { 16 } else { 10 }).unwrap_or(u32::MAX);
        let used = 1 + 1 + usize::from(hex) + len + usize::from(digits[len..].starts_with(';'));
        return Some((numeric_char(value), used));
    }
    let name_len = body.chars().take_while(|c| c.is_ascii_alphanumeric()).count();
    if name_len > 0 && body[name_len..].starts_with(';') {
        let reference = &s[..name_len + 2];
        let decoded = html_escape::decode_html_entities(reference);
        if decoded != reference {
            return Some((decoded.into_owned(), reference.len()));
        }
    }
    LEGACY.iter().find(|(name, _)| body.starts_with(name)).map(|(name, value)| (value.to_string(), 1 + name.len()))
}

/// A numeric reference's character as Python's `html.unescape` gives it.
fn numeric_char(value: u32) -> String {
    // The Windows-1252 meanings that browsers (and Python) give to C1 code points in references.
    const C1: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}', '\u{90}', '‘',
        '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
    ];
    match value {
        0x80..=0x9f => C1[(value - 0x80) as usize].to_string(),
        0 | 0xd800..=0xdfff => '\u{fffd}'.to_string(),
        v if v > 0x10ffff => '\u{fffd}'.to_string(),
        // Python drops the invalid control and non-character code points.
        0x1..=0x8 | 0xe..=0x1f | 0x7f..=0x9f | 0xfdd0..=0xfdef | 0xb => String::new(),
        v if (v & 0xfffe) == 0xfffe => String::new(),
        v => char::from_u32(v).map(String::from).unwrap_or_else(|| '\u{fffd}'.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_open_clip() {
        assert_eq!(clean("  multiple   spaces\tand\ttabs\nnewline "), "multiple spaces and tabs newline");
        assert_eq!(clean("It's &amp; &lt;b&gt; &#39;x&#39; &amp;amp;"), "it's & <b> 'x' &");
        assert_eq!(clean("don\u{2019}t \u{fb01}ne \u{ff21}\u{ff22}"), "don't fine ab");
        assert_eq!(clean("a&ampb &#150; &#x41;&notanentity;"), "a&b – a&notanentity;");
    }
}
