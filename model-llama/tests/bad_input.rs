//! Bad model files give errors that name the file and the problem, never a panic.

use model_llama::{LlamaConfig, SafetensorsDir};
use std::path::Path;

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ferrotune-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A valid safetensors file with one f32 tensor of `n` elements.
fn safetensors_bytes(n: usize) -> Vec<u8> {
    let header = format!(r#"{{"w":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#, 4 * n);
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.extend(std::iter::repeat_n(0u8, 4 * n));
    b
}

#[test]
fn truncated_safetensors_names_the_file() {
    let d = tempdir("trunc");
    let mut bytes = safetensors_bytes(64);
    let whole = d.join("model.safetensors");
    std::fs::write(&whole, &bytes).unwrap();
    assert!(SafetensorsDir::open(&d).unwrap().get("w").is_ok(), "the untruncated file must load");
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&whole, &bytes).unwrap();
    let err = SafetensorsDir::open(&d).err().expect("truncated file must fail").to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn missing_shard_names_the_shard() {
    let d = tempdir("shard");
    std::fs::write(d.join("model-00001-of-00002.safetensors"), safetensors_bytes(4)).unwrap();
    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"weight_map":{"w":"model-00001-of-00002.safetensors","v":"model-00002-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let err = SafetensorsDir::open(&d).err().expect("missing shard must fail").to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

#[test]
fn empty_folder_says_what_is_missing() {
    let d = tempdir("empty");
    let err = SafetensorsDir::open(&d).err().unwrap().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn unsupported_architecture_is_named() {
    let d = tempdir("arch");
    let p = d.join("config.json");
    std::fs::write(&p, r#"{"architectures":["MistralForCausalLM"],"model_type":"mistral","hidden_size":8}"#).unwrap();
    let err = LlamaConfig::from_file(&p).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("MistralForCausalLM"), "{err}");
}

#[test]
fn missing_config_field_is_named() {
    let err = LlamaConfig::from_json(r#"{"model_type":"llama","hidden_size":8,"num_attention_heads":2}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("intermediate_size"), "{err}");
}

#[test]
fn real_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/configs");
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        let c = LlamaConfig::from_file(&p).unwrap();
        assert_eq!((c.hidden_size, c.num_key_value_heads, c.head_dim), (4096, 8, 128), "{}", p.display());
        // Llama-3.1 and its distills scale RoPE the llama3 way; Llama-3 does not.
        let name = p.file_name().unwrap().to_string_lossy();
        assert_eq!(c.rope_scaling.is_some(), !name.starts_with("Meta-Llama-3-"), "{name}");
    }
}
