//! The reader against GGUF files built byte by byte in the tests: every value type, nested
//! arrays, alignment, tensor data, and malformed files (each error must name the file).

mod common;

use common::{garray, gstr, ty, write, Builder, Rng};
use gguf::{Array, GgmlType, GgufError, GgufFile, Value, ValueType};

fn open(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, gguf::Result<GgufFile>) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "model.gguf", bytes);
    let r = GgufFile::open(&path);
    (dir, path, r)
}

/// Opens `bytes`, expects an error, checks that its message names the file, returns both.
fn open_err(bytes: &[u8]) -> (GgufError, String) {
    let (_dir, path, r) = open(bytes);
    let err = r.expect_err("expected an error");
    let msg = err.to_string();
    assert!(msg.starts_with(&path.display().to_string()), "message does not name the file: {msg}");
    (err, msg)
}

fn all_types() -> Builder {
    let strings: Vec<u8> = [gstr(b"a"), gstr("é😀".as_bytes()), gstr(b"")].concat();
    let nested: Vec<u8> =
        [garray(ty::I32, 2, &[1i32.to_le_bytes(), (-2i32).to_le_bytes()].concat()), garray(ty::I32, 0, &[])].concat();
    Builder::new()
        .kv_raw("u8", ty::U8, &[200])
        .kv_raw("i8", ty::I8, &[0xF6])
        .kv_raw("u16", ty::U16, &60000u16.to_le_bytes())
        .kv_raw("i16", ty::I16, &(-30000i16).to_le_bytes())
        .kv_u32("u32", 4_000_000_000)
        .kv_raw("i32", ty::I32, &(-7i32).to_le_bytes())
        .kv_raw("f32", ty::F32, &1.5f32.to_le_bytes())
        .kv_raw("bool.t", ty::BOOL, &[1])
        .kv_raw("bool.f", ty::BOOL, &[0])
        .kv_str("string", "héllo")
        .kv_raw("u64", ty::U64, &u64::MAX.to_le_bytes())
        .kv_raw("i64", ty::I64, &i64::MIN.to_le_bytes())
        .kv_raw("f64", ty::F64, &(-0.1f64).to_le_bytes())
        .kv_raw("arr.u8", ty::ARRAY, &garray(ty::U8, 3, &[1, 2, 3]))
        .kv_raw("arr.f32", ty::ARRAY, &garray(ty::F32, 2, &[0.5f32.to_le_bytes(), 2f32.to_le_bytes()].concat()))
        .kv_raw("arr.bool", ty::ARRAY, &garray(ty::BOOL, 2, &[0, 1]))
        .kv_raw("arr.str", ty::ARRAY, &garray(ty::STRING, 3, &strings))
        .kv_raw("arr.i64", ty::ARRAY, &garray(ty::I64, 1, &(-5i64).to_le_bytes()))
        .kv_raw("arr.nested", ty::ARRAY, &garray(ty::ARRAY, 2, &nested))
        .kv_raw("arr.empty", ty::ARRAY, &garray(ty::U32, 0, &[]))
}

#[test]
fn reads_every_value_type() {
    let (_dir, _path, r) = open(&all_types().build());
    let f = r.unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.metadata().len(), 20);
    assert_eq!(f.metadata()[0].0, "u8", "metadata keeps file order");
    assert_eq!(f.get::<u8>("u8").unwrap(), 200);
    assert_eq!(f.get::<i8>("i8").unwrap(), -10);
    assert_eq!(f.get::<u16>("u16").unwrap(), 60000);
    assert_eq!(f.get::<i16>("i16").unwrap(), -30000);
    assert_eq!(f.get_u32("u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get::<i32>("i32").unwrap(), -7);
    assert_eq!(f.get_f32("f32").unwrap(), 1.5);
    assert!(f.get_bool("bool.t").unwrap());
    assert!(!f.get_bool("bool.f").unwrap());
    assert_eq!(f.get_str("string").unwrap(), "héllo");
    assert_eq!(f.get_u64("u64").unwrap(), u64::MAX);
    assert_eq!(f.get::<i64>("i64").unwrap(), i64::MIN);
    assert_eq!(f.get::<f64>("f64").unwrap(), -0.1);
    assert_eq!(f.get::<&[u8]>("arr.u8").unwrap(), &[1, 2, 3]);
    assert_eq!(f.get::<&[f32]>("arr.f32").unwrap(), &[0.5, 2.0]);
    assert_eq!(f.get::<&[bool]>("arr.bool").unwrap(), &[false, true]);
    assert_eq!(f.get_str_array("arr.str").unwrap(), &["a".to_string(), "é😀".into(), "".into()]);
    assert_eq!(f.get::<&[i64]>("arr.i64").unwrap(), &[-5]);
    assert_eq!(f.get_array("arr.nested").unwrap(), &Array::Array(vec![Array::I32(vec![1, -2]), Array::I32(vec![])]));
    let empty = f.get_array("arr.empty").unwrap();
    assert!(empty.is_empty() && empty.element_type() == ValueType::U32);
    assert_eq!(f.value("u16"), Some(&Value::U16(60000)));
    assert_eq!(f.get::<u64>("u8").unwrap(), 200, "integers widen");
    assert_eq!(f.get_opt::<u32>("absent").unwrap(), None);
    assert!(f.tensors().is_empty());
}

#[test]
fn getter_errors_name_file_key_and_types() {
    let (_dir, path, r) = open(&all_types().build());
    let f = r.unwrap();
    let p = path.display().to_string();
    let msg = f.get_u32("string").unwrap_err().to_string();
    assert_eq!(msg, format!("{p}: metadata key 'string' is string, expected u32"));
    let msg = f.get_str("arr.str").unwrap_err().to_string();
    assert_eq!(msg, format!("{p}: metadata key 'arr.str' is array of 3 string, expected string"));
    let msg = f.get_u32("i32").unwrap_err().to_string();
    assert!(msg.contains("'i32' is i32, expected u32"), "negative i32 does not fit a u32: {msg}");
    let msg = f.get::<&[String]>("arr.u8").unwrap_err().to_string();
    assert!(msg.ends_with("is array of 3 u8, expected array of string"), "{msg}");
    let msg = f.get_f32("nope").unwrap_err().to_string();
    assert_eq!(msg, format!("{p}: metadata key 'nope' missing"));
    let msg = f.tensor("output.weight").unwrap_err().to_string();
    assert_eq!(msg, format!("{p}: tensor 'output.weight' not found"));
}

#[test]
fn tensors_alignment_and_data() {
    let a: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let b: Vec<u8> = (0..34).collect(); // one q8_0 block
    for alignment in [None, Some(64u32), Some(1)] {
        let mut builder = Builder::new().kv_str("general.architecture", "llama");
        if let Some(al) = alignment {
            builder = builder.alignment(al);
        }
        let bytes = builder.tensor("a", &[3, 2], 0, a.clone()).tensor("b.weight", &[32], 8, b.clone()).build();
        let (_dir, _path, r) = open(&bytes);
        let f = r.unwrap();
        let al = alignment.map_or(32, |a| a as u64);
        assert_eq!(f.alignment(), al);
        assert_eq!(f.data_offset() % al, 0);
        let (ta, tb) = (f.tensor("a").unwrap(), f.tensor("b.weight").unwrap());
        assert_eq!(ta.dims(), &[3, 2]);
        assert_eq!(ta.shape(), vec![2, 3]);
        assert_eq!((ta.ggml_type(), ta.n_elements(), ta.n_bytes(), ta.offset()), (GgmlType::F32, 6, 24, 0));
        assert_eq!(tb.offset(), 24u64.div_ceil(al) * al);
        assert_eq!((tb.ggml_type(), tb.n_bytes()), (GgmlType::Q8_0, 34));
        assert_eq!(f.tensor_bytes(ta).unwrap(), &a[..]);
        assert_eq!(f.tensor_bytes(tb).unwrap(), &b[..]);
        assert_eq!(f.dequantize_f32(ta).unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(f.contains_tensor("a") && !f.contains_tensor("c"));
        assert_eq!(f.tensors().iter().map(|t| t.name()).collect::<Vec<_>>(), ["a", "b.weight"]);
    }
}

#[test]
fn version_2_is_read() {
    let mut b = Builder::new().kv_str("k", "v").tensor("t", &[2], 0, vec![0; 8]);
    b.version = 2;
    let (_dir, _path, r) = open(&b.build());
    let f = r.unwrap();
    assert_eq!((f.version(), f.get_str("k").unwrap(), f.tensors().len()), (2, "v", 1));
}

#[test]
fn bad_magic() {
    let (err, msg) = open_err(b"PK\x03\x04 this is a zip file");
    assert!(matches!(err, GgufError::NotGguf { .. }));
    assert!(msg.ends_with(": not a GGUF file (magic \"PK\\x03\\x04\", expected \"GGUF\")"), "{msg}");
    let (_, msg) = open_err(b"GG");
    assert!(msg.contains("not a GGUF file"), "{msg}");
    let (_, msg) = open_err(b"");
    assert!(msg.contains("not a GGUF file"), "{msg}");
}

#[test]
fn unsupported_and_big_endian_versions() {
    for v in [1u32, 4, 0xFFFF_FFFF] {
        let mut b = Builder::new();
        b.version = v;
        let (err, msg) = open_err(&b.build());
        assert!(matches!(err, GgufError::UnsupportedVersion { version, .. } if version == v), "{msg}");
        assert!(msg.contains(&format!("unsupported GGUF version {v} (supported: 2 and 3)")), "{msg}");
    }
    let mut b = Builder::new();
    b.version = 3u32.swap_bytes();
    let (_, msg) = open_err(&b.build());
    assert!(msg.contains("big-endian GGUF (version 3) is not supported"), "{msg}");
}

#[test]
fn unknown_tensor_type_names_tensor_and_id() {
    for id in [4u32, 31, 43, 999] {
        let bytes = Builder::new().tensor("blk.0.attn_q.weight", &[32], id, vec![0; 64]).build();
        let (err, msg) = open_err(&bytes);
        assert!(matches!(err, GgufError::UnknownTensorType { id: got, .. } if got == id));
        assert!(msg.ends_with(&format!("tensor 'blk.0.attn_q.weight' has unknown GGML type id {id}")), "{msg}");
    }
}

#[test]
fn truncated_file_is_an_error_at_every_length() {
    let full = all_types().tensor("t", &[32], 8, vec![7; 34]).build();
    assert!(open(&full).2.is_ok());
    // Every proper prefix fails cleanly: in the header (truncated), or in the tensor data.
    for len in 0..full.len() - 30 {
        let (_, msg) = open_err(&full[..len]);
        assert!(
            msg.contains("truncated") || msg.contains("not a GGUF file") || msg.contains("lies outside the file"),
            "len {len}: {msg}"
        );
    }
    let (err, msg) = open_err(&full[..300]);
    assert!(matches!(err, GgufError::Truncated { .. }), "{msg}");
    assert!(msg.contains("needs") && msg.contains("bytes at offset"), "{msg}");
}

#[test]
fn tensor_data_out_of_bounds() {
    let mut b = Builder::new().tensor("w", &[64], 0, vec![0; 256]);
    let mut bytes = b.build();
    bytes.truncate(bytes.len() - 32);
    let (err, msg) = open_err(&bytes);
    assert!(matches!(err, GgufError::TensorOutOfBounds { .. }), "{msg}");
    assert!(msg.contains("tensor 'w' data [") && msg.contains("lies outside the file"), "{msg}");
    b.tensors[0].offset = Some(u64::MAX - 31);
    let (err, _) = open_err(&b.build());
    assert!(matches!(err, GgufError::TensorOutOfBounds { .. }));
}

#[test]
fn absurd_counts_and_lengths_are_rejected_without_allocating() {
    // Metadata count.
    let mut bytes = Builder::new().build();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let (_, msg) = open_err(&bytes);
    assert!(msg.contains("metadata count 18446744073709551615 cannot fit"), "{msg}");
    // Tensor count.
    let mut bytes = Builder::new().build();
    bytes[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let (_, msg) = open_err(&bytes);
    assert!(msg.contains("tensor count 1099511627776 cannot fit"), "{msg}");
    // String length.
    let (err, msg) = open_err(&Builder::new().kv_raw("s", ty::STRING, &u64::MAX.to_le_bytes()).build());
    assert!(matches!(err, GgufError::Truncated { .. }) && msg.contains("metadata value 's'"), "{msg}");
    // Array count.
    let (_, msg) = open_err(&Builder::new().kv_raw("a", ty::ARRAY, &garray(ty::STRING, 1 << 60, &[])).build());
    assert!(msg.contains("metadata value 'a' element count 1152921504606846976 cannot fit"), "{msg}");
    // Array nesting.
    let mut deep = garray(ty::U8, 0, &[]);
    for _ in 0..20 {
        deep = garray(ty::ARRAY, 1, &deep);
    }
    let (_, msg) = open_err(&Builder::new().kv_raw("deep", ty::ARRAY, &deep).build());
    assert!(msg.contains("nests arrays deeper than 8 levels"), "{msg}");
}

#[test]
fn malformed_contents() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Builder::new().kv_raw("x", 13, &[0]).build(), "metadata value 'x' has unknown value type 13"),
        (
            Builder::new().kv_raw("x", ty::ARRAY, &garray(77, 0, &[])).build(),
            "elements of metadata value 'x' has unknown value type 77",
        ),
        (
            Builder::new().kv_raw("bad\u{0}", ty::STRING, &gstr(b"\xff\xfe")).build(),
            "metadata value 'bad\u{0}' is not valid UTF-8",
        ),
        (Builder::new().kv_str("k", "a").kv_str("k", "b").build(), "duplicate metadata key 'k'"),
        (
            Builder::new().tensor("t", &[1], 0, vec![0; 4]).tensor("t", &[1], 0, vec![0; 4]).build(),
            "duplicate tensor name 't'",
        ),
        (
            Builder::new().tensor("t", &[1, 1, 1, 1, 1], 0, vec![0; 4]).build(),
            "tensor 't' has 5 dimensions (at most 4)",
        ),
        (
            Builder::new().tensor("q", &[33], 8, vec![0; 34]).build(),
            "tensor 'q' (q8_0) has a first dimension 33 that is not a multiple of the block size 32",
        ),
        (
            Builder::new().tensor("o", &[u64::MAX, 4], 0, vec![]).build(),
            "tensor 'o' dimensions [18446744073709551615, 4] overflow",
        ),
        (Builder::new().alignment(0).build(), "general.alignment must be a nonzero power of two"),
        (Builder::new().kv_str("general.alignment", "32").build(), "general.alignment must be a nonzero power of two"),
    ];
    for (bytes, want) in cases {
        let (_, msg) = open_err(&bytes);
        assert!(msg.contains(want), "want {want:?} in {msg:?}");
    }
    // A tensor name that is not UTF-8.
    let mut b = Builder::new().tensor("zz", &[1], 0, vec![0; 4]);
    b.tensors[0].name = "zz".into();
    let mut bytes = b.build();
    let at = bytes.windows(2).position(|w| w == b"zz").unwrap();
    bytes[at] = 0xC0;
    let (err, msg) = open_err(&bytes);
    assert!(matches!(err, GgufError::BadUtf8 { .. }) && msg.contains("name of tensor #0"), "{msg}");
    // A misaligned offset.
    let mut b = Builder::new().tensor("m", &[1], 0, vec![0; 4]);
    b.tensors[0].offset = Some(4);
    let (_, msg) = open_err(&b.build());
    assert!(msg.contains("tensor 'm' offset 4 is not a multiple of the alignment 32"), "{msg}");
}

#[test]
fn unsupported_dequantization_and_foreign_infos() {
    let bytes = Builder::new().tensor("k", &[256], 10, vec![0; 84]).tensor("f", &[8], 0, vec![0; 32]).build();
    let (_dir, path, r) = open(&bytes);
    let f = r.unwrap();
    let msg = f.dequantize_f32(f.tensor("k").unwrap()).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("{}: tensor 'k': dequantize: GGML type q2_K", path.display())), "{msg}");
    let other = Builder::new().tensor("f", &[4], 0, vec![0; 16]).build();
    let (_dir2, _p2, r2) = open(&other);
    let g = r2.unwrap();
    let msg = f.tensor_bytes(g.tensor("f").unwrap()).unwrap_err().to_string();
    assert!(msg.contains("tensor info 'f' does not belong to this file"), "{msg}");
}

/// Random corruption of a valid file never panics: each corrupted file opens or fails with
/// an error naming the file.
#[test]
fn random_corruption_never_panics() {
    let full = all_types().tensor("t", &[32, 2], 2, vec![1; 36]).tensor("u", &[4], 0, vec![2; 16]).build();
    let mut rng = Rng(7);
    let dir = tempfile::tempdir().unwrap();
    for i in 0..400 {
        let mut bytes = full.clone();
        for _ in 0..1 + i % 4 {
            let at = (rng.next_u64() % bytes.len() as u64) as usize;
            bytes[at] = rng.next_u64() as u8;
        }
        let path = write(dir.path(), "c.gguf", &bytes);
        if let Err(e) = GgufFile::open(&path) {
            assert!(e.to_string().starts_with(&path.display().to_string()), "{e}");
        } else if let Ok(f) = GgufFile::open(&path) {
            for t in f.tensors() {
                let _ = f.dequantize_f32(t);
            }
        }
    }
}
