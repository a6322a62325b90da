//! Blockwise 8-bit storage of optimizer states, as bitsandbytes' 8-bit optimizers keep them.
//!
//! Each state tensor is cut into blocks of [`STATE_BLOCK`] values; a block stores its largest
//! |value| (`absmax`, f32) and one byte per value, an index into a 256-entry "dynamic" map of
//! the interval [-1, 1] (signed, for Adam's first moment) or [0, 1] (unsigned, for the second
//! moment). The maps are bitsandbytes' `create_dynamic_map(signed=True/False)`; a value is
//! stored as the map index that [`quantize_2d`] picks for `value / absmax`, exactly as the CUDA
//! kernel `kOptimizerStatic8bit2StateBlockwise` picks it (`quantize_2D<SIGNED>`).

/// Values per quantization block of an 8-bit optimizer state (bitsandbytes' `blocksize = 256`).
pub const STATE_BLOCK: usize = 256;

pub use engine::quant::dynamic_map::{create_dynamic_map, quantize_2d, signed_map, unsigned_map};

/// One optimizer state in blockwise 8-bit form.
#[derive(Debug, Clone, PartialEq)]
pub struct Blockwise8 {
    /// Map index per value.
    pub codes: Vec<u8>,
    /// Largest |value| per block of [`STATE_BLOCK`].
    pub absmax: Vec<f32>,
    /// Signed (first moment) or unsigned (second moment) map.
    pub signed: bool,
}

impl Blockwise8 {
    /// The all-zero state of `n` values (codes 0 and absmax 0, as bitsandbytes allocates it).
    pub fn zeros(n: usize, signed: bool) -> Blockwise8 {
        Blockwise8 { codes: vec![0; n], absmax: vec![0.0; n.div_ceil(STATE_BLOCK)], signed }
    }

    pub fn len(&self) -> usize {
        self.codes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    pub fn map(&self) -> &'static [f32; 256] {
        if self.signed {
            signed_map()
        } else {
            unsigned_map()
        }
    }

    /// Quantizes `values` block by block (absmax of each block, then [`quantize_2d`] of
    /// `value / absmax`; for the signed map a code whose sign differs from the value's moves
    /// one step toward it, as bitsandbytes does for the first moment).
    pub fn quantize(values: &[f32], signed: bool) -> Blockwise8 {
        let mut q = Blockwise8::zeros(values.len(), signed);
        for (b, block) in values.chunks(STATE_BLOCK).enumerate() {
            let absmax = block.iter().fold(-f32::MAX, |m, &v| m.max(v.abs()));
            q.store_block(b, block, absmax);
        }
        q
    }

    /// Writes block `b` from `values` with the given `absmax` (the kernel's `fmaxf` over the
    /// block's |values|).
    pub(crate) fn store_block(&mut self, b: usize, values: &[f32], absmax: f32) {
        let code = self.map();
        self.absmax[b] = absmax;
        let start = b * STATE_BLOCK;
        for (j, &v) in values.iter().enumerate() {
            let mut c = quantize_2d(code, self.signed, v / absmax);
            if self.signed && code[c as usize].is_sign_negative() != v.is_sign_negative() {
                c = if v > 0.0 { c.wrapping_add(1) } else { c.wrapping_sub(1) };
            }
            self.codes[start + j] = c;
        }
    }

    /// The value stored at `i`: `map[code] * absmax[block]`.
    pub fn get(&self, i: usize) -> f32 {
        self.map()[self.codes[i] as usize] * self.absmax[i / STATE_BLOCK]
    }

    /// Every stored value.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_have_the_documented_shape() {
        let s = signed_map();
        assert_eq!(s[127], 0.0);
        assert_eq!(s[255], 1.0);
        assert!((s[0] + 0.99296874).abs() < 1e-7, "{}", s[0]);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        let u = unsigned_map();
        assert_eq!(u[0], 0.0);
        assert_eq!(u[255], 1.0);
        assert!(u.windows(2).all(|w| w[0] < w[1]));
        // Smallest positive entry: 1e-6 * (0.1 + 0.45) / 2 of the first exponent's 2 items.
        assert!((u[1] - 1e-6 * 0.325).abs() < 1e-12, "{}", u[1]);
    }

    #[test]
    fn quantize_2d_finds_exact_entries() {
        for signed in [true, false] {
            let code = if signed { signed_map() } else { unsigned_map() };
            for (i, &v) in code.iter().enumerate() {
                assert_eq!(quantize_2d(code, signed, v) as usize, i, "signed {signed} entry {i} = {v}");
            }
        }
    }
}
