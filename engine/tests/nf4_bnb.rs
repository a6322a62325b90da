//! NF4 bit-exactness against bitsandbytes itself.
//!
//! The fixture `tests/fixtures/nf4_bnb.safetensors` is made by `scripts/nf4_reference.py`
//! with bitsandbytes on CUDA (`quantize_4bit(quant_type="nf4", blocksize=64,
//! compress_statistics=False/True)`, `dequantize_4bit`, `quantize_blockwise` with the dynamic
//! map); its metadata records the versions. Set `NF4_BNB_FIXTURE=/path/file.safetensors` to
//! check another file made by the script (e.g. its `--stress` output).
//!
//! What must match bit for bit: the NF4 code table, the dynamic 8-bit map, the packed 4-bit
//! bytes, the plain absmax, the 8-bit absmax codes and their f32 scales (given bitsandbytes'
//! offset), the decoded absmax and the dequantized values. The offset (torch's `mean()` of the
//! absmax, a float32 reduction whose order depends on the device) is checked to be within
//! 2 ulps of ours; where it is equal, our own full double-quant pipeline must match too.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use engine::quant::nf4::{
    dynamic_index, dynamic_map, nf4_index, quantize_blockwise_dynamic, Nf4Scales, Nf4Weight, DOUBLE_QUANT_BLOCK_SIZE,
    NF4_BLOCK_SIZE, NF4_CODE,
};
use half::bf16;
use safetensors::{Dtype, SafeTensors};

fn fixture_path() -> PathBuf {
    match std::env::var_os("NF4_BNB_FIXTURE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nf4_bnb.safetensors"),
    }
}

/// The fixture's bytes, read once for all tests.
fn fixture_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let path = fixture_path();
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read the NF4 fixture {} ({e}). Make it with bitsandbytes on a CUDA \
                 machine: `python scripts/nf4_reference.py` (needs torch, bitsandbytes, \
                 safetensors, numpy) and commit engine/tests/fixtures/nf4_bnb.safetensors",
                path.display()
            )
        })
    })
}

struct Fixture {
    st: SafeTensors<'static>,
    meta: HashMap<String, String>,
}

fn fixture() -> Fixture {
    let bytes = fixture_bytes();
    let (_, header) = SafeTensors::read_metadata(bytes).expect("fixture header");
    let meta = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes).expect("fixture is safetensors");
    // NF4_BNB_ALLOW_CPU=1 compares with a `--device cpu` fixture, for diagnosis only: the
    // CPU backend is a different implementation and is expected to differ (see nf4.rs).
    if std::env::var_os("NF4_BNB_ALLOW_CPU").is_none() {
        assert_eq!(
            meta.get("device").map(String::as_str),
            Some("cuda"),
            "the fixture must come from bitsandbytes on CUDA (metadata: {meta:?}); \
             bitsandbytes' CPU backend is a different implementation"
        );
    }
    eprintln!("fixture {}: {meta:?}", fixture_path().display());
    Fixture { st, meta }
}

impl Fixture {
    fn has(&self, name: &str) -> bool {
        self.st.tensor(name).is_ok()
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        let t = self.st.tensor(name).unwrap_or_else(|_| panic!("fixture lacks {name}"));
        match t.dtype() {
            Dtype::F32 => t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::BF16 => {
                t.data().chunks_exact(2).map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()).collect()
            }
            d => panic!("{name}: unexpected dtype {d:?}"),
        }
    }

    fn u8s(&self, name: &str) -> Vec<u8> {
        let t = self.st.tensor(name).unwrap_or_else(|_| panic!("fixture lacks {name}"));
        assert_eq!(t.dtype(), Dtype::U8, "{name}");
        t.data().to_vec()
    }

    fn dtype(&self, name: &str) -> Dtype {
        self.st.tensor(name).expect(name).dtype()
    }

    fn shape(&self, name: &str) -> Vec<usize> {
        self.st.tensor(name).expect(name).shape().to_vec()
    }
}

/// Collects mismatches so that one run reports all of them.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
}

impl Report {
    /// Compares two sequences bit for bit; records the count and the first few differences.
    fn bits<T: PartialEq + std::fmt::Debug>(
        &mut self,
        what: &str,
        ours: &[T],
        bnb: &[T],
        detail: impl Fn(usize) -> String,
    ) -> usize {
        if ours.len() != bnb.len() {
            self.failures.push(format!("{what}: length {} vs bitsandbytes {}", ours.len(), bnb.len()));
            return usize::MAX;
        }
        let bad: Vec<usize> = (0..ours.len()).filter(|&i| ours[i] != bnb[i]).collect();
        if !bad.is_empty() {
            let first: Vec<String> = bad
                .iter()
                .take(5)
                .map(|&i| format!("[{i}] ours {:?} bnb {:?} {}", ours[i], bnb[i], detail(i)))
                .collect();
            self.failures.push(format!("{what}: {} of {} differ; first: {}", bad.len(), ours.len(), first.join("; ")));
        }
        bad.len()
    }

    /// Compares codes, excusing a mismatch where `excused(i)` says bitsandbytes' fast-math
    /// reciprocal explains it, as long as such mismatches stay rarer than one per million
    /// values (plus one). Excused ones are printed, not failed.
    fn codes(
        &mut self,
        what: &str,
        ours: &[u8],
        bnb: &[u8],
        excused: impl Fn(usize) -> bool,
        detail: impl Fn(usize) -> String,
    ) {
        assert_eq!(ours.len(), bnb.len(), "{what}: lengths");
        let (mut excused_idx, mut bad) = (Vec::new(), Vec::new());
        for i in (0..ours.len()).filter(|&i| ours[i] != bnb[i]) {
            if excused(i) {
                excused_idx.push(i);
            } else {
                bad.push(i);
            }
        }
        let show = |idx: &[usize]| -> String {
            idx.iter()
                .take(5)
                .map(|&i| format!("[{i}] ours {} bnb {} {}", ours[i], bnb[i], detail(i)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if !excused_idx.is_empty() {
            eprintln!(
                "{what}: {} of {} differ only through the fast-math reciprocal: {}",
                excused_idx.len(),
                ours.len(),
                show(&excused_idx)
            );
        }
        if excused_idx.len() > 1 + ours.len() / 1_000_000 {
            self.failures.push(format!(
                "{what}: {} reciprocal-explained mismatches of {} is too many",
                excused_idx.len(),
                ours.len()
            ));
        }
        if !bad.is_empty() {
            self.failures.push(format!("{what}: {} of {} differ; first: {}", bad.len(), ours.len(), show(&bad)));
        }
    }

    fn finish(self) {
        assert!(self.failures.is_empty(), "mismatches against bitsandbytes:\n{}", self.failures.join("\n"));
    }
}

/// The two floats next to `1 / a`: bitsandbytes' CUDA kernels are built with
/// `--use_fast_math`, whose reciprocal may return either neighbour of the IEEE one.
fn approx_reciprocals(a: f32) -> Vec<f32> {
    let inv = 1.0f32 / a;
    if !(inv.is_finite() && inv > 0.0) {
        return Vec::new();
    }
    vec![f32::from_bits(inv.to_bits() - 1), f32::from_bits(inv.to_bits() + 1)]
}

fn f32_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Unpacks nibbles: element 2j is the high nibble of byte j.
fn nibbles(packed: &[u8], n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            let b = packed[i / 2];
            if i % 2 == 0 {
                b >> 4
            } else {
                b & 0x0F
            }
        })
        .collect()
}

/// Dequantized values in the fixture's dtype (bitsandbytes returns the input dtype; its CUDA
/// kernel rounds the f32 product to bf16 to nearest-even, as `bf16::from_f32` does).
fn as_dtype_bits(v: &[f32], dtype: Dtype) -> Vec<u32> {
    match dtype {
        Dtype::F32 => f32_bits(v),
        Dtype::BF16 => v.iter().map(|&x| bf16::from_f32(x).to_bits() as u32).collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

fn fixture_dequant_bits(fx: &Fixture, name: &str) -> Vec<u32> {
    let dtype = fx.dtype(name);
    let t = fx.st.tensor(name).unwrap();
    match dtype {
        Dtype::F32 => t.data().chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::BF16 => t.data().chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).collect(),
        d => panic!("{name}: unexpected dtype {d:?}"),
    }
}

#[test]
fn code_tables_match() {
    let fx = fixture();
    let mut r = Report::default();
    r.bits("nf4_code", &f32_bits(&NF4_CODE), &f32_bits(&fx.f32s("nf4_code")), |_| String::new());
    let map = fx.f32s("dynamic_map");
    r.bits("dynamic_map", &f32_bits(dynamic_map()), &f32_bits(&map), |i| {
        format!("ours {} bnb {}", dynamic_map()[i], map[i])
    });
    r.finish();
}

#[test]
fn dynamic_map_midpoint_ties() {
    // Every midpoint of neighbouring dynamic-map entries, and one ulp either side, in blocks
    // whose absmax is 1.0: the exact tie-breaking of dQuantize's binary search.
    let fx = fixture();
    let input = fx.f32s("dyn_ties.input");
    let (codes, absmax) = quantize_blockwise_dynamic(&input, 256);
    let mut r = Report::default();
    r.bits("dyn_ties.codes", &codes, &fx.u8s("dyn_ties.codes"), |i| format!("x = {:e}", input[i]));
    r.bits("dyn_ties.absmax", &f32_bits(&absmax), &f32_bits(&fx.f32s("dyn_ties.absmax")), |_| String::new());
    r.finish();
}

#[test]
fn nf4_matches_bitsandbytes() {
    let fx = fixture();
    let cases: Vec<String> = fx.meta["cases"].split(',').map(str::to_string).collect();
    assert!(!cases.is_empty(), "fixture lists no cases");
    let mut r = Report::default();
    for case in &cases {
        let input_name = format!("{case}.input");
        let input = fx.f32s(&input_name);
        let shape = fx.shape(&input_name);
        let dtype = fx.dtype(&input_name);
        let n = input.len();

        // compress_statistics=False: packed bytes and absmax from our quantizer.
        let plain = Nf4Weight::quantize(&input, &shape, false).unwrap();
        let absmax = plain.absmax();
        // Element i of the nibble stream (i == n is the padding nibble, loaded as 0.0).
        let x_of = |i: usize| input.get(i).copied().unwrap_or(0.0);
        let excused = |i: usize, bnb: u8| {
            approx_reciprocals(absmax[i / NF4_BLOCK_SIZE]).iter().any(|&r| nf4_index(x_of(i) * r) == bnb)
        };
        let explain = |i: usize| {
            let a = absmax[i / NF4_BLOCK_SIZE];
            format!("x = {:e}, absmax = {a:e}, x*(1/absmax) = {:e}", x_of(i), x_of(i) * (1.0 / a))
        };
        let bnb_plain_packed = fx.u8s(&format!("{case}.plain.packed"));
        let bnb_nibbles = nibbles(&bnb_plain_packed, 2 * bnb_plain_packed.len());
        r.codes(
            &format!("{case}.plain.packed (nibbles)"),
            &nibbles(plain.packed(), 2 * plain.packed().len()),
            &bnb_nibbles,
            |i| excused(i, bnb_nibbles[i]),
            explain,
        );
        let bnb_absmax = fx.f32s(&format!("{case}.plain.absmax"));
        r.bits(&format!("{case}.plain.absmax"), &f32_bits(&absmax), &f32_bits(&bnb_absmax), |_| String::new());
        // Dequantization of bitsandbytes' own parts.
        let stored_plain =
            Nf4Weight::from_parts(&shape, bnb_plain_packed.clone(), Nf4Scales::Plain(bnb_absmax)).unwrap();
        r.bits(
            &format!("{case}.plain.dequant"),
            &as_dtype_bits(&stored_plain.dequantize(), dtype),
            &fixture_dequant_bits(&fx, &format!("{case}.plain.dequant")),
            |_| String::new(),
        );

        // compress_statistics=True.
        let p = |k: &str| format!("{case}.dq.{k}");
        let bnb_offset = fx.f32s(&p("offset"))[0];
        let bnb_codes = fx.u8s(&p("absmax_codes"));
        let bnb_scales = fx.f32s(&p("absmax_scales"));
        let bnb_dq_packed = fx.u8s(&p("packed"));
        let dq = Nf4Weight::quantize(&input, &shape, true).unwrap();
        let bnb_dq_nibbles = nibbles(&bnb_dq_packed, 2 * bnb_dq_packed.len());
        r.codes(
            &format!("{case}.dq.packed (nibbles)"),
            &nibbles(dq.packed(), 2 * dq.packed().len()),
            &bnb_dq_nibbles,
            |i| excused(i, bnb_dq_nibbles[i]),
            explain,
        );
        let Nf4Scales::Double { offset, .. } = dq.scales().clone() else { panic!("double quant expected") };
        // torch's mean() is a float32 reduction in a device-dependent order: ours may differ
        // in the last bits (16 ulps is a relative 1e-6).
        let ulps = (offset.to_bits() as i64 - bnb_offset.to_bits() as i64).abs();
        if ulps > 16 {
            r.failures.push(format!("{case}.dq.offset: ours {offset:e} bnb {bnb_offset:e} ({ulps} ulps apart)"));
        }
        // The 8-bit stage, given bitsandbytes' offset: codes and scales bit for bit.
        let Nf4Scales::Double { codes, scales, .. } = Nf4Scales::double_quantize_with_offset(&absmax, bnb_offset)
        else {
            unreachable!()
        };
        let centered: Vec<f32> = absmax.iter().map(|&a| a - bnb_offset).collect();
        r.codes(
            &p("absmax_codes"),
            &codes,
            &bnb_codes,
            |i| {
                approx_reciprocals(scales[i / DOUBLE_QUANT_BLOCK_SIZE])
                    .iter()
                    .any(|&rc| dynamic_index(dynamic_map(), centered[i] * rc) == bnb_codes[i])
            },
            |i| {
                let s = scales[i / DOUBLE_QUANT_BLOCK_SIZE];
                format!("absmax - offset = {:e}, normalized {:e}", centered[i], centered[i] * (1.0 / s))
            },
        );
        r.bits(&p("absmax_scales"), &f32_bits(&scales), &f32_bits(&bnb_scales), |_| String::new());
        // Our own offset: where it equals bitsandbytes', the whole pipeline must match.
        let mut pipeline = "not compared (offsets differ)";
        if ulps == 0 && codes == bnb_codes {
            pipeline = "identical";
            assert_eq!(
                dq.scales(),
                &Nf4Scales::Double { codes: bnb_codes.clone(), scales: bnb_scales.clone(), offset: bnb_offset },
                "{case}: full double-quant pipeline"
            );
        }
        // Decoding and dequantization of bitsandbytes' own parts.
        let stored = Nf4Weight::from_parts(
            &shape,
            bnb_dq_packed,
            Nf4Scales::Double { codes: bnb_codes, scales: bnb_scales, offset: bnb_offset },
        )
        .unwrap();
        r.bits(&p("absmax_decoded"), &f32_bits(&stored.absmax()), &f32_bits(&fx.f32s(&p("absmax_decoded"))), |_| {
            String::new()
        });
        r.bits(
            &p("dequant"),
            &as_dtype_bits(&stored.dequantize(), dtype),
            &fixture_dequant_bits(&fx, &p("dequant")),
            |_| String::new(),
        );
        eprintln!(
            "{case}: shape {shape:?} ({dtype:?}), {n} values, {} blocks; offset ours {offset:e} \
             bnb {bnb_offset:e} ({ulps} ulps); our full double-quant scales: {pipeline}",
            plain.n_blocks()
        );
    }
    r.finish();
}

#[test]
fn nf4_ties_case_is_present() {
    // The `nf4_ties` case (checked with the others above) holds every dQuantizeNF4 threshold
    // exactly, in a block whose absmax is 1.0; make sure the fixture still has it, and that
    // our reading of the thresholds puts each on the lower side.
    let fx = fixture();
    if !fx.meta["cases"].split(',').any(|c| c == "nf4_ties") {
        assert!(fx.meta["cases"].contains("stress"), "small fixture must hold nf4_ties");
        return;
    }
    let input = fx.f32s("nf4_ties.input");
    assert_eq!(input[0], 1.0);
    let packed = fx.u8s("nf4_ties.plain.packed");
    for (i, &x) in input.iter().enumerate() {
        assert_eq!(nibbles(&packed, input.len())[i], nf4_index(x), "value {x:e} ({:#x})", x.to_bits());
    }
    assert!(fx.has("nf4_ties.dq.packed"));
}
