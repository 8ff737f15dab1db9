//! ftfy's `fix_encoding` (as of ftfy 6.3.1, what open_clip's `ftfy.fix_text` runs on every caption): text that
//! was UTF-8 but got decoded as Windows-1252, Latin-1 or another single-byte encoding ("cafÃ©", "donâ€™t"),
//! once or several times, is decoded back; text that does not look broken is left as it is.
//!
//! ftfy's steps, reproduced here for the same output:
//! - nothing happens unless the text "looks bad": [`is_bad`] finds one of ftfy's unlikely character sequences
//!   (an accented letter next to a currency sign, "Ã" before a no-break space, a C1 control, ...);
//! - then the first of ten single-byte encodings (Latin-1, Windows-1252, -1251, -1250, -1253, -1254, -1257,
//!   ISO-8859-2, MacRoman, CP437) that can encode the whole text, and whose bytes are UTF-8, wins. Before
//!   decoding, spaces that stand for a lost byte A0 inside a UTF-8 sequence are put back (`restore_byte_a0`),
//!   and in the Windows encodings sequences with a lost byte (read as U+FFFD or '?') become one U+FFFD
//!   (`replace_lossy_sequences`). The UTF-8 decoder accepts CESU-8 surrogate pairs and Java's C0 80;
//! - else runs of characters that look like UTF-8 read as one of those encodings are fixed on their own
//!   (`decode_inconsistent_utf8`), which repairs "cafÃ©" next to a correct "naïve";
//! - else C1 controls are read as Windows-1252;
//! - and all of this again until nothing changes, so doubly encoded text comes back too.
//!
//! Checked against ftfy itself by tests/it/clip_parity.rs (`cleaning_equals_open_clips_with_ftfy`). The one known
//! difference: Python's `\w`, in one badness rule, is approximated by `char::is_alphanumeric`, which also
//! counts the combining vowel signs of some scripts as word characters; that rule can then call text bad that
//! ftfy does not, which changes the text only where that text also decodes as mojibake.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

/// A single-byte encoding as ftfy uses it: ASCII below 0x80, `high` for bytes 0x80–0xFF (what Python's codec
/// decodes them to). The "sloppy" Windows encodings (ftfy's) give unassigned bytes their Latin-1 character and
/// stand byte 1A for U+FFFD.
struct Codec {
    high: &'static str,
    sloppy: bool,
    /// Not in MacRoman, where an en dash (byte D0) before a space would look like a lost no-break space.
    restores_a0: bool,
}

const LATIN_1: Codec = Codec {
    high: "\u{80}\u{81}\u{82}\u{83}\u{84}\u{85}\u{86}\u{87}\u{88}\u{89}\u{8a}\u{8b}\u{8c}\u{8d}\u{8e}\u{8f}\
           \u{90}\u{91}\u{92}\u{93}\u{94}\u{95}\u{96}\u{97}\u{98}\u{99}\u{9a}\u{9b}\u{9c}\u{9d}\u{9e}\u{9f}\
           \u{a0}¡¢£¤¥¦§¨©ª«¬\u{ad}®¯°±²³´µ¶·¸¹º»¼½¾¿ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖ×ØÙÚÛÜÝÞßàáâãäåæçèéêëìíîïðñòóôõö÷øùúûüýþÿ",
    sloppy: false,
    restores_a0: true,
};
const WINDOWS_1252: Codec = Codec {
    high: "€\u{81}‚ƒ„…†‡ˆ‰Š‹Œ\u{8d}Ž\u{8f}\u{90}‘’“”•–—˜™š›œ\u{9d}žŸ\
           \u{a0}¡¢£¤¥¦§¨©ª«¬\u{ad}®¯°±²³´µ¶·¸¹º»¼½¾¿ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖ×ØÙÚÛÜÝÞßàáâãäåæçèéêëìíîïðñòóôõö÷øùúûüýþÿ",
    sloppy: true,
    restores_a0: true,
};
const WINDOWS_1251: Codec = Codec {
    high: "ЂЃ‚ѓ„…†‡€‰Љ‹ЊЌЋЏђ‘’“”•–—\u{98}™љ›њќћџ\u{a0}ЎўЈ¤Ґ¦§Ё©Є«¬\u{ad}®Ї°±Ііґµ¶·ё№є»јЅѕї\
           АБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯабвгдежзийклмнопрстуфхцчшщъыьэюя",
    sloppy: true,
    restores_a0: true,
};
const WINDOWS_1250: Codec = Codec {
    high: "€\u{81}‚\u{83}„…†‡\u{88}‰Š‹ŚŤŽŹ\u{90}‘’“”•–—\u{98}™š›śťžź\u{a0}ˇ˘Ł¤Ą¦§¨©Ş«¬\u{ad}®Ż°±˛ł´µ¶·¸ąş»Ľ˝ľż\
           ŔÁÂĂÄĹĆÇČÉĘËĚÍÎĎĐŃŇÓÔŐÖ×ŘŮÚŰÜÝŢßŕáâăäĺćçčéęëěíîďđńňóôőö÷řůúűüýţ˙",
    sloppy: true,
    restores_a0: true,
};
const WINDOWS_1253: Codec = Codec {
    high: "€\u{81}‚ƒ„…†‡\u{88}‰\u{8a}‹\u{8c}\u{8d}\u{8e}\u{8f}\u{90}‘’“”•–—\u{98}™\u{9a}›\u{9c}\u{9d}\u{9e}\u{9f}\
           \u{a0}΅Ά£¤¥¦§¨©ª«¬\u{ad}®―°±²³΄µ¶·ΈΉΊ»Ό½ΎΏΐΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡÒΣΤΥΦΧΨΩΪΫάέήί\
           ΰαβγδεζηθικλμνξοπρςστυφχψωϊϋόύώÿ",
    sloppy: true,
    restores_a0: true,
};
const WINDOWS_1254: Codec = Codec {
    high: "€\u{81}‚ƒ„…†‡ˆ‰Š‹Œ\u{8d}\u{8e}\u{8f}\u{90}‘’“”•–—˜™š›œ\u{9d}\u{9e}Ÿ\
           \u{a0}¡¢£¤¥¦§¨©ª«¬\u{ad}®¯°±²³´µ¶·¸¹º»¼½¾¿ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏĞÑÒÓÔÕÖ×ØÙÚÛÜİŞßàáâãäåæçèéêëìíîïğñòóôõö÷øùúûüışÿ",
    sloppy: true,
    restores_a0: true,
};
const WINDOWS_1257: Codec = Codec {
    high: "€\u{81}‚\u{83}„…†‡\u{88}‰\u{8a}‹\u{8c}¨ˇ¸\u{90}‘’“”•–—\u{98}™\u{9a}›\u{9c}¯˛\u{9f}\
           \u{a0}¡¢£¤¥¦§Ø©Ŗ«¬\u{ad}®Æ°±²³´µ¶·ø¹ŗ»¼½¾æĄĮĀĆÄÅĘĒČÉŹĖĢĶĪĻŠŃŅÓŌÕÖ×ŲŁŚŪÜŻŽßąįāćäåęēčéźėģķīļšńņóōõö÷ųłśūüżž˙",
    sloppy: true,
    restores_a0: true,
};
const ISO_8859_2: Codec = Codec {
    high: "\u{80}\u{81}\u{82}\u{83}\u{84}\u{85}\u{86}\u{87}\u{88}\u{89}\u{8a}\u{8b}\u{8c}\u{8d}\u{8e}\u{8f}\
           \u{90}\u{91}\u{92}\u{93}\u{94}\u{95}\u{96}\u{97}\u{98}\u{99}\u{9a}\u{9b}\u{9c}\u{9d}\u{9e}\u{9f}\
           \u{a0}Ą˘Ł¤ĽŚ§¨ŠŞŤŹ\u{ad}ŽŻ°ą˛ł´ľśˇ¸šşťź˝žżŔÁÂĂÄĹĆÇČÉĘËĚÍÎĎĐŃŇÓÔŐÖ×ŘŮÚŰÜÝŢßŕáâăäĺćçčéęëěíîďđńňóôőö÷řůúűüýţ˙",
    sloppy: false,
    restores_a0: true,
};
const MACROMAN: Codec = Codec {
    high: "ÄÅÇÉÑÖÜáàâäãåçéèêëíìîïñóòôöõúùûü†°¢£§•¶ß®©™´¨≠ÆØ∞±≤≥¥µ∂∑∏π∫ªºΩæø¿¡¬√ƒ≈∆«»…\u{a0}ÀÃÕŒœ–—“”‘’÷◊ÿŸ⁄€‹›ﬁﬂ‡·‚„‰\
           ÂÊÁËÈÍÎÏÌÓÔ\u{f8ff}ÒÚÛÙıˆ˜¯˘˙˚¸˝˛ˇ",
    sloppy: false,
    restores_a0: false,
};
const CP437: Codec = Codec {
    high: "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀\
           αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}",
    sloppy: false,
    restores_a0: true,
};

/// ftfy's order of trying them.
const CODECS: [&Codec; 10] = [
    &LATIN_1,
    &WINDOWS_1252,
    &WINDOWS_1251,
    &WINDOWS_1250,
    &WINDOWS_1253,
    &WINDOWS_1254,
    &WINDOWS_1257,
    &ISO_8859_2,
    &MACROMAN,
    &CP437,
];

/// The encodings whose UTF-8 mojibake `decode_inconsistent_utf8` looks for.
const CLUE_CODECS: [&Codec; 7] =
    [&LATIN_1, &WINDOWS_1252, &WINDOWS_1251, &WINDOWS_1250, &WINDOWS_1253, &WINDOWS_1254, &WINDOWS_1257];

impl Codec {
    fn encode(&self, text: &str) -> Option<Vec<u8>> {
        let mut bytes = Vec::with_capacity(text.len());
        for c in text.chars() {
            let byte = match c {
                // In the sloppy encodings byte 1A means U+FFFD, so U+001A has no byte.
                '\u{1a}' if self.sloppy => return None,
                '\u{fffd}' if self.sloppy => 0x1a,
                c if c.is_ascii() => c as u8,
                c => 0x80 + self.high.chars().position(|h| h == c)? as u8,
            };
            bytes.push(byte);
        }
        Some(bytes)
    }
}

/// A C1 control read as Windows-1252 (ftfy's `fix_c1_controls`); the five bytes that Windows-1252 leaves
/// unassigned stay as they are.
pub(super) fn c1_as_windows_1252(c: char) -> char {
    match c {
        '\u{80}'..='\u{9f}' => WINDOWS_1252.high.chars().nth(c as usize - 0x80).unwrap_or(c),
        c => c,
    }
}

/// ftfy's `fix_encoding`: mojibake decoded, repeatedly, until a step changes nothing.
pub(super) fn fix_encoding(text: &str) -> Cow<'_, str> {
    let mut fixed = match fix_once(text) {
        Some(fixed) if fixed != text => fixed,
        _ => return Cow::Borrowed(text),
    };
    while let Some(next) = fix_once(&fixed) {
        if next == fixed {
            break;
        }
        fixed = next;
    }
    Cow::Owned(fixed)
}

/// One step of ftfy's `fix_encoding`; None where it leaves the text alone.
fn fix_once(text: &str) -> Option<String> {
    if text.is_ascii() || !is_bad(text) {
        return None;
    }
    for codec in CODECS {
        let Some(mut bytes) = codec.encode(text) else { continue };
        if codec.restores_a0 && has_altered_utf8(&bytes) {
            bytes = restore_byte_a0(&bytes);
        }
        if codec.sloppy {
            bytes = replace_lossy_sequences(&bytes);
        }
        if let Some(decoded) = decode_utf8_variants(&bytes) {
            return Some(decoded);
        }
    }
    if let Some(fixed) = decode_inconsistent_utf8(text) {
        return Some(fixed);
    }
    if text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)) {
        return Some(text.chars().map(c1_as_windows_1252).collect());
    }
    None
}

/// Bytes of the Latin-1 continuation range that can stand for a lost A0 after a 3-byte lead: not 85 (an
/// ellipsis in Windows-1252) and not A0 itself.
fn likely_continuation(b: u8) -> bool {
    matches!(b, 0x80..=0x84 | 0x86..=0x9f | 0xa1..=0xbf)
}

fn continuation(b: u8) -> bool {
    (0x80..=0xbf).contains(&b)
}

/// The length of a UTF-8 sequence at `at` whose byte A0 became a space, if one starts there. Only the leads
/// that give likely characters count (no-break space, à, Š, Π, Р, ٠, the U+2000 and U+3000 blocks, emoji).
fn altered_utf8_at(bytes: &[u8], at: usize) -> Option<usize> {
    let b = |i: usize| bytes.get(at + i).copied();
    let is = |i: usize, f: fn(u8) -> bool| b(i).is_some_and(f);
    let space = |i: usize| b(i) == Some(b' ');
    match b(0)? {
        0xc2 | 0xc3 | 0xc5 | 0xce | 0xd0 | 0xd9 if space(1) => Some(2),
        0xe2 | 0xe3 if space(1) && is(2, likely_continuation) => Some(3),
        0xe0..=0xe3 if is(1, likely_continuation) && space(2) => Some(3),
        0xf0 if (1..4).filter(|&i| space(i)).count() == 1 && (1..4).all(|i| space(i) || is(i, continuation)) => Some(4),
        _ => None,
    }
}

fn has_altered_utf8(bytes: &[u8]) -> bool {
    (0..bytes.len()).any(|i| altered_utf8_at(bytes, i).is_some())
}

/// ftfy's `restore_byte_a0`: puts back the byte A0 that a space replaced inside a UTF-8 sequence. A lone
/// "Ã " is read as "à " (the French word, keeping the space), except before the Portuguese "às", "àquele",
/// "àquela", "àquilo", where the space was the A0.
fn restore_byte_a0(bytes: &[u8]) -> Vec<u8> {
    let mut words = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0xc3 && bytes.get(i + 1) == Some(&b' ') {
            let after = &bytes[i + 2..];
            let contraction = [&b" "[..], b"quele", b"quela", b"quilo", b"s "].iter().any(|w| after.starts_with(w));
            if !contraction {
                words.extend_from_slice(&[0xc3, 0xa0, b' ']);
                i += 2;
                continue;
            }
        }
        words.push(bytes[i]);
        i += 1;
    }
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        match altered_utf8_at(&words, i) {
            Some(len) => {
                out.extend(words[i..i + len].iter().map(|&b| if b == b' ' { 0xa0 } else { b }));
                i += len;
            }
            None => {
                out.push(words[i]);
                i += 1;
            }
        }
    }
    out
}

/// The length of a UTF-8 (or CESU-8) sequence at `at` that lost bytes, if one starts there: the sloppy
/// encodings turned U+FFFD into byte 1A, and a '?' may stand for one lost byte of a sequence.
fn lossy_sequence_at(bytes: &[u8], at: usize) -> Option<usize> {
    let b = |i: usize| bytes.get(at + i).copied();
    let lost = |i: usize| matches!(b(i), Some(0x1a | b'?'));
    let kept = |i: usize| matches!(b(i), Some(0x1a | 0x80..=0xbf));
    let within = |i: usize, lo: u8, hi: u8| b(i).is_some_and(|x| (lo..=hi).contains(&x));
    // The continuation bytes after a lead: one or more lost, at most one of them a '?'.
    let tail = |n: usize| {
        (1..=n).any(lost) && (1..=n).all(|i| lost(i) || kept(i)) && (1..=n).filter(|&i| b(i) == Some(b'?')).count() <= 1
    };
    let lead = b(0)?;
    // A surrogate pair that lost the last byte of one half.
    if lead == 0xed && within(1, 0xa0, 0xaf) && b(3) == Some(0xed) && within(4, 0xb0, 0xbf) {
        let either = |i: usize| lost(i) || kept(i);
        if (lost(2) && either(5)) || (either(2) && lost(5)) {
            return Some(6);
        }
    }
    match lead {
        0xc2..=0xdf if b(1) == Some(0x1a) => Some(2),
        0xc2 | 0xc3 if b(1) == Some(b'?') => Some(2),
        0xe0..=0xef if tail(2) => Some(3),
        0xf0..=0xf4 if tail(3) => Some(4),
        0x1a => Some(1),
        _ => None,
    }
}

/// ftfy's `replace_lossy_sequences`: each UTF-8 sequence that lost a byte becomes one U+FFFD.
fn replace_lossy_sequences(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match lossy_sequence_at(bytes, i) {
            Some(len) => {
                out.extend_from_slice("\u{fffd}".as_bytes());
                i += len;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// UTF-8 as ftfy's "utf-8-variants" reads it: also CESU-8 surrogate pairs (six bytes for one character above
/// U+FFFF) and Java's C0 80 for U+0000. None where the bytes are not that.
fn decode_utf8_variants(bytes: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(bytes.len());
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        let special = match bytes[i] {
            0xc0 if bytes.get(i + 1) == Some(&0x80) => Some(('\0', 2)),
            0xed => bytes.get(i..i + 6).and_then(|s| {
                let pair = (0xa0..=0xaf).contains(&s[1])
                    && continuation(s[2])
                    && s[3] == 0xed
                    && (0xb0..=0xbf).contains(&s[4])
                    && continuation(s[5]);
                let code = 0x10000
                    + ((u32::from(s[1]) & 0x0f) << 16)
                    + ((u32::from(s[2]) & 0x3f) << 10)
                    + ((u32::from(s[4]) & 0x0f) << 6)
                    + (u32::from(s[5]) & 0x3f);
                pair.then(|| char::from_u32(code)).flatten().map(|c| (c, 6))
            }),
            _ => None,
        };
        match special {
            Some((c, len)) => {
                out.push_str(std::str::from_utf8(&bytes[start..i]).ok()?);
                out.push(c);
                i += len;
                start = i;
            }
            None => i += 1,
        }
    }
    out.push_str(std::str::from_utf8(&bytes[start..]).ok()?);
    Some(out)
}

/// ftfy's `decode_inconsistent_utf8`: runs that look like UTF-8 read as a single-byte encoding, in text that
/// as a whole does not decode, are fixed on their own when they look bad. None where nothing changes.
fn decode_inconsistent_utf8(text: &str) -> Option<String> {
    let chars: Vec<(usize, char, u64)> = text.char_indices().map(|(i, c)| (i, c, mask(c))).collect();
    let has = |i: usize, bits: u64| chars.get(i).is_some_and(|&(_, _, m)| m & bits != 0);
    let unit = |i: usize| {
        [(FIRST_OF_2, 1), (FIRST_OF_3, 2), (FIRST_OF_4, 3)]
            .into_iter()
            .find(|&(lead, n)| has(i, lead) && (1..=n).all(|k| has(i + k, CONTINUATION)))
            .map(|(_, n)| n + 1)
    };
    let byte_at = |i: usize| chars.get(i).map_or(text.len(), |&(b, _, _)| b);
    let mut out = String::with_capacity(text.len());
    let (mut copied, mut i) = (0, 0);
    while i < chars.len() {
        // Not right after a character that only appears inside mojibake: fixing part of a bigger garble
        // would make it worse.
        let mut end = i;
        if i == 0 || !has(i - 1, CONTINUATION_STRICT) {
            while let Some(n) = unit(end) {
                end += n;
            }
        }
        if end == i {
            i += 1;
            continue;
        }
        let run = &text[byte_at(i)..byte_at(end)];
        if end - i < chars.len() && is_bad(run) {
            let fixed = fix_encoding(run);
            if fixed != run {
                out.push_str(&text[copied..byte_at(i)]);
                out.push_str(&fixed);
                copied = byte_at(end);
            }
        }
        i = end;
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

// Character classes, as bits of a mask per character. The first fourteen are ftfy's categories of the
// characters that UTF-8 mojibake is made of.
const COMMON: u64 = 1;
const C1: u64 = 1 << 1;
const BAD: u64 = 1 << 2;
const LAW: u64 = 1 << 3;
const CURRENCY: u64 = 1 << 4;
const START: u64 = 1 << 5;
const END: u64 = 1 << 6;
const NUMERIC: u64 = 1 << 7;
const KAOMOJI: u64 = 1 << 8;
const UPPER_ACCENTED: u64 = 1 << 9;
const LOWER_ACCENTED: u64 = 1 << 10;
const UPPER_COMMON: u64 = 1 << 11;
const LOWER_COMMON: u64 = 1 << 12;
const BOX: u64 = 1 << 13;
// Sets that single badness rules use.
const OE: u64 = 1 << 14;
const A_HAT_LIKE: u64 = 1 << 15;
const AFTER_A_HAT: u64 = 1 << 16;
const SUP_2_3: u64 = 1 << 17;
const ARABIC_LEAD: u64 = 1 << 18;
const ARABIC_NEXT: u64 = 1 << 19;
const SOUTH_ASIAN_NEXT: u64 = 1 << 20;
const AFTER_ROOT: u64 = 1 << 21;
const AFTER_ALMOST: u64 = 1 << 22;
const AFTER_QUOTE_A: u64 = 1 << 23;
const QUOTE_SECOND: u64 = 1 << 24;
const QUOTE_THIRD: u64 = 1 << 25;
const CYRILLIC_LEAD: u64 = 1 << 26;
const CYRILLIC_MIDDLE: u64 = 1 << 27;
const AFTER_A_TILDE: u64 = 1 << 28;
const A_TILDE_OR_HAT: u64 = 1 << 29;
const AFTER_BETA_EURO: u64 = 1 << 30;
const GREEK_LEAD: u64 = 1 << 31;
const GREEK_MIDDLE: u64 = 1 << 32;
const SENTENCE_PUNCT: u64 = 1 << 33;
// Regex classes: [a-z], [A-Za-z], [^A-Za-z], \s, \w, '.', and a plain space.
const ASCII_LOWER: u64 = 1 << 34;
const ASCII_LETTER: u64 = 1 << 35;
const NOT_ASCII_LETTER: u64 = 1 << 36;
const SPACE: u64 = 1 << 37;
const WORD: u64 = 1 << 38;
const NOT_NEWLINE: u64 = 1 << 39;
const PLAIN_SPACE: u64 = 1 << 40;
// What the bytes of UTF-8 look like in the clue encodings: lead bytes C2–DF, E0–EF, F0 and F3; continuation
// bytes 80–BF (and a space, for a lost A0); "strict" continuations, which leave out the punctuation that also
// stands for itself.
const FIRST_OF_2: u64 = 1 << 41;
const FIRST_OF_3: u64 = 1 << 42;
const FIRST_OF_4: u64 = 1 << 43;
const CONTINUATION: u64 = 1 << 44;
const CONTINUATION_STRICT: u64 = 1 << 45;

/// The members of each set; "x-y" is a range (no set holds an ASCII '-').
const SETS: &[(u64, &str)] = &[
    (COMMON, "\u{a0}\u{ad}·´–—―…’"),
    (C1, "\u{80}-\u{9f}"),
    (BAD, "¦¤¨¬¯¸ƒˆˇ˘˛˜†‡‰⌐◊\u{fffd}ªº"),
    (LAW, "¶§"),
    (CURRENCY, "¢£¥₧€"),
    (START, "¡«¿©΄΅‘‚“„•‹\u{f8ff}"),
    (END, "®»˝”›™"),
    (NUMERIC, "²³¹±¼½¾×µ÷⁄∂∆∏∑√∞∩∫≈≠≡≤≥№"),
    (KAOMOJI, "Ò-ÖÙ-Üò-öø-üŐŌŪŲ°"),
    (UPPER_ACCENTED, "À-ÑØÜÝĂĀĄĆČĎĐĘĚĒĖĞĢİĪĶĹĽŁĻŃŇŅŒŘŚŞŠŢŤŮŰŸŹŻŽҐ"),
    (LOWER_ACCENTED, "ßà-ñăąāćčďđęěēėğģįīķĺľłļœŕśşšťüźżžґﬁﬂ"),
    (UPPER_COMMON, "ÞΑ-ΩΆΈΉΊΌΎΏΪΫЁ-Я"),
    (LOWER_COMMON, "α-ωάέήίΰа-џ"),
    (BOX, "│┌┐┘├┤┬┼═-╬▀▄█▌▐░▒▓"),
    (OE, "Œœ"),
    (A_HAT_LIKE, "ÂÃÎÐ"),
    (AFTER_A_HAT, "€œŠš¢£Ÿž\u{a0}\u{ad}®©°·»–—´"),
    (SUP_2_3, "²³"),
    (ARABIC_LEAD, "ØÙ"),
    (ARABIC_NEXT, "ŸŠ®°µ»"),
    (SOUTH_ASIAN_NEXT, "²µ¹¼½¾"),
    (AFTER_ROOT, "±∂†≠®™´≤≥¥µø"),
    (AFTER_ALMOST, "°¢"),
    (AFTER_QUOTE_A, "ìîïòôúùû†°¢π"),
    (QUOTE_SECOND, "âó"),
    (QUOTE_THIRD, "àä°ê"),
    (CYRILLIC_LEAD, "ВГРС"),
    (CYRILLIC_MIDDLE, "°µ"),
    (AFTER_A_TILDE, "\u{a0}¡"),
    (A_TILDE_OR_HAT, "ÃÂ"),
    (AFTER_BETA_EURO, "™\u{a0}Ά\u{ad}®°"),
    (GREEK_LEAD, "ΒΓΞΟ"),
    (GREEK_MIDDLE, "°"),
    (SENTENCE_PUNCT, ".,?!"),
    (ASCII_LOWER, "a-z"),
    (ASCII_LETTER, "a-zA-Z"),
    (PLAIN_SPACE, " "),
];

/// One position of a badness rule: a character in one of the classes, or exactly this character.
#[derive(Clone, Copy)]
enum Class {
    In(u64),
    Is(char),
}
use Class::{In, Is};

/// ftfy's badness rules: character sequences that are much likelier to be mojibake than meant.
const RULES: &[&[Class]] = &[
    &[In(C1)],
    &[In(BAD | LOWER_ACCENTED | UPPER_ACCENTED | BOX | START | END | CURRENCY | NUMERIC | LAW), In(BAD)],
    &[In(ASCII_LETTER), In(LOWER_COMMON | UPPER_COMMON), In(BAD)],
    &[In(BAD), In(LOWER_ACCENTED | UPPER_ACCENTED | BOX | START | END | CURRENCY | NUMERIC | LAW)],
    &[In(LOWER_ACCENTED | LOWER_COMMON | BOX | END | CURRENCY | NUMERIC), In(UPPER_ACCENTED)],
    &[In(BOX | END | CURRENCY | NUMERIC), In(LOWER_ACCENTED)],
    &[In(LOWER_ACCENTED | BOX | END), In(CURRENCY)],
    &[In(SPACE), In(UPPER_ACCENTED), In(CURRENCY)],
    &[In(UPPER_ACCENTED | BOX), In(NUMERIC | LAW)],
    &[In(LOWER_ACCENTED | UPPER_ACCENTED | BOX | CURRENCY | END), In(START), In(NUMERIC)],
    &[In(LOWER_ACCENTED | UPPER_ACCENTED | CURRENCY | NUMERIC | BOX | LAW), In(END), In(START)],
    &[In(CURRENCY | NUMERIC | BOX), In(START)],
    &[In(ASCII_LOWER), In(UPPER_ACCENTED), In(START | CURRENCY)],
    &[In(BOX), In(KAOMOJI)],
    &[In(LOWER_ACCENTED | UPPER_ACCENTED | CURRENCY | NUMERIC | START | END | LAW), In(BOX)],
    &[In(BOX), In(END)],
    &[In(LOWER_ACCENTED | UPPER_ACCENTED), In(START | END), In(WORD)],
    // œ not followed by an unaccented Latin letter; a degree sign after a capital letter.
    &[In(OE), In(NOT_ASCII_LETTER)],
    &[In(UPPER_ACCENTED), Is('°')],
    // Windows-1252 2-character mojibake the rules above miss.
    &[In(A_HAT_LIKE), In(AFTER_A_HAT | START | END)],
    &[Is('×'), In(SUP_2_3)],
    // Arabic in Windows-1252: four characters, since the common characters are involved.
    &[
        In(ARABIC_LEAD),
        In(ARABIC_NEXT | COMMON | CURRENCY | BAD | NUMERIC | START),
        In(ARABIC_LEAD),
        In(ARABIC_NEXT | COMMON | CURRENCY | BAD | NUMERIC | START),
    ],
    // The start of 3-byte sequences of South Asian scripts.
    &[Is('à'), In(SOUTH_ASIAN_NEXT)],
    // MacRoman.
    &[Is('√'), In(AFTER_ROOT)],
    &[Is('≈'), In(AFTER_ALMOST)],
    &[Is('‚'), Is('Ä'), In(AFTER_QUOTE_A)],
    &[Is('‚'), In(QUOTE_SECOND), In(QUOTE_THIRD)],
    // Windows-1251: the U+2000 block, Latin-1 and Cyrillic, and Windows-1251 over Latin-1 over Windows-1252.
    &[Is('в'), Is('Ђ')],
    &[In(CYRILLIC_LEAD), In(CYRILLIC_MIDDLE | C1 | BAD | START | END | CURRENCY), In(CYRILLIC_LEAD)],
    &[Is('Г'), Is('ў'), Is('В'), Is('Ђ'), Is('В'), In(NOT_NEWLINE), In(ASCII_LETTER | PLAIN_SPACE)],
    // Windows-1252 for à, á and the no-break space itself.
    &[Is('Ã'), In(AFTER_A_TILDE)],
    &[In(ASCII_LOWER), In(A_TILDE_OR_HAT), In(PLAIN_SPACE)],
    &[In(ASCII_LOWER), In(SPACE), In(A_TILDE_OR_HAT), In(PLAIN_SPACE)],
    // Â before a common character that it encodes along with itself.
    &[In(ASCII_LOWER | SENTENCE_PUNCT | END), Is('Â'), In(PLAIN_SPACE | START | END)],
    // Windows-1253: the U+2000 block, Latin-1 and Greek.
    &[Is('β'), Is('€'), In(AFTER_BETA_EURO)],
    &[In(GREEK_LEAD), In(GREEK_MIDDLE | C1 | BAD | START | END | CURRENCY), In(GREEK_LEAD)],
    // Windows-1257: the U+2000 block.
    &[Is('ā'), Is('€')],
];

/// A rule that only holds at the start of the text: "Ã " or "Â " there.
const RULE_AT_START: &[Class] = &[In(A_TILDE_OR_HAT), In(PLAIN_SPACE)];

/// Whether the text holds one of ftfy's badness sequences (ftfy's `is_bad`).
pub(super) fn is_bad(text: &str) -> bool {
    let chars: Vec<(char, u64)> = text.chars().map(|c| (c, mask(c))).collect();
    let matches = |rule: &[Class], at: usize| {
        rule.len() <= chars.len() - at
            && rule.iter().zip(&chars[at..]).all(|(class, &(c, m))| match *class {
                In(bits) => m & bits != 0,
                Is(want) => c == want,
            })
    };
    matches(RULE_AT_START, 0) || (0..chars.len()).any(|at| RULES.iter().any(|rule| matches(rule, at)))
}

struct Masks {
    ascii: [u64; 128],
    other: HashMap<char, u64>,
}

fn mask(c: char) -> u64 {
    static MASKS: OnceLock<Masks> = OnceLock::new();
    let masks = MASKS.get_or_init(build_masks);
    match masks.ascii.get(c as usize) {
        Some(&m) => m,
        None => masks.other.get(&c).copied().unwrap_or(0) | properties(c),
    }
}

/// The classes that come from Unicode properties rather than lists. Python's `\s` is `str.isspace`.
fn properties(c: char) -> u64 {
    let mut m = 0;
    if c != '\n' {
        m |= NOT_NEWLINE;
    }
    if !c.is_ascii_alphabetic() {
        m |= NOT_ASCII_LETTER;
    }
    if super::is_python_space(c) {
        m |= SPACE;
    }
    if c.is_alphanumeric() || c == '_' {
        m |= WORD;
    }
    m
}

fn build_masks() -> Masks {
    let mut other: HashMap<char, u64> = HashMap::new();
    let mut add = |c: char, bits: u64| *other.entry(c).or_default() |= bits;
    for &(bits, members) in SETS {
        let chars: Vec<char> = members.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if chars.get(i + 1) == Some(&'-') && i + 2 < chars.len() {
                (chars[i]..=chars[i + 2]).for_each(|c| add(c, bits));
                i += 3;
            } else {
                add(chars[i], bits);
                i += 1;
            }
        }
    }
    for codec in CLUE_CODECS {
        for (byte, c) in (0x80u8..=0xff).zip(codec.high.chars()) {
            match byte {
                0x80..=0xbf => add(c, CONTINUATION),
                0xc2..=0xdf => add(c, FIRST_OF_2),
                0xe0..=0xef => add(c, FIRST_OF_3),
                0xf0 | 0xf3 => add(c, FIRST_OF_4),
                _ => {}
            }
        }
    }
    add(' ', CONTINUATION);
    // Punctuation and spaces also stand for themselves next to mojibake.
    const NOT_STRICT: &str = " –—―‘’‚“”„•…";
    for (c, m) in other.iter_mut() {
        if *m & CONTINUATION != 0 && !NOT_STRICT.contains(*c) {
            *m |= CONTINUATION_STRICT;
        }
    }
    let mut ascii = [0; 128];
    for (i, m) in ascii.iter_mut().enumerate() {
        let c = char::from(i as u8);
        *m = other.get(&c).copied().unwrap_or(0) | properties(c);
    }
    Masks { ascii, other }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(text: &str) -> String {
        fix_encoding(text).into_owned()
    }

    #[test]
    fn repairs_utf8_read_as_a_single_byte_encoding() {
        assert_eq!(fixed("cafÃ© crÃ¨me"), "café crème");
        assert_eq!(fixed("donâ€™t"), "don\u{2019}t");
        assert_eq!(fixed("ÐŸÑ€Ð¸Ð²ÐµÑ‚"), "Привет");
        assert_eq!(fixed("РџСЂРёРІРµС‚"), "Привет");
        assert_eq!(fixed("emoji ðŸ˜€"), "emoji 😀");
        // Twice encoded; a lost no-break space; a byte lost to U+FFFD.
        assert_eq!(fixed("cafÃƒÂ©"), "café");
        assert_eq!(fixed("voilÃ  le travail"), "voilà le travail");
        assert_eq!(fixed("â€œ like this â€\u{fffd}"), "\u{201c} like this \u{fffd}");
        // Mojibake next to correct text.
        assert_eq!(fixed("naïve cafÃ©"), "naïve café");
    }

    #[test]
    fn leaves_legitimate_text_alone() {
        for text in ["NÃO, AÇÃO", "São Paulo", "PÂTISSERIE", "Å is a word", "100°C ½ © ®", "(╯°□°)╯︵ ┻━┻"]
        {
            assert_eq!(fixed(text), text);
            assert!(matches!(fix_encoding(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn every_codec_maps_128_bytes() {
        for codec in CODECS {
            assert_eq!(codec.high.chars().count(), 128, "{}", codec.high);
        }
    }

    #[test]
    fn cesu8_and_java_null_decode() {
        assert_eq!(decode_utf8_variants(b"\xed\xa0\xbd\xed\xb8\x80 \xc0\x80").as_deref(), Some("😀 \0"));
        assert_eq!(decode_utf8_variants(b"\xed\xa0\xbd"), None);
        assert_eq!(decode_utf8_variants(b"\xc0"), None);
    }

    #[test]
    fn c1_controls_read_as_windows_1252() {
        assert_eq!(c1_as_windows_1252('\u{80}'), '€');
        assert_eq!(c1_as_windows_1252('\u{81}'), '\u{81}');
        assert_eq!(fixed("\u{93}quoted\u{94}"), "\u{201c}quoted\u{201d}");
    }
}
