//! Blockwise 8-bit optimizer states: quantization round trips within the dynamic map's
//! resolution, as bitsandbytes stores Adam's moments.

use engine::rng::Rng;
use trainer::quant8::{quantize_2d, signed_map, unsigned_map, Blockwise8, STATE_BLOCK};

/// Values spread over many decades (as Adam moments are), with zeros and a partial last block.
fn sample(n: usize, signed: bool, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            if i % 97 == 0 {
                return 0.0;
            }
            let mag = 10f64.powf(-rng.uniform_range(0.0, 7.0)) * rng.uniform_range(0.5, 1.0);
            let sign = if signed && rng.uniform() < 0.5 { -1.0 } else { 1.0 };
            (sign * mag) as f32
        })
        .collect()
}

/// Each stored value is the map entry nearest to `value / absmax` (the map's resolution at
/// that magnitude), except where the signed map moved a code one step to keep the sign.
fn check_round_trip(signed: bool) {
    let n = 5 * STATE_BLOCK + 77;
    let values = sample(n, signed, if signed { 1 } else { 2 });
    let q = Blockwise8::quantize(&values, signed);
    assert_eq!(q.absmax.len(), 6);
    let map = if signed { signed_map() } else { unsigned_map() };
    let back = q.dequantize();
    let mut worst_gap_ratio = 0f64;
    for (b, block) in values.chunks(STATE_BLOCK).enumerate() {
        let absmax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert_eq!(q.absmax[b], absmax, "block {b} absmax");
        for (j, &x) in block.iter().enumerate() {
            let i = b * STATE_BLOCK + j;
            let y = x / absmax;
            let c = q.codes[i] as usize;
            let err = (y - map[c]).abs();
            let best = map.iter().map(|m| (y - m).abs()).fold(f32::INFINITY, f32::min);
            let sign_kept = !signed || x == 0.0 || (map[c] < 0.0) == (x < 0.0);
            assert!(sign_kept, "value {x} at {i} lost its sign (code {c} = {})", map[c]);
            if err > best + 1e-6 * y.abs() {
                // Only a sign correction may pick a farther entry: the nearest one had the
                // other sign (0 for a tiny negative value), and the chosen one is adjacent.
                assert!(
                    signed && x < 0.0 && map[c + 1] == 0.0,
                    "value {x} at {i}: code {c} ({}) is not the nearest",
                    map[c]
                );
                continue;
            }
            // The error is at most half the gap to the neighbouring entry on that side.
            let gap = if y >= map[c] {
                map.get(c + 1).map_or(0.0, |n| n - map[c])
            } else if c > 0 {
                map[c] - map[c - 1]
            } else {
                0.0
            };
            if gap > 0.0 {
                worst_gap_ratio = worst_gap_ratio.max((err / gap) as f64);
            }
            assert!((back[i] - map[c] * absmax).abs() == 0.0);
        }
    }
    assert!(worst_gap_ratio <= 0.5 + 1e-6, "error up to {worst_gap_ratio} of the local gap");
}

#[test]
fn signed_round_trip_is_within_resolution() {
    check_round_trip(true);
}

#[test]
fn unsigned_round_trip_is_within_resolution() {
    check_round_trip(false);
}

#[test]
fn relative_error_of_large_values_is_small() {
    // In the top decade of each block, the maps are spaced 0.9/64 (signed) and 0.9/128
    // (unsigned) apart: the stored value is within half that of absmax.
    for signed in [true, false] {
        let v = sample(4 * STATE_BLOCK, signed, 9);
        let q = Blockwise8::quantize(&v, signed);
        for (i, (&x, y)) in v.iter().zip(q.dequantize()).enumerate() {
            let absmax = q.absmax[i / STATE_BLOCK];
            if x.abs() >= 0.1 * absmax {
                let step = if signed { 0.9 / 64.0 } else { 0.9 / 128.0 };
                assert!((x - y).abs() <= 0.5 * step * absmax * 1.0001, "{x} stored as {y} (absmax {absmax})");
            }
        }
    }
}

#[test]
fn zero_blocks_and_extremes() {
    let q = Blockwise8::quantize(&[0.0; 300], true);
    assert!(q.dequantize().iter().all(|&x| x == 0.0));
    assert_eq!(q.absmax, vec![0.0, 0.0]);
    let q = Blockwise8::quantize(&[0.0; 10], false);
    assert!(q.dequantize().iter().all(|&x| x == 0.0));
    // The block maximum is stored exactly (code 255 = 1.0), its negative as -0.99296874.
    let q = Blockwise8::quantize(&[3.0, -1.5, 0.75], true);
    assert_eq!(q.codes[0], 255);
    assert_eq!(q.get(0), 3.0);
    assert_eq!(quantize_2d(signed_map(), true, -1.0), 0);
    assert_eq!(quantize_2d(unsigned_map(), false, 1.0), 255);
    assert_eq!(quantize_2d(unsigned_map(), false, 0.0), 0);
}
