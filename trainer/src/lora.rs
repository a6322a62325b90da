//! LoRA adapters on the model's projections, named as PEFT names them.

use engine::{Result as EngineResult, Tensor};
use model_llama::{Llama, Lora, PROJECTIONS};

/// Adapter hyperparameters (PEFT's `LoraConfig` fields of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<String>,
    /// rsLoRA: scale `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// The PEFT module path of projection `proj` in layer `layer`.
pub fn module_path(layer: usize, proj: &str) -> String {
    let block = if matches!(proj, "gate_proj" | "up_proj" | "down_proj") { "mlp" } else { "self_attn" };
    format!("base_model.model.model.layers.{layer}.{block}.{proj}")
}

/// Checks that every target module names a projection the model has.
pub fn check_targets(cfg: &LoraConfig) -> Result<(), String> {
    match cfg.target_modules.iter().find(|t| !PROJECTIONS.contains(&t.as_str())) {
        Some(bad) => Err(format!("unknown LoRA target module \"{bad}\"; the model has {}", PROJECTIONS.join(", "))),
        None => Ok(()),
    }
}

/// Attaches adapters to every target projection, taking `A` and `B` from `load(name)` with
/// PEFT's tensor names (`<module>.lora_A.weight`, `<module>.lora_B.weight`). The tensors
/// become trainable leaves.
pub fn attach(model: &mut Llama, cfg: &LoraConfig, mut load: impl FnMut(&str) -> EngineResult<Tensor>) -> EngineResult<()> {
    check_targets(cfg).map_err(engine::Error::Msg)?;
    for i in 0..model.layers.len() {
        let layer = model
            .layer_mut(i)
            .ok_or_else(|| engine::Error::Msg("cannot attach adapters while the model is shared".into()))?;
        for proj in &cfg.target_modules {
            let path = module_path(i, proj);
            let a = load(&format!("{path}.lora_A.weight"))?.into_var();
            let b = load(&format!("{path}.lora_B.weight"))?.into_var();
            let lin = layer.projection_mut(proj).expect("checked by check_targets");
            let (out, inp) = lin.base.dims();
            if a.shape() != [cfg.r, inp] || b.shape() != [out, cfg.r] {
                return Err(engine::Error::shape(
                    "lora",
                    format!("{path}: A {:?} and B {:?} do not fit a [{out}, {inp}] weight at rank {}", a.shape(), b.shape(), cfg.r),
                ));
            }
            lin.lora = Some(Lora { a, b, scale: cfg.scale() });
        }
    }
    Ok(())
}

/// Every adapter tensor with its PEFT name, in layer order.
pub fn named_parameters(model: &Llama) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (i, layer) in model.layers.iter().enumerate() {
        for proj in PROJECTIONS {
            if let Some(l) = layer.projection(proj).and_then(|p| p.lora.as_ref()) {
                let path = module_path(i, proj);
                out.push((format!("{path}.lora_A.weight"), l.a.clone()));
                out.push((format!("{path}.lora_B.weight"), l.b.clone()));
            }
        }
    }
    out
}
