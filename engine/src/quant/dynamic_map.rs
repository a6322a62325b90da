//! bitsandbytes' 8-bit "dynamic" maps: 256 sorted values of [-1, 1] (signed) or [0, 1]
//! (unsigned), dense near zero. NF4 double quantization stores its absmax codes in the signed
//! map; the 8-bit AdamW states use both.

use std::sync::OnceLock;

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU, value for value (the
/// first half counts up from `start`, the second half down from `end`, each one fused
/// multiply-add).
pub(crate) fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| if i < halfway { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - 1 - i) as f32, end) })
        .collect()
}

/// bitsandbytes' `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`: for each
/// exponent `i` in 0..7 the midpoints of `linspace(0.1, 1, n_i + 1)` (float32) times `10^(i-6)`,
/// where `n_i = 2^i` (signed, both signs) or `2^(i+1)` (unsigned), then 0 and 1.0, sorted.
///
/// Signed: 127 negative values from -0.99296874, 0 at index 127, 127 positive values, 1.0 at
/// index 255. Unsigned: 0 at index 0, 254 positive values, 1.0 at index 255.
pub fn create_dynamic_map(signed: bool) -> [f32; 256] {
    // `10 ** (i - 6)` in Python (a float64, an int for i = 6) times a float32 tensor: torch
    // multiplies in float32 by the scalar rounded to float32.
    const POW10: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for (i, &pow10) in POW10.iter().enumerate() {
        let items = if signed { 1usize << i } else { 1usize << (i + 1) };
        let boundaries = torch_linspace_f32(0.1, 1.0, items + 1);
        let scale = pow10 as f32;
        let means: Vec<f32> = boundaries.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        data.extend(means.iter().map(|&m| scale * m));
        if signed {
            data.extend(means.iter().map(|&m| -scale * m));
        }
    }
    data.push(0.0);
    data.push(1.0);
    assert_eq!(data.len(), 256, "dynamic map must have 256 entries");
    data.sort_by(|a, b| a.partial_cmp(b).expect("dynamic map has no NaN"));
    let mut out = [0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// The signed dynamic map (first moment), built once.
pub fn signed_map() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(|| create_dynamic_map(true))
}

/// The unsigned dynamic map (second moment), built once.
pub fn unsigned_map() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(|| create_dynamic_map(false))
}

/// The map index of `x` (a value already divided by its block's absmax), as bitsandbytes'
/// `quantize_2D<SIGNED>`: a 7-step binary search from index 127, then the choice between the
/// last probe and its bracketing neighbour by comparing `x` with their float32 midpoint. The
/// bracket starts as [-1, 1] (signed) or [0, 1] (unsigned). NaN ends at index 0.
pub fn quantize_2d(code: &[f32; 256], signed: bool, x: f32) -> u8 {
    closest(&probe(code, x, if signed { -1.0 } else { 0.0 }), x)
}

/// Where bitsandbytes' 7-step binary search over a sorted 256-entry map ends for `x`: the last
/// probed index and value, and the indices and values of the bracket around it (the bracket
/// starts as `[lower, 1]` at indices 0 and 255).
pub(crate) struct Probe {
    pub pivot: usize,
    pub val: f32,
    pub lower_pivot: usize,
    pub lower: f32,
    pub upper_pivot: usize,
    pub upper: f32,
}

/// The binary search shared by `dQuantize` (NF4 double quantization) and `quantize_2D` (the
/// 8-bit optimizer states).
pub(crate) fn probe(code: &[f32; 256], x: f32, lower: f32) -> Probe {
    let mut p = Probe { pivot: 127, val: code[127], lower_pivot: 0, lower, upper_pivot: 255, upper: 1.0 };
    let mut i = 64;
    while i > 0 {
        if x > p.val {
            p.lower_pivot = p.pivot;
            p.lower = p.val;
            p.pivot += i;
        } else {
            p.upper_pivot = p.pivot;
            p.upper = p.val;
            p.pivot -= i;
        }
        p.val = code[p.pivot];
        i >>= 1;
    }
    p
}

/// The last probe or its bracketing neighbour, by comparing `x` with their float32 midpoint
/// `(a + b) * 0.5`: above the probe, `x > midpoint` picks the upper neighbour; below it,
/// `x < midpoint` picks the lower one (a tie stays at the probe).
pub(crate) fn closest(p: &Probe, x: f32) -> u8 {
    let chosen = if x > p.val {
        if x > (p.upper + p.val) * 0.5 {
            p.upper_pivot
        } else {
            p.pivot
        }
    } else if x < (p.lower + p.val) * 0.5 {
        p.lower_pivot
    } else {
        p.pivot
    };
    chosen as u8
}
