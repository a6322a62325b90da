//! The GGUF writer: files with every metadata value type and many tensor types read back
//! equal by our reader and by llama.cpp's Python reader (`gguf.GGUFReader`, through
//! scripts/gguf_reference.py); streaming rows; and bad input: a full disk at any point of the
//! write, wrong tensors, invalid specs and unwritable folders leave no file under the final
//! name and no temporary file, with errors that name the file (and the folder).

mod common;

use common::gguf_py::{json_close, type_name, value_json};
use common::{python, read_f32, run_python, Rng};
use engine::quant::ggml::{dequantize_to_vec, quantize};
use gguf::{Array, GgmlType, GgufError, GgufFile, GgufWriter, TensorSpec, Value};
use serde_json::{json, Value as Json};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

fn kv(key: &str, v: impl Into<Value>) -> (String, Value) {
    (key.to_string(), v.into())
}

/// One entry of every value type, arrays of every element type (strings with non-ASCII and
/// empty ones), an empty array, nested arrays and extreme values.
fn all_metadata() -> Vec<(String, Value)> {
    vec![
        kv("general.architecture", "llama"),
        kv("u8", 200u8),
        kv("i8", -10i8),
        kv("u16", 60000u16),
        kv("i16", -30000i16),
        kv("u32", 4_000_000_000u32),
        kv("i32", -7i32),
        kv("u64", u64::MAX),
        kv("i64", i64::MIN),
        kv("f32", 1.5f32),
        kv("f32.small", 1e-30f32),
        kv("f64", -0.1f64),
        kv("bool.t", true),
        kv("bool.f", false),
        kv("string", "héllo 😀"),
        kv("string.empty", ""),
        kv("arr.u8", vec![1u8, 2, 255]),
        kv("arr.i8", vec![-128i8, 0, 127]),
        kv("arr.u16", vec![0u16, 65535]),
        kv("arr.i16", vec![-32768i16, 32767]),
        kv("arr.u32", vec![0u32, u32::MAX]),
        kv("arr.i32", vec![i32::MIN, -1, 7]),
        kv("arr.u64", vec![u64::MAX, 0]),
        kv("arr.i64", vec![i64::MIN, i64::MAX]),
        kv("arr.f32", vec![0.5f32, -2.25, 3.4e38]),
        kv("arr.f64", vec![0.1f64, -1e300]),
        kv("arr.bool", vec![true, false, true]),
        kv("arr.str", vec!["a", "é😀", "", "tokens with spaces"]),
        kv("arr.empty", Vec::<u32>::new()),
        kv("arr.nested", vec![Array::from(vec![1i32, -2]), Array::from(Vec::<i32>::new())]),
    ]
}

/// Tensors of every type we quantize, 1 to 4 dimensions, rows of one or several blocks.
fn all_tensor_specs() -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("norm.weight", &[7], GgmlType::F32),
        TensorSpec::new("f16.weight", &[3, 5], GgmlType::F16),
        TensorSpec::new("bf16.weight", &[2, 3, 4], GgmlType::BF16),
        TensorSpec::new("q8_0.weight", &[3, 64], GgmlType::Q8_0),
        TensorSpec::new("q4_0.weight", &[2, 32], GgmlType::Q4_0),
        TensorSpec::new("q4_1.weight", &[5, 96], GgmlType::Q4_1),
        TensorSpec::new("q5_0.weight", &[2, 2, 2, 32], GgmlType::Q5_0),
        TensorSpec::new("q5_1.weight", &[4, 64], GgmlType::Q5_1),
        TensorSpec::new("q4_k.weight", &[3, 256], GgmlType::Q4_K),
        TensorSpec::new("q5_k.weight", &[2, 512], GgmlType::Q5_K),
        TensorSpec::new("q6_k.weight", &[3, 256], GgmlType::Q6_K),
    ]
}

fn values_for(spec: &TensorSpec, rng: &mut Rng) -> Vec<f32> {
    (0..spec.n_elements()).map(|_| rng.f32() * 2.0).collect()
}

/// Writes `specs` with random values through the writer; returns the values.
fn write_file(path: &Path, metadata: Vec<(String, Value)>, specs: &[TensorSpec]) -> Vec<Vec<f32>> {
    let mut rng = Rng(11);
    let values: Vec<Vec<f32>> = specs.iter().map(|s| values_for(s, &mut rng)).collect();
    let mut w = GgufWriter::create(path, metadata, specs.to_vec()).unwrap();
    for (s, v) in specs.iter().zip(&values) {
        w.write_tensor(&s.name, v).unwrap();
    }
    assert_eq!(w.finish().unwrap(), path);
    values
}

/// Files in `dir` (to check that nothing is left behind).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Checks the file with our reader: metadata, tensor table, data layout, bytes.
fn check_with_reader(
    path: &Path,
    metadata: &[(String, Value)],
    specs: &[TensorSpec],
    values: &[Vec<f32>],
    alignment: u64,
) {
    let f = GgufFile::open(path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), alignment);
    assert_eq!(f.metadata(), metadata);
    assert_eq!(f.data_offset() % alignment, 0);
    assert_eq!(f.tensors().len(), specs.len());
    let mut end = 0;
    for ((t, s), v) in f.tensors().iter().zip(specs).zip(values) {
        assert_eq!((t.name(), t.shape(), t.ggml_type()), (s.name.as_str(), s.shape.clone(), s.ggml_type));
        assert_eq!(t.offset() % alignment, 0, "{}", s.name);
        assert_eq!(t.offset(), end, "{}: tensors are packed in order", s.name);
        end = (t.offset() + t.n_bytes()).next_multiple_of(alignment);
        let want = quantize(s.ggml_type, v).unwrap();
        assert_eq!(f.tensor_bytes(t).unwrap(), &want[..], "{}", s.name);
        let deq = f.dequantize_f32(t).unwrap();
        assert_eq!(deq, dequantize_to_vec(s.ggml_type, &want, v.len()).unwrap(), "{}", s.name);
    }
    assert_eq!(std::fs::metadata(path).unwrap().len(), f.data_offset() + end, "the file ends with the last padding");
}

/// Checks the file with gguf-py: metadata (keys, types, values), tensor table and every
/// tensor dequantized by `gguf.quants` against ours, bit for bit.
fn check_with_gguf_py(py: &Path, path: &Path, metadata: &[(String, Value)], alignment: u64) {
    let ours = GgufFile::open(path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = ours.tensors().iter().map(|t| t.name().to_string()).collect();
    let mut args = vec![path.to_str().unwrap(), dir.path().to_str().unwrap()];
    args.extend(names.iter().map(String::as_str));
    run_python(py, "gguf_reference.py", &args);
    let reference: Json = serde_json::from_slice(&std::fs::read(dir.path().join("reference.json")).unwrap()).unwrap();
    assert_eq!(reference["version"], json!(3));
    assert_eq!(reference["alignment"], json!(alignment));
    assert_eq!(reference["data_offset"], json!(ours.data_offset()));
    let meta = reference["metadata"].as_array().unwrap();
    assert_eq!(meta.len(), metadata.len());
    for (want, (key, value)) in meta.iter().zip(metadata) {
        assert_eq!(want["key"], json!(key));
        assert_eq!(want["type"], json!(type_name(value)), "{key}");
        assert!(json_close(&want["value"], &value_json(value)), "{key}: {} vs {}", want["value"], value_json(value));
    }
    let tensors = reference["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), ours.tensors().len());
    for (want, t) in tensors.iter().zip(ours.tensors()) {
        let got = json!({
            "name": t.name(),
            "dims": t.dims(),
            "type": t.ggml_type().name().to_uppercase(),
            "offset": t.offset(),
            "n_bytes": t.n_bytes(),
        });
        assert_eq!(want, &got);
        let theirs = read_f32(&dir.path().join(format!("{}.f32", t.name())));
        let mine = ours.dequantize_f32(t).unwrap();
        assert!(
            theirs.iter().map(|x| x.to_bits()).eq(mine.iter().map(|x| x.to_bits())),
            "{}: gguf-py dequantizes to other values",
            t.name()
        );
    }
}

#[test]
fn round_trip_every_value_type_and_tensor_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("all.gguf");
    let specs = all_tensor_specs();
    let values = write_file(&path, all_metadata(), &specs);
    assert_eq!(listing(dir.path()), ["all.gguf"], "no temporary file is left");
    check_with_reader(&path, &all_metadata(), &specs, &values, 32);
    match python() {
        Some(py) => check_with_gguf_py(&py, &path, &all_metadata(), 32),
        None => eprintln!("SKIPPED the gguf-py half: .venv with the gguf package missing (scripts/setup-python.sh)"),
    }
}

#[test]
fn general_alignment_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aligned.gguf");
    let mut metadata = all_metadata();
    metadata.insert(1, kv("general.alignment", 256u32));
    let specs = all_tensor_specs();
    let values = write_file(&path, metadata.clone(), &specs);
    check_with_reader(&path, &metadata, &specs, &values, 256);
    match python() {
        Some(py) => check_with_gguf_py(&py, &path, &metadata, 256),
        None => eprintln!("SKIPPED the gguf-py half: .venv with the gguf package missing"),
    }
}

/// Writing a tensor in pieces of rows, or as raw bytes, gives the same file as writing it
/// whole from f32; a file with no tensors is valid too.
#[test]
fn rows_and_raw_bytes_give_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let specs = vec![
        TensorSpec::new("a.weight", &[10, 512], GgmlType::Q4_K),
        TensorSpec::new("b.weight", &[6, 64], GgmlType::Q8_0),
        TensorSpec::new("c.weight", &[3], GgmlType::F32),
    ];
    let whole = dir.path().join("whole.gguf");
    let values = write_file(&whole, vec![kv("k", 1u32)], &specs);

    let pieces = dir.path().join("pieces.gguf");
    let mut w = GgufWriter::create(&pieces, vec![kv("k", 1u32)], specs.clone()).unwrap();
    assert_eq!(w.next_tensor().unwrap().name, "a.weight");
    for rows in values[0].chunks(3 * 512) {
        w.write_tensor_rows("a.weight", rows).unwrap();
    }
    assert_eq!(w.next_tensor().unwrap().name, "b.weight");
    w.write_tensor_bytes("b.weight", &quantize(GgmlType::Q8_0, &values[1]).unwrap()).unwrap();
    w.write_tensor_rows("c.weight", &values[2]).unwrap();
    assert!(w.next_tensor().is_none());
    w.finish().unwrap();
    assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&pieces).unwrap());

    let empty = dir.path().join("empty.gguf");
    GgufWriter::create(&empty, vec![], vec![]).unwrap().finish().unwrap();
    let f = GgufFile::open(&empty).unwrap();
    assert!(f.metadata().is_empty() && f.tensors().is_empty());
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 32, "24-byte header padded to 32");
}

/// A writer that accepts `left` bytes, then fails with ENOSPC like a full disk.
struct FullDisk {
    file: File,
    left: usize,
}

impl Write for FullDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        self.file.write(&buf[..n])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Writes the all-types file through a disk that fills up after `limit` bytes (behind a
/// BufWriter when `buffered`, so the failure may surface only at `finish`); returns the
/// first error.
fn write_until_full(path: &Path, limit: usize, buffered: bool) -> GgufError {
    let specs = all_tensor_specs();
    let mut rng = Rng(11);
    let result = (|| {
        let full = |file| FullDisk { file, left: limit };
        if buffered {
            let mut w = GgufWriter::create_with_sink(path, all_metadata(), specs.clone(), |f| {
                BufWriter::with_capacity(256, full(f))
            })?;
            for s in &specs {
                w.write_tensor(&s.name, &values_for(s, &mut rng))?;
            }
            w.finish()
        } else {
            let mut w = GgufWriter::create_with_sink(path, all_metadata(), specs.clone(), full)?;
            for s in &specs {
                w.write_tensor(&s.name, &values_for(s, &mut rng))?;
            }
            w.finish()
        }
    })();
    result.expect_err("the disk was full")
}

#[test]
fn full_disk_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let total = {
        let ok = dir.path().join("ok.gguf");
        write_file(&ok, all_metadata(), &all_tensor_specs());
        let n = std::fs::metadata(&ok).unwrap().len() as usize;
        std::fs::remove_file(&ok).unwrap();
        n
    };
    // In the header, at its end, inside tensor data, in padding, one byte short.
    for limit in [0, 10, 700, 1000, 1500, total / 2, total - 33, total - 1] {
        for buffered in [false, true] {
            let err = write_until_full(&path, limit, buffered);
            let msg = err.to_string();
            assert!(matches!(err, GgufError::Write { .. }), "limit {limit}: {msg}");
            assert!(msg.starts_with(&path.display().to_string()), "the message names the file: {msg}");
            assert!(msg.contains(".tmp") && msg.contains("os error 28"), "{msg}");
            assert!(
                listing(dir.path()).is_empty(),
                "limit {limit} buffered {buffered}: left {:?}",
                listing(dir.path())
            );
        }
    }
    // With room for everything, the same code path writes the file.
    let specs = all_tensor_specs();
    let mut rng = Rng(11);
    let mut w =
        GgufWriter::create_with_sink(&path, all_metadata(), specs.clone(), |file| FullDisk { file, left: total })
            .unwrap();
    for s in &specs {
        w.write_tensor(&s.name, &values_for(s, &mut rng)).unwrap();
    }
    w.finish().unwrap();
    assert_eq!(listing(dir.path()), ["model.gguf"]);
}

/// A failed rewrite keeps the previous file under the final name untouched.
#[test]
fn failed_rewrite_keeps_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, b"previous version").unwrap();
    write_until_full(&path, 1000, false);
    assert_eq!(std::fs::read(&path).unwrap(), b"previous version");
    assert_eq!(listing(dir.path()), ["model.gguf"]);
    // A successful one replaces it.
    write_file(&path, all_metadata(), &all_tensor_specs());
    assert!(GgufFile::open(&path).is_ok());
}

/// Misuse fails the writer and removes the temporary file; later calls are refused.
#[test]
fn wrong_tensors_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let specs = vec![TensorSpec::new("a", &[2, 32], GgmlType::Q8_0), TensorSpec::new("b", &[4], GgmlType::F32)];
    type Attempt = Box<dyn Fn(&mut GgufWriter) -> gguf::Result<()>>;
    let attempts: Vec<(&str, Attempt)> = vec![
        ("out of order", Box::new(|w| w.write_tensor("b", &[0.0; 4]))),
        ("not in the file's tensor list", Box::new(|w| w.write_tensor("zzz", &[0.0; 64]))),
        ("has 64 values, got 32", Box::new(|w| w.write_tensor("a", &[0.0; 32]))),
        ("0 written and 96 more given", Box::new(|w| w.write_tensor_rows("a", &[0.0; 96]))),
        ("takes 68 bytes, got 3", Box::new(|w| w.write_tensor_bytes("a", &[1, 2, 3]))),
        ("not a whole number of rows", Box::new(|w| w.write_tensor_rows("a", &[0.0; 33]))),
        (
            "all 2 tensors are already written",
            Box::new(|w| {
                w.write_tensor("a", &[0.0; 64])?;
                w.write_tensor("b", &[0.0; 4])?;
                w.write_tensor("b", &[0.0; 4])
            }),
        ),
    ];
    for (want, attempt) in attempts {
        let mut w = GgufWriter::create(&path, vec![], specs.clone()).unwrap();
        assert!(w.temp_path().exists());
        let msg = attempt(&mut w).unwrap_err().to_string();
        assert!(msg.starts_with(&path.display().to_string()) && msg.contains(want), "{want}: {msg}");
        assert!(listing(dir.path()).is_empty(), "{want}: left {:?}", listing(dir.path()));
        let again = w.write_tensor("a", &[0.0; 64]).unwrap_err().to_string();
        assert!(again.contains("after an earlier error"), "{again}");
        assert!(w.finish().is_err());
        assert!(listing(dir.path()).is_empty());
    }
    // finish before the end.
    let mut w = GgufWriter::create(&path, vec![], specs.clone()).unwrap();
    w.write_tensor("a", &[0.0; 64]).unwrap();
    let msg = w.finish().unwrap_err().to_string();
    assert!(msg.contains("finish called before tensor 'b' (1 of 2 tensors written)"), "{msg}");
    let mut w = GgufWriter::create(&path, vec![], specs.clone()).unwrap();
    w.write_tensor_rows("a", &[0.0; 32]).unwrap();
    let msg = w.finish().unwrap_err().to_string();
    assert!(msg.contains("tensor 'a' incomplete (32 of 64 values written)"), "{msg}");
    assert!(listing(dir.path()).is_empty());
    // A type without a quantizer takes raw bytes only.
    let iq = vec![TensorSpec::new("q", &[256], GgmlType::IQ2_XXS)];
    let mut w = GgufWriter::create(&path, vec![], iq.clone()).unwrap();
    let msg = w.write_tensor("q", &[0.0; 256]).unwrap_err().to_string();
    assert!(msg.contains("iq2_xxs cannot be quantized"), "{msg}");
    let mut w = GgufWriter::create(&path, vec![], iq).unwrap();
    w.write_tensor_bytes("q", &[0; 66]).unwrap();
    w.finish().unwrap();
    assert_eq!(GgufFile::open(&path).unwrap().tensors()[0].ggml_type(), GgmlType::IQ2_XXS);
}

/// A writer dropped before `finish` removes its temporary file.
#[test]
fn abandoned_writer_removes_its_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let mut w =
        GgufWriter::create(&path, all_metadata(), vec![TensorSpec::new("a", &[2, 32], GgmlType::Q8_0)]).unwrap();
    let temp = w.temp_path().to_path_buf();
    assert!(temp.starts_with(dir.path()) && temp.exists());
    assert!(temp.file_name().unwrap().to_str().unwrap().starts_with("m.gguf."));
    w.write_tensor_rows("a", &[1.0; 32]).unwrap();
    drop(w);
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn invalid_specs_are_refused_before_any_file_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let t = |name: &str, shape: &[usize], ty| TensorSpec::new(name, shape, ty);
    type Case = (Vec<(String, Value)>, Vec<TensorSpec>, &'static str);
    let cases: Vec<Case> = vec![
        (vec![kv("a", 1u8), kv("a", 2u8)], vec![], "duplicate metadata key 'a'"),
        (vec![kv("general.alignment", 32u64)], vec![], "general.alignment must be a u32 power of two"),
        (vec![kv("general.alignment", 48u32)], vec![], "general.alignment must be a u32 power of two"),
        (vec![], vec![t("x", &[4], GgmlType::F32), t("x", &[4], GgmlType::F32)], "duplicate tensor name 'x'"),
        (
            vec![],
            vec![t("x", &[2, 576], GgmlType::Q4_K)],
            "row length 576 is not a multiple of the q4_K block size 256",
        ),
        (vec![], vec![t("x", &[1, 1, 1, 1, 32], GgmlType::F32)], "1 to 4 dimensions"),
        (vec![], vec![t("x", &[], GgmlType::F32)], "1 to 4 dimensions"),
        (vec![], vec![t("x", &[0, 32], GgmlType::F32)], "zero dimension"),
        (vec![], vec![t(&"n".repeat(64), &[1], GgmlType::F32)], "at most 63"),
        (vec![], vec![t("", &[1], GgmlType::F32)], "empty tensor name"),
    ];
    for (metadata, specs, want) in cases {
        let err = GgufWriter::create(&path, metadata, specs).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, GgufError::Invalid { .. }) && msg.starts_with(&path.display().to_string()), "{msg}");
        assert!(msg.contains(want), "want '{want}' in: {msg}");
        assert!(listing(dir.path()).is_empty());
    }
}

/// Folders where no file can be made: the error names the folder and the file.
#[test]
fn unwritable_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let check = |folder: &Path| {
        let path = folder.join("m.gguf");
        let msg = GgufWriter::create(&path, vec![], vec![]).unwrap_err().to_string();
        let want = format!("{}: cannot create a file in the folder {}: ", path.display(), folder.display());
        assert!(msg.starts_with(&want), "{msg}");
        msg
    };
    let missing = check(&dir.path().join("no/such/folder"));
    assert!(missing.contains("No such file or directory"), "{missing}");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let not_dir = check(&file);
    assert!(not_dir.contains("Not a directory"), "{not_dir}");

    // A read-only folder; root ignores permission bits, so fall back to sysfs there, which
    // never lets anyone create a file.
    use std::os::unix::fs::PermissionsExt;
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let probe = ro.join("probe");
    let folder: PathBuf = if File::create(&probe).is_err() {
        ro.clone()
    } else {
        std::fs::remove_file(&probe).unwrap();
        PathBuf::from("/sys")
    };
    if folder.is_dir() {
        let denied = check(&folder);
        assert!(denied.contains("Permission denied") || denied.contains("Read-only"), "{denied}");
    } else {
        eprintln!("SKIPPED the read-only folder case: running as root and /sys is absent");
    }
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The real SmolLM2 file (written by llama.cpp's Python `gguf` writer) copied through our
/// writer, metadata and raw tensor bytes, comes out byte-identical.
#[test]
fn copy_of_a_real_file_is_byte_identical() {
    let src_path = common::repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !src_path.exists() {
        eprintln!("SKIPPED: {} not found (scripts/fetch-smollm2.sh)", src_path.display());
        return;
    }
    let src = GgufFile::open(&src_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("copy.gguf");
    let specs = src.tensors().iter().map(|t| TensorSpec::new(t.name(), &t.shape(), t.ggml_type())).collect();
    let mut w = GgufWriter::create(&dst, src.metadata().to_vec(), specs).unwrap();
    for t in src.tensors() {
        w.write_tensor_bytes(t.name(), src.tensor_bytes(t).unwrap()).unwrap();
    }
    w.finish().unwrap();
    assert!(std::fs::read(&dst).unwrap() == std::fs::read(&src_path).unwrap(), "the copy differs from the original");
}
