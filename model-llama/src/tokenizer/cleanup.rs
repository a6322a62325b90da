//! Removal of the spaces a word-level tokenizer leaves before punctuation, applied after
//! decoding when the tokenizer asks for it.

/// Which clean-up [`crate::tokenizer::Tokenizer::decode`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cleanup {
    /// None (most byte-level BPE tokenizers).
    None,
    /// `transformers`' `clean_up_tokenization` (`clean_up_tokenization_spaces: true` in
    /// `tokenizer_config.json`).
    Transformers,
    /// llama.cpp's `clean_spaces` pass of `llama_detokenize`, on for most BPE pre-tokenizers.
    LlamaCpp,
}

impl Cleanup {
    /// Applies the clean-up to decoded text.
    pub(crate) fn apply(self, text: String) -> String {
        match self {
            Cleanup::None => text,
            Cleanup::Transformers => transformers(&text),
            Cleanup::LlamaCpp => llama_cpp(text),
        }
    }
}

/// `PreTrainedTokenizerBase.clean_up_tokenization` of `transformers`.
fn transformers(text: &str) -> String {
    [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ]
    .iter()
    .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
}

/// The three passes of `llama_vocab::impl::detokenize` when `clean_spaces` is set: drop a
/// space before `?!.,`; turn `" ' "` into `"'"`; drop the space before `'s`, `'m`, `'re`,
/// `'ve`. Only ASCII spaces are removed, so the text stays valid UTF-8.
fn llama_cpp(text: String) -> String {
    let mut t = text.into_bytes();
    // First pass: " ?", " !", " .", " ,".
    let mut out: Vec<u8> = Vec::with_capacity(t.len());
    for (i, &x) in t.iter().enumerate() {
        if i > 0 && t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            out.pop();
        }
        out.push(x);
    }
    t = out;
    // Second pass: a single apostrophe between spaces.
    let mut out: Vec<u8> = Vec::with_capacity(t.len());
    let mut i = 0;
    while i < t.len() {
        let x = t[i];
        if i > 0 && x == b'\'' && i + 1 < t.len() && t[i - 1] == b' ' && t[i + 1] == b' ' {
            out.pop();
            out.push(x);
            // llama.cpp overwrites the skipped space with NUL, so it cannot start a match.
            t[i + 1] = 0;
            i += 2;
            continue;
        }
        out.push(x);
        i += 1;
    }
    t = out;
    // Third pass: contractions " 's", " 'm", " 're", " 've".
    let mut out: Vec<u8> = Vec::with_capacity(t.len());
    for (i, &x) in t.iter().enumerate() {
        if i > 0 && t[i - 1] == b' ' && x == b'\'' && i + 1 < t.len() {
            let (x1, x2) = (t[i + 1], t.get(i + 2).copied());
            let contraction = matches!(x1, b's' | b'm') || (x2 == Some(b'e') && matches!(x1, b'r' | b'v'));
            if contraction {
                out.pop();
            }
        }
        out.push(x);
    }
    // Only ASCII bytes were removed, never part of a multi-byte sequence.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_passes() {
        let t = |s: &str| Cleanup::LlamaCpp.apply(s.to_string());
        assert_eq!(t("Hi , there ! Ok ? Yes ."), "Hi, there! Ok? Yes.");
        assert_eq!(t("rock ' n roll"), "rock'n roll");
        assert_eq!(t("a ' ' b"), "a'' b");
        assert_eq!(t("it 's I 'm we 're you 've they 'll don 't"), "it's I'm we're you've they 'll don 't");
        assert_eq!(t(" ."), ".");
        assert_eq!(t("' s"), "' s", "the first character is never a match");
        assert_eq!(t("é , ü"), "é, ü");
        assert_eq!(t(""), "");
    }

    #[test]
    fn transformers_replacements() {
        let t = |s: &str| Cleanup::Transformers.apply(s.to_string());
        assert_eq!(t("Hi , there ! I do n't know . It 's"), "Hi, there! I don't know. It's");
        assert_eq!(Cleanup::None.apply("a , b".into()), "a , b");
    }
}
