"""Captions and open_clip's cleaning of each, for tests/it/clip_parity.rs: prints a JSON list of [caption, cleaned]
where cleaned is open_clip's `_clean_lower`, i.e. `whitespace_clean(basic_clean(caption)).lower()` with
`basic_clean` = `html.unescape(html.unescape(ftfy.fix_text(caption))).strip()`.

The captions are correct text in several scripts, the mojibake that UTF-8 becomes when read as Windows-1252,
Latin-1 (once or twice), Windows-1251 or MacRoman, partly broken and mixed forms, and legitimate text that
only looks like mojibake.
"""

import html
import json
import re
import sys

import ftfy
import ftfy.bad_codecs  # noqa: F401 (registers the sloppy-windows-* codecs)

CORRECT = [
    "café crème à la carte",
    "Où est la bibliothèque ? Très bien, merci",
    "Voilà le travail, déjà vu",
    "À bientôt, Hélène",
    "Grüße aus München, schön",
    "Die Straße ist groß",
    "São Paulo é a maior cidade do Brasil",
    "às vezes, àquela hora, ação e coração",
    "¿Qué tal? Año nuevo, niño",
    "Привет, как дела?",
    "Москва — столица России",
    "Καλημέρα κόσμε",
    "你好，世界",
    "北京欢迎你",
    "こんにちは世界",
    "안녕하세요",
    "I ❤️ Paris 😍🎉",
    "👍🏽 great 🇫🇷",
    "don’t “quote” — dash… ellipsis",
    "price: 5€, £3, ¥100",
    "مرحبا بالعالم",
    "İstanbul'da güzel bir gün, ağaç",
    "Zażółć gęślą jaźń",
    "Příliš žluťoučký kůň",
    "Tiếng Việt rất đẹp",
    "naïve façade, résumé",
    "Smørrebrød og Ørsted",
    "Łódź, Kraków",
    "PÓS-GRADUAÇÃO EM SÃO PAULO",
    "100°C ½ price © 2020 ®",
    "«Bonjour» ‹ok›",
    "Ærøskøbing, Þórður",
    "cœur, Œuvre",
    "2² × 3³ ± 1",
    "µm • bullet · dot",
    "¯\\_(ツ)_/¯",
    "(╯°□°)╯︵ ┻━┻",
    "ಠ_ಠ",
]

# Legitimate text that uses the characters mojibake is made of; ftfy leaves most of these alone.
LEGIT = [
    "NÃO, AÇÃO, CORAÇÃO",
    "ÃO",
    "Â",
    "PÂTISSERIE",
    "Ã€ la carte",
    "Ã la mode",
    "à la carte",
    "Ça va? Ça marche.",
    "ÀÁÂÃÄÅ ÈÉÊË",
    "Ð Ñ Ò Ó Ô Õ Ö",
    "Å is a word in Swedish",
    "™ and ® and ©",
    "a–b—c",
    "x¹ y² z³",
    "€100",
    "10 € 20 £",
    "Ì",
    "ÂÂÂ",
    "Ã©",
    "ÃƒÂ",
    "Ø§Ù",
    "Jesús Ãlvarez",
    "fà cil",
    "Ã¨",
    "§ 1 ¶ 2",
    "¬_¬",
    "ð",
    "√2 ≈ 1.41",
    "β€™",
    "вЂ",
    "ā€",
    "Ã ",
    "Ã ",
    "Â bientôt",
    "ÃÂ ",
    "Ã©t",
    "Ã¡",
    "Â°",
    "Â·",
    "Ã—",
]

# Mixed and partial breakage, HTML, controls and several lines.
MIXED = [
    "naïve cafÃ©",
    "cafÃ© naïve",
    "donâ€™t say “naïve”",
    "â€œ like this â€�",
    "voilÃ  le travail",
    "voilÃ le travail",
    "Ã la mode",
    "Ã\xa0 la mode",
    "The Mona Lisa doesnÃƒÂ¢Ã¢â€šÂ¬Ã¢â€žÂ¢t have eyebrows.",
    "caf&eacute; &amp; donâ€™t",
    "caf&Atilde;&copy;",
    "P&EACUTE;REZ",
    "&lt;b&gt;cafÃ©&lt;/b&gt;",
    "<b>cafÃ©</b> &amp;amp;",
    "&amp;amp;amp;amp; deep",
    "\x93quoted\x94 \x80 5",
    "\x81\x8d odd bytes",
    "cafÃ©\nnaïve cafÃ©\r\nthird â€” line",
    "line one\n<p>cafÃ©</p>\n&eacute;",
    "Ã©Ã¨Ã Ã¹",
    "Ã\x83Â©",
    "emoji ðŸ˜€ and text",
    "ðŸ‘\x8d thumbs",
    "ðŸ‘ thumbs",
    "\u00e2\u20ac\u2122",
    "Â£50 Â°C Â©",
    "price Â£5",
    "It costs 5â‚¬",
    "Ãœber Ã„rger",
    "Ä\x8dau",
    "ï¼¡ï¼¢",
    "ï¬\x81ne",
    "\x1b[31mred\x1b[0m cafÃ©",
    "tab\tand\x0bvt",
    "\ufeffBOM cafÃ©",
    "ŉ ǲ ﬅ ʼquoteʼ",
    "ｶﾀｶﾅ ￦ ￣",
    "Ã\u0301",
    "e\u0301 decomposed",
    "HTML &#233; &#x2019; &#150; &#39;",
    "&NTILDE; &nTILDE; &SZLIG;",
    "&eacute without semicolon",
    "ampersand & alone",
    "Ã ",
    "Ã¤ÃŸ ok",
    "ÐŸÑ€Ð¸Ð²ÐµÑ‚ ÐŸÑ€Ð¸Ð²ÐµÑ‚",
    "Ð¿Ñ\x80Ð¸",
    "Ð¿Ñ€Ð¸Ð²ÐµÑ‚, Ð¼Ð¸Ñ€!",
    "РџСЂРёРІРµС‚",
    "Ã\x83Â\x83Ã\x82Â©",
    "CÃ\xa0 phÃª",
    "mÃ¡s, mÃ¡s",
    "l’Ã©tÃ©",
    "Ã€ bientÃ´t",
    "Sen. Ã‰lise",
]


def open_clip_clean(text: str) -> str:
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def mojibake(text: str) -> list[str]:
    data = text.encode("utf-8")
    forms = [
        data.decode("latin-1"),
        data.decode("sloppy-windows-1252"),
        data.decode("windows-1252", errors="replace"),
        data.decode("sloppy-windows-1252").encode("utf-8").decode("sloppy-windows-1252"),
        data.decode("latin-1").encode("utf-8").decode("latin-1"),
        data.decode("sloppy-windows-1251"),
        data.decode("mac_roman"),
    ]
    out = []
    for form in forms:
        if form != text and form not in out:
            out.append(form)
    return out


def cases() -> list[str]:
    out = []
    for text in CORRECT:
        out.append(text)
        out.extend(mojibake(text))
    out.extend(LEGIT)
    out.extend(MIXED)
    # No lone surrogates: neither JSON nor Rust strings hold them.
    return [c for c in dict.fromkeys(out) if not re.search("[\ud800-\udfff]", c)]


def main() -> None:
    json.dump([[c, open_clip_clean(c)] for c in cases()], sys.stdout)


if __name__ == "__main__":
    main()
