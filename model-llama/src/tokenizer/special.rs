//! Special tokens found by their text, as llama.cpp's `llama_vocab::impl::load` finds them
//! (llama-vocab.cpp): end-of-turn, end-of-message and fill-in-the-middle tokens, and the set
//! of tokens that end generation.
//!
//! llama.cpp scans its token map (an `unordered_map`) and keeps the first match of each
//! list, so which of several candidates it picks depends on hash order; here the lowest id
//! wins. It only matters for vocabularies with two candidates of one list that are not both
//! end-of-generation texts anyway.

/// End-of-turn texts (`special_eot_id` detection).
const EOT: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
/// End-of-message texts (`special_eom_id`).
const EOM: &[&str] = &["<|eom_id|>"];
/// Fill-in-the-middle texts: prefix, suffix, middle, pad, repository, file separator.
const FIM_PRE: &[&str] =
    &["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>"];
const FIM_SUF: &[&str] =
    &["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>"];
const FIM_MID: &[&str] =
    &["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>"];
const FIM_PAD: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"];
const FIM_REP: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP: &[&str] = &["<|file_sep|>"];
/// Texts that always end generation.
const EOG: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];
/// gpt-oss tokens llama.cpp always renders (forced to user-defined).
pub(crate) const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// Special ids given explicitly (GGUF `tokenizer.ggml.*_token_id` keys); `None` means "find by
/// text".
#[derive(Debug, Default, Clone)]
pub(crate) struct ExplicitIds {
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}

/// The lowest id whose text is in `texts`.
fn find(lookup: &impl Fn(&str) -> Option<u32>, texts: &[&str]) -> Option<u32> {
    texts.iter().filter_map(|t| lookup(t)).min()
}

/// Ids llama.cpp turns into control tokens because their text marks them as end-of-turn,
/// end-of-message, fill-in-the-middle or end-of-generation tokens (only those found by text,
/// not those given explicitly).
pub(crate) fn detected_control(lookup: impl Fn(&str) -> Option<u32>, explicit: &ExplicitIds) -> Vec<u32> {
    let lists: [(Option<u32>, &[&str]); 8] = [
        (explicit.eot, EOT),
        (explicit.eom, EOM),
        (explicit.fim_pre, FIM_PRE),
        (explicit.fim_suf, FIM_SUF),
        (explicit.fim_mid, FIM_MID),
        (explicit.fim_pad, FIM_PAD),
        (explicit.fim_rep, FIM_REP),
        (explicit.fim_sep, FIM_SEP),
    ];
    let mut ids: Vec<u32> = lists
        .iter()
        .filter(|(given, _)| given.is_none())
        .filter_map(|(_, texts)| find(&lookup, texts))
        .chain(EOG.iter().filter_map(|t| lookup(t)))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// llama.cpp's end-of-generation set: the fill-in-the-middle pad/repository/separator
/// tokens, every token whose text is an end-of-generation text, EOS, the end-of-turn and the
/// end-of-message token; without `<|end|>` when `<|return|>` and `<|call|>` are also there
/// (gpt-oss). Sorted.
pub(crate) fn end_of_generation(lookup: impl Fn(&str) -> Option<u32>, explicit: &ExplicitIds) -> Vec<u32> {
    let or_find = |given: Option<u32>, texts: &[&str]| given.or_else(|| find(&lookup, texts));
    let mut ids: Vec<u32> = [
        or_find(explicit.fim_pad, FIM_PAD),
        or_find(explicit.fim_rep, FIM_REP),
        or_find(explicit.fim_sep, FIM_SEP),
        explicit.eos,
        or_find(explicit.eot, EOT),
        or_find(explicit.eom, EOM),
    ]
    .into_iter()
    .flatten()
    .chain(EOG.iter().filter_map(|t| lookup(t)))
    .collect();
    ids.sort_unstable();
    ids.dedup();
    let has = |t: &str| lookup(t).is_some_and(|id| ids.contains(&id));
    if has("<|return|>") && has("<|call|>") {
        if let Some(end) = lookup("<|end|>") {
            ids.retain(|&id| id != end);
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab<'a>(tokens: &'a [&'a str]) -> impl Fn(&str) -> Option<u32> + 'a {
        move |t| tokens.iter().position(|x| *x == t).map(|i| i as u32)
    }

    #[test]
    fn chatml_vocabulary() {
        let tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "hello"];
        let explicit = ExplicitIds { eos: Some(2), ..Default::default() };
        assert_eq!(end_of_generation(vocab(&tokens), &explicit), [0, 2, 4]);
        assert_eq!(detected_control(vocab(&tokens), &explicit), [0, 2, 4]);
    }

    #[test]
    fn gpt_oss_end_is_not_end_of_generation() {
        let tokens = ["<|return|>", "<|call|>", "<|end|>", "x"];
        assert_eq!(end_of_generation(vocab(&tokens), &ExplicitIds::default()), [0, 1]);
    }

    #[test]
    fn explicit_ids_win_and_are_not_forced_to_control() {
        let tokens = ["<|eot_id|>", "<|eom_id|>", "<｜end▁of▁sentence｜>", "x"];
        let explicit = ExplicitIds { eot: Some(3), eos: Some(2), ..Default::default() };
        assert_eq!(end_of_generation(vocab(&tokens), &explicit), [0, 1, 2, 3]);
        assert_eq!(detected_control(vocab(&tokens), &explicit), [0, 1]);
    }
}
