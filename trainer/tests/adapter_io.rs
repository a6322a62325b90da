//! PEFT adapter folders: save and load round trip, the fields PEFT requires in
//! adapter_config.json, shape and name checks with clear errors, and PEFT's initialization.

mod common;

use common::{base_model, golden, max_abs_diff};
use std::collections::BTreeSet;
use trainer::adapter::{self, expected_tensor_names};
use trainer::lora::{self, LoraConfig};
use trainer::{load_adapter, named_parameters, save_adapter};

fn logits(model: &model_llama::Llama, ids: &engine::Tensor) -> Vec<f32> {
    let _g = engine::no_grad();
    model.forward(ids, None).unwrap().to_vec_f32().unwrap()
}

#[test]
fn save_and_load_round_trip() {
    let g = golden("gqa_llama3");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter");
    save_adapter(&out, &g.model, &g.lora, Some("unsloth/DeepSeek-R1-Distill-Llama-8B")).unwrap();
    assert!(!out.join("adapter_model.safetensors.tmp").exists());

    // adapter_config.json has what PEFT's LoraConfig needs.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8);
    assert_eq!(cfg["lora_dropout"], 0.0);
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["use_rslora"], false);
    assert_eq!(cfg["use_dora"], false);
    assert_eq!(cfg["fan_in_fan_out"], false);
    assert_eq!(cfg["base_model_name_or_path"], "unsloth/DeepSeek-R1-Distill-Llama-8B");
    let targets: BTreeSet<&str> =
        cfg["target_modules"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(targets, model_llama::PROJECTIONS.iter().copied().collect());

    // The weights file holds exactly PEFT's names, with the fixture's (PEFT-saved) values.
    let st = model_llama::SafetensorsDir::open_files(&[out.join("adapter_model.safetensors")]).unwrap();
    let names: BTreeSet<String> = st.names().map(str::to_string).collect();
    let want: BTreeSet<String> = expected_tensor_names(&g.lora, 2).into_iter().collect();
    assert_eq!(names, want);
    assert!(names.contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert!(names.contains("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
    for n in &names {
        assert_eq!(st.get(n).unwrap().to_vec_f32().unwrap(), g.reference(n), "{n}");
    }
    assert_eq!(st.metadata().unwrap().get("format").map(String::as_str), Some("pt"));

    // Loading onto the bare base model reproduces the adapted model exactly.
    let (mut fresh, _, _) = base_model("gqa_llama3");
    let before = logits(&fresh, &g.ids);
    let loaded = load_adapter(&out, &mut fresh).unwrap();
    assert_eq!(loaded, g.lora);
    let (want, got) = (logits(&g.model, &g.ids), logits(&fresh, &g.ids));
    assert_eq!(got, want);
    assert!(max_abs_diff(&before, &want) > 1e-2, "the adapter should change the logits");
    // Loaded tensors are trainable.
    assert!(named_parameters(&fresh).iter().all(|(_, p)| p.requires_grad()));

    let (read, base) = trainer::read_adapter_config(&out).unwrap();
    assert_eq!(read, g.lora);
    assert_eq!(base.as_deref(), Some("unsloth/DeepSeek-R1-Distill-Llama-8B"));
}

#[test]
fn rslora_and_fractional_alpha_round_trip() {
    let (mut model, _, _) = base_model("tied");
    let cfg = LoraConfig {
        r: 2,
        alpha: 3.5,
        dropout: 0.0,
        target_modules: vec!["v_proj".into(), "q_proj".into()],
        use_rslora: true,
    };
    lora::init(&mut model, &cfg, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(dir.path(), &model, &cfg, None).unwrap();
    let (read, base) = trainer::read_adapter_config(dir.path()).unwrap();
    assert_eq!(read.alpha, 3.5);
    assert!(read.use_rslora);
    assert_eq!(read.target_modules, vec!["q_proj", "v_proj"]);
    assert_eq!(base, None);
    assert!((read.scale() - 3.5 / 2f64.sqrt()).abs() < 1e-12);
}

#[test]
fn load_errors_are_clear() {
    let g = golden("gqa_llama3");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a");
    save_adapter(&out, &g.model, &g.lora, None).unwrap();

    // Another architecture: the shapes do not fit.
    let (mut other, _, _) = base_model("tied");
    let e = load_adapter(&out, &mut other).unwrap_err().to_string();
    assert!(e.contains("layers.0.self_attn.q_proj.lora_A.weight") && e.contains("does not fit"), "{e}");

    // A missing tensor is named.
    let cfg_text = std::fs::read_to_string(out.join("adapter_config.json")).unwrap();
    let broken = dir.path().join("b");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("adapter_config.json"), &cfg_text).unwrap();
    let mut partial = model_llama::Llama::load(
        model_llama::LlamaConfig::from_json(&g.meta["config"]).unwrap(),
        &g.st,
        engine::DType::F32,
    )
    .unwrap();
    let few = LoraConfig { target_modules: vec!["q_proj".into()], ..g.lora.clone() };
    lora::init(&mut partial, &few, 0).unwrap();
    save_adapter(&dir.path().join("q_only"), &partial, &few, None).unwrap();
    std::fs::copy(dir.path().join("q_only/adapter_model.safetensors"), broken.join("adapter_model.safetensors"))
        .unwrap();
    let (mut base, _, _) = base_model("gqa_llama3");
    let e = load_adapter(&broken, &mut base).unwrap_err().to_string();
    assert!(e.contains("layers.0.self_attn.k_proj.lora_A.weight") && e.contains("missing"), "{e}");

    // Unexpected tensors are named too (a config targeting fewer modules than the file has).
    let mut cfg: serde_json::Value = serde_json::from_str(&cfg_text).unwrap();
    cfg["target_modules"] = serde_json::json!(["q_proj"]);
    let extra = dir.path().join("c");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("adapter_config.json"), cfg.to_string()).unwrap();
    std::fs::copy(out.join("adapter_model.safetensors"), extra.join("adapter_model.safetensors")).unwrap();
    let (mut base, _, _) = base_model("gqa_llama3");
    let e = load_adapter(&extra, &mut base).unwrap_err().to_string();
    assert!(e.contains("24 tensors do not belong") && e.contains("down_proj"), "{e}");
    // Nothing was attached by the failed load.
    assert!(named_parameters(&base).is_empty());

    // Settings PEFT allows but ferrotune cannot apply are refused by name.
    for (key, value, needle) in [
        ("peft_type", serde_json::json!("IA3"), "peft_type \"IA3\""),
        ("target_modules", serde_json::json!(["q_proj", "lm_head"]), "unknown LoRA target module \"lm_head\""),
        ("target_modules", serde_json::json!(".*proj"), "pattern"),
        ("bias", serde_json::json!("all"), "bias \"all\""),
        ("use_dora", serde_json::json!(true), "use_dora"),
        ("rank_pattern", serde_json::json!({"q_proj": 8}), "rank_pattern"),
        ("r", serde_json::json!(0), "rank"),
    ] {
        let mut c: serde_json::Value = serde_json::from_str(&cfg_text).unwrap();
        c[key] = value;
        std::fs::write(extra.join("adapter_config.json"), c.to_string()).unwrap();
        let e = trainer::read_adapter_config(&extra).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains("adapter_config.json"), "{key}: {e}");
    }
    let e = trainer::read_adapter_config(&dir.path().join("none")).unwrap_err().to_string();
    assert!(e.contains("adapter_config.json"), "{e}");
}

#[test]
fn peft_initialization() {
    let (mut model, _, _) = base_model("gqa_llama3");
    let ids = golden("gqa_llama3").ids;
    let base_logits = logits(&model, &ids);
    let cfg = LoraConfig::all_projections(4, 8.0);
    lora::init(&mut model, &cfg, 3407).unwrap();
    // B = 0: the adapted model starts equal to the base model.
    assert_eq!(logits(&model, &ids), base_logits);
    let params = named_parameters(&model);
    assert_eq!(params.len(), 2 * 7 * 2);
    for (name, p) in &params {
        let v = p.to_vec_f32().unwrap();
        assert!(p.requires_grad());
        if name.ends_with("lora_B.weight") {
            assert!(v.iter().all(|&x| x == 0.0), "{name}");
        } else {
            // Kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in)).
            let bound = 1.0 / (p.dim(1) as f32).sqrt();
            assert!(v.iter().all(|x| x.abs() <= bound), "{name}");
            let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(max > 0.8 * bound, "{name}: largest |A| {max} for bound {bound}");
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            assert!(mean.abs() < 0.25 * bound, "{name}: mean {mean}");
        }
    }
    // Seeded: the same seed gives the same adapters, another seed others.
    let (mut again, _, _) = base_model("gqa_llama3");
    lora::init(&mut again, &cfg, 3407).unwrap();
    let (mut other, _, _) = base_model("gqa_llama3");
    lora::init(&mut other, &cfg, 1).unwrap();
    let first = |m: &model_llama::Llama| named_parameters(m)[0].1.to_vec_f32().unwrap();
    assert_eq!(first(&again), first(&model));
    assert_ne!(first(&other), first(&model));

    // Unknown targets are refused with the list of projections.
    let (mut m, _, _) = base_model("gqa_llama3");
    let bad = LoraConfig { target_modules: vec!["q_proj".into(), "qkv_proj".into()], ..cfg.clone() };
    let e = lora::init(&mut m, &bad, 0).unwrap_err().to_string();
    assert!(e.contains("unknown LoRA target module \"qkv_proj\"") && e.contains("gate_proj"), "{e}");
    let dup = LoraConfig { target_modules: vec!["q_proj".into(), "q_proj".into()], ..cfg };
    assert!(lora::init(&mut m, &dup, 0).unwrap_err().to_string().contains("twice"));
    let _ = adapter::CONFIG_FILE;
}
