//! Text generation: prefill, then one token at a time through the KV cache, with greedy,
//! temperature, top-k and top-p sampling (seeded), stopping at end-of-sequence tokens,
//! stop strings or a token budget.

use crate::kv_cache::KvCache;
use crate::model::Llama;
use engine::rng::Rng;
use engine::{ops, Tensor};

#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (1.0 = off).
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler { params, rng }
    }

    /// Picks the next token from a row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> =
            logits.iter().enumerate().map(|(i, &l)| (i as u32, l / p.temperature)).collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let m = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| (c.1 - m).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs.iter().position(|&q| {
                acc += q;
                acc >= p.top_p
            });
            probs.truncate(keep.map_or(probs.len(), |k| k + 1));
        }
        let total: f32 = probs.iter().sum();
        let mut u = self.rng.uniform() as f32 * total;
        for (i, &q) in probs.iter().enumerate() {
            if u < q {
                return cand[i].0;
            }
            u -= q;
        }
        cand[probs.len() - 1].0
    }
}

/// Index of the largest value (the first one on ties, as llama.cpp and PyTorch do).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-sequence token was produced (it is not part of the output).
    Eos(u32),
    /// The callback asked to stop (e.g. a stop string appeared).
    Stopped,
    /// `max_new_tokens` were produced.
    Length,
}

/// Generates up to `max_new_tokens` after `prompt` (batch 1). `on_token` sees each new
/// token (not EOS) and returns false to stop. Returns the new tokens and why it ended.
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    max_new_tokens: usize,
    eos_ids: &[u32],
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32) -> bool,
) -> engine::Result<(Vec<u32>, Finish)> {
    let _ng = engine::no_grad();
    if prompt.is_empty() {
        return Err(engine::Error::Msg("generate: the prompt has no tokens".into()));
    }
    let c = &model.config;
    let max_len = (prompt.len() + max_new_tokens).min(c.max_position_embeddings);
    if prompt.len() >= max_len {
        return Err(engine::Error::Msg(format!(
            "generate: prompt of {} tokens leaves no room in the model's context of {}",
            prompt.len(),
            c.max_position_embeddings
        )));
    }
    let mut cache = KvCache::new(
        c.num_hidden_layers,
        1,
        c.num_key_value_heads,
        c.head_dim,
        max_len,
        model.dtype,
        model.embed_tokens.device(),
    )?;
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    while out.len() < max_new_tokens {
        if cache.len() + input.len() > max_len {
            return Ok((out, Finish::Length));
        }
        let ids = Tensor::from_vec(input.clone(), &[1, input.len()])?;
        let h = model.hidden_states(&ids, Some(&mut cache), false)?;
        let last = ops::narrow(&h, 1, input.len() - 1, 1)?;
        let logits = model.lm_logits(&last)?.to_vec_f32()?;
        let next = sampler.sample(&logits);
        if eos_ids.contains(&next) {
            return Ok((out, Finish::Eos(next)));
        }
        out.push(next);
        if !on_token(next) {
            return Ok((out, Finish::Stopped));
        }
        input = vec![next];
    }
    Ok((out, Finish::Length))
}

/// Streams generated text while watching for stop strings: text that could still become
/// the start of a stop string is held back, and nothing from a stop string on is emitted.
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), pending: String::new() }
    }

    /// Adds `piece`; returns the text safe to show and whether a stop string appeared.
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let hold = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|p| self.pending.ends_with(p))
            .map(|p| p.len())
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// Text still held back when generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_string_split_across_pieces_is_not_emitted() {
        let mut m = StopMatcher::new(vec!["<|im_end|>".into()]);
        let mut shown = String::new();
        for piece in ["Hello", " wor", "ld<|im", "_e"] {
            let (s, stop) = m.push(piece);
            shown += &s;
            assert!(!stop);
        }
        assert_eq!(shown, "Hello world");
        let (s, stop) = m.push("nd|> tail");
        assert!(stop);
        assert_eq!(shown + &s, "Hello world");
    }

    #[test]
    fn held_text_is_released_when_it_stops_matching() {
        let mut m = StopMatcher::new(vec!["###".into()]);
        assert_eq!(m.push("a #"), ("a ".to_string(), false));
        assert_eq!(m.push("b"), ("#b".to_string(), false));
        assert_eq!(m.push("#"), (String::new(), false));
        assert_eq!(m.finish(), "#");
    }

    #[test]
    fn sampler_is_greedy_at_zero_temperature_and_seeded_otherwise() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        assert_eq!(Sampler::new(SamplingParams::default()).sample(&logits), 1);
        let p = SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 7 };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p.clone());
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p.clone());
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b, "same seed, same samples");
        assert!(a.contains(&1) && a.contains(&2), "temperature 1 samples both likely tokens: {a:?}");
        let k1 = SamplingParams { top_k: 1, ..p.clone() };
        let mut s = Sampler::new(k1);
        assert!((0..20).all(|_| s.sample(&logits) == 1), "top_k 1 is greedy");
        let tp = SamplingParams { top_p: 0.3, ..p };
        let mut s = Sampler::new(tp);
        assert!((0..20).all(|_| s.sample(&logits) == 1), "top_p below the top probability keeps one token");
    }
}
