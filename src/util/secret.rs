//! Names that look like they hold a secret. Settings and params enter keys, manifests, plans and stale
//! reasons, so a value under such a name is refused where it is written, and the user pointed to passing it
//! through the environment instead.

/// Whether a param or environment variable name reads like a credential: one of its `_`/`-`/`.`-separated
/// words (case aside) is a secret word, or two adjacent words make one (`api_key`, `access_key`).
pub fn looks_secret(name: &str) -> bool {
    const WORDS: &[&str] = &["token", "secret", "password", "passwd", "pwd", "apikey", "credential", "credentials"];
    const PAIRS: &[(&str, &str)] = &[("api", "key"), ("access", "key"), ("private", "key"), ("auth", "key")];
    let words: Vec<String> = name.split(['_', '-', '.']).map(str::to_ascii_lowercase).collect();
    words.iter().any(|w| WORDS.contains(&w.as_str()))
        || words.windows(2).any(|p| PAIRS.iter().any(|(a, b)| p[0] == *a && p[1] == *b))
}

#[cfg(test)]
mod tests {
    use super::looks_secret;

    #[test]
    fn secret_words_are_found_whole_and_ordinary_names_pass() {
        for name in [
            "token",
            "HF_TOKEN",
            "hf-token",
            "aws.secret",
            "DB_PASSWORD",
            "OPENAI_API_KEY",
            "access_key",
            "GOOGLE_CREDENTIALS",
        ] {
            assert!(looks_secret(name), "{name}");
        }
        for name in ["max_tokens", "tokenizer", "key", "sort_key", "mode", "secretary_count", "keys", "monkey"] {
            assert!(!looks_secret(name), "{name}");
        }
    }
}
