//! Incremental decoding: text pieces as ids arrive during generation.

use super::Tokenizer;
use crate::error::Result;

/// Turns ids into text one id at a time.
///
/// [`TokenStream::step`] returns the new text once it ends in a whole character: a character
/// whose UTF-8 bytes are spread over several byte-level tokens (an emoji, a CJK character
/// split by BPE) is held back until its last byte arrives. Each step decodes a short window
/// of recent ids (the ids of the previous piece plus the new ones) and returns the part
/// beyond the previous piece's text, so decoders that strip or add spaces at the start of a
/// text (SentencePiece-style `tokenizer.json` files) stay exact. [`TokenStream::flush`]
/// returns whatever is still held back at the end, with U+FFFD for incomplete characters.
/// The pieces are not cleaned up ([`Tokenizer::decode`] may remove spaces before
/// punctuation for some tokenizers; llama.cpp does not do that while streaming either).
pub struct TokenStream<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    /// Recent ids: `ids[..read]` were already returned, `ids[read..]` are pending.
    ids: Vec<u32>,
    read: usize,
}

impl<'a> TokenStream<'a> {
    pub(super) fn new(tokenizer: &'a Tokenizer, skip_special: bool) -> TokenStream<'a> {
        TokenStream { tokenizer, skip_special, ids: Vec::new(), read: 0 }
    }

    /// Adds `id`; returns the text it completes, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        self.emit(false)
    }

    /// Returns the text still held back (an incomplete character as U+FFFD), if any.
    pub fn flush(&mut self) -> Result<Option<String>> {
        self.emit(true)
    }

    fn emit(&mut self, force: bool) -> Result<Option<String>> {
        if self.read == self.ids.len() {
            return Ok(None);
        }
        let prefix = self.tokenizer.decode_raw(&self.ids[..self.read], self.skip_special)?;
        let text = self.tokenizer.decode_raw(&self.ids, self.skip_special)?;
        if text.len() <= prefix.len() || (!force && text.ends_with('\u{FFFD}')) {
            if force {
                self.ids.clear();
                self.read = 0;
            }
            return Ok(None);
        }
        let piece = match text.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            // The window decodes differently at its start (should not happen with the decoders
            // used here): return what follows the common prefix.
            None => {
                let common = text.char_indices().zip(prefix.chars()).take_while(|((_, a), b)| a == b).count();
                text.chars().skip(common).collect()
            }
        };
        // The new ids become the next window's prefix.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        Ok(Some(piece))
    }
}
