//! Adapter folders in PEFT's format: `adapter_config.json` and `adapter_model.safetensors`
//! with PEFT's tensor names (`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`).
//! PEFT's `PeftModel.from_pretrained` loads what [`save_adapter`] writes, and [`load_adapter`]
//! loads what PEFT saves for the supported settings (LoRA on the seven projections, no bias,
//! no DoRA, no per-module rank or alpha patterns).

use crate::lora::{self, module_path, targets_in_order, LoraConfig};
use crate::st::{self, Stored, Values};
use crate::{Result, TrainError};
use engine::Tensor;
use model_llama::Llama;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The `adapter_config.json` PEFT writes for `cfg` (the fields PEFT's `LoraConfig` reads,
/// with their PEFT defaults where ferrotune has no setting).
pub fn adapter_config_json(cfg: &LoraConfig, base_model: Option<&str>) -> Value {
    let alpha =
        if cfg.alpha.fract() == 0.0 && cfg.alpha.abs() < 1e15 { json!(cfg.alpha as i64) } else { json!(cfg.alpha) };
    json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_dropout": cfg.dropout,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": cfg.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets_in_order(cfg),
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": cfg.use_rslora,
    })
}

/// Writes the adapter of `model` (its current LoRA values, as f32) to the folder `dir`
/// (created if needed). Each file is written under a temporary name and renamed.
pub fn save_adapter(dir: &Path, model: &Llama, cfg: &LoraConfig, base_model: Option<&str>) -> Result<()> {
    let mut tensors = BTreeMap::new();
    for (name, t) in lora::named_parameters(model) {
        tensors.insert(name, Stored::f32(t.shape(), t.to_vec_f32()?));
    }
    write_adapter_files(dir, cfg, base_model, tensors)
}

/// Writes an adapter folder from named f32 tensors (PEFT names).
pub fn write_adapter_files(
    dir: &Path,
    cfg: &LoraConfig,
    base_model: Option<&str>,
    tensors: BTreeMap<String, Stored>,
) -> Result<()> {
    if tensors.is_empty() {
        return Err(TrainError::Adapter("the model has no LoRA adapters to save".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    st::write(&dir.join(WEIGHTS_FILE), &tensors, meta)?;
    let text = serde_json::to_string_pretty(&adapter_config_json(cfg, base_model)).expect("JSON value serializes");
    st::write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// Reads `adapter_config.json` of the folder `dir`: the LoRA settings and the base model
/// name. Settings ferrotune cannot apply (bias, DoRA, rank or alpha patterns, modules to save,
/// layer subsets, regex targets, other PEFT types) are errors naming the field.
pub fn read_adapter_config(dir: &Path) -> Result<(LoraConfig, Option<String>)> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let bad = |m: String| TrainError::Adapter(format!("{}: {m}", path.display()));
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| bad("expected a JSON object".into()))?;
    match obj.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        Some(other) => return Err(bad(format!("peft_type \"{other}\" is not supported (only LORA)"))),
        None => return Err(bad("missing field \"peft_type\"".into())),
    }
    let r =
        obj.get("r").and_then(Value::as_u64).ok_or_else(|| bad("missing or non-integer field \"r\"".into()))? as usize;
    let alpha =
        obj.get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| bad("missing field \"lora_alpha\"".into()))?;
    let dropout = obj.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    let use_rslora = obj.get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    let target_modules = match obj.get("target_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_str().map(str::to_string).ok_or_else(|| bad("target_modules holds a non-string".into())))
            .collect::<Result<Vec<_>>>()?,
        Some(Value::String(s)) => {
            return Err(bad(format!("target_modules is the pattern \"{s}\"; list the module names instead")));
        }
        _ => return Err(bad("missing field \"target_modules\"".into())),
    };
    if let Some(b) = obj.get("bias").and_then(Value::as_str) {
        if b != "none" {
            return Err(bad(format!("bias \"{b}\" is not supported (only \"none\")")));
        }
    }
    for flag in ["use_dora", "fan_in_fan_out", "lora_bias"] {
        if obj.get(flag).and_then(Value::as_bool) == Some(true) {
            return Err(bad(format!("{flag} = true is not supported")));
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if obj.get(key).and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
            return Err(bad(format!("{key} is not supported (one rank and alpha for every module)")));
        }
    }
    for key in ["modules_to_save", "layers_to_transform", "layer_replication"] {
        if obj.get(key).is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(bad(format!("{key} is not supported")));
        }
    }
    let base = obj.get("base_model_name_or_path").and_then(Value::as_str).map(str::to_string);
    let cfg = LoraConfig { r, alpha, dropout, target_modules, use_rslora };
    cfg.validate().map_err(bad)?;
    Ok((cfg, base))
}

/// Loads the adapter folder `dir` onto `model` (replacing adapters on the targeted
/// projections). Everything is checked before the model changes: tensor shapes against the
/// model, missing and unexpected tensors, each error naming the tensor. Returns the adapter's
/// settings.
pub fn load_adapter(dir: &Path, model: &mut Llama) -> Result<LoraConfig> {
    let (cfg, _) = read_adapter_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    let (mut tensors, _) = st::read(&path).map_err(|e| TrainError::Adapter(e.to_string()))?;
    let bad = |m: String| TrainError::Adapter(format!("{}: {m}", path.display()));
    for (i, layer) in model.layers.iter().enumerate() {
        for proj in targets_in_order(&cfg) {
            let (out, inp) = layer.projection(proj).expect("known projection").base.dims();
            let p = module_path(i, proj);
            for (name, want) in
                [(format!("{p}.lora_A.weight"), [cfg.r, inp]), (format!("{p}.lora_B.weight"), [out, cfg.r])]
            {
                match tensors.get(&name) {
                    None => {
                        return Err(bad(format!(
                            "tensor \"{name}\" is missing (the config targets {} on {} layers)",
                            cfg.target_modules.join(", "),
                            model.layers.len()
                        )))
                    }
                    Some(Stored { values: Values::U8(_), .. }) => return Err(bad(format!("tensor \"{name}\" is not a float tensor"))),
                    Some(t) if t.shape != want => {
                        return Err(bad(format!(
                            "tensor \"{name}\" has shape {:?}; the model's [{out}, {inp}] projection at rank {} needs {want:?}: the adapter does not fit this model",
                            t.shape, cfg.r
                        )))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    let expected: std::collections::HashSet<String> =
        expected_tensor_names(&cfg, model.layers.len()).into_iter().collect();
    let extra: Vec<&str> = tensors.keys().filter(|k| !expected.contains(*k)).map(String::as_str).collect();
    if !extra.is_empty() {
        return Err(bad(format!(
            "{} tensors do not belong to any targeted module of this {}-layer model (first: {})",
            extra.len(),
            model.layers.len(),
            extra.iter().take(3).copied().collect::<Vec<_>>().join(", ")
        )));
    }
    let dtype = model.dtype;
    lora::attach(model, &cfg, |name| match tensors.remove(name) {
        Some(Stored { shape, values: Values::F32(v) }) => engine::ops::cast(&Tensor::from_vec(v, &shape)?, dtype),
        _ => Err(engine::Error::Msg(format!("tensor {name} is missing"))),
    })
    .map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}

/// The PEFT names of the tensors an adapter with `cfg` has on a model of `n_layers` layers.
pub fn expected_tensor_names(cfg: &LoraConfig, n_layers: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n_layers {
        for proj in targets_in_order(cfg) {
            let p = module_path(i, proj);
            out.push(format!("{p}.lora_A.weight"));
            out.push(format!("{p}.lora_B.weight"));
        }
    }
    out
}
