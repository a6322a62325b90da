//! LoRA adapters on the model's projections, named as PEFT names them.

use engine::rng::Rng;
use engine::{Result as EngineResult, Tensor};
use model_llama::{Llama, Lora, PROJECTIONS};
use std::collections::HashMap;

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
    /// The workflow's adapters: rank `r`, `alpha`, dropout 0, on all seven projections.
    pub fn all_projections(r: usize, alpha: f64) -> LoraConfig {
        LoraConfig {
            r,
            alpha,
            dropout: 0.0,
            target_modules: PROJECTIONS.iter().map(|s| s.to_string()).collect(),
            use_rslora: false,
        }
    }

    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Checks the settings: rank above 0, dropout in [0, 1), known and distinct targets.
    pub fn validate(&self) -> Result<(), String> {
        if self.r == 0 {
            return Err("LoRA rank r must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("lora_dropout must be in [0, 1), got {}", self.dropout));
        }
        if !self.alpha.is_finite() {
            return Err(format!("lora_alpha must be finite, got {}", self.alpha));
        }
        check_targets(self)
    }
}

/// The PEFT module path of projection `proj` in layer `layer`.
pub fn module_path(layer: usize, proj: &str) -> String {
    let block = if matches!(proj, "gate_proj" | "up_proj" | "down_proj") { "mlp" } else { "self_attn" };
    format!("base_model.model.model.layers.{layer}.{block}.{proj}")
}

/// Checks that every target module names a projection the model has, once.
pub fn check_targets(cfg: &LoraConfig) -> Result<(), String> {
    if cfg.target_modules.is_empty() {
        return Err(format!("no LoRA target modules given; the model has {}", PROJECTIONS.join(", ")));
    }
    if let Some(bad) = cfg.target_modules.iter().find(|t| !PROJECTIONS.contains(&t.as_str())) {
        return Err(format!("unknown LoRA target module \"{bad}\"; the model has {}", PROJECTIONS.join(", ")));
    }
    for (i, t) in cfg.target_modules.iter().enumerate() {
        if cfg.target_modules[..i].contains(t) {
            return Err(format!("LoRA target module \"{t}\" is listed twice"));
        }
    }
    Ok(())
}

/// The targets of `cfg` in the model's order ([`PROJECTIONS`]).
pub(crate) fn targets_in_order(cfg: &LoraConfig) -> Vec<&'static str> {
    PROJECTIONS.iter().copied().filter(|p| cfg.target_modules.iter().any(|t| t == p)).collect()
}

/// Attaches adapters to every target projection, taking `A` and `B` from `load(name)` with
/// PEFT's tensor names (`<module>.lora_A.weight`, `<module>.lora_B.weight`). The tensors
/// become trainable leaves; on a model whose weights are on a GPU they move there as f32
/// masters (the optimizer updates them in place; the forward casts them to the activations'
/// dtype).
pub fn attach(
    model: &mut Llama,
    cfg: &LoraConfig,
    mut load: impl FnMut(&str) -> EngineResult<Tensor>,
) -> EngineResult<()> {
    check_targets(cfg).map_err(engine::Error::Msg)?;
    let device = model.embed_tokens.device();
    for i in 0..model.layers.len() {
        let layer = model
            .layer_mut(i)
            .ok_or_else(|| engine::Error::Msg("cannot attach adapters while the model is shared".into()))?;
        for proj in targets_in_order(cfg) {
            let path = module_path(i, proj);
            let a = on_device(load(&format!("{path}.lora_A.weight"))?, device)?.into_var();
            let b = on_device(load(&format!("{path}.lora_B.weight"))?, device)?.into_var();
            let lin = layer.projection_mut(proj).expect("checked by check_targets");
            let (out, inp) = lin.base.dims();
            if a.shape() != [cfg.r, inp] || b.shape() != [out, cfg.r] {
                return Err(engine::Error::shape(
                    "lora",
                    format!(
                        "{path}: A {:?} and B {:?} do not fit a [{out}, {inp}] weight at rank {} (expected A [{}, {inp}], B [{out}, {}])",
                        a.shape(),
                        b.shape(),
                        cfg.r,
                        cfg.r,
                        cfg.r
                    ),
                ));
            }
            lin.lora = Some(Lora { a, b, scale: cfg.scale() });
        }
    }
    Ok(())
}

/// `t` on `device`: unchanged on the CPU, an f32 copy on a GPU.
fn on_device(t: Tensor, device: engine::Device) -> EngineResult<Tensor> {
    match device {
        engine::Device::Cpu => Ok(t),
        gpu => engine::ops::cast(&t.detach(), engine::DType::F32)?.to_device(gpu),
    }
}

/// Attaches freshly initialized adapters as PEFT initializes them (`init_lora_weights=True`):
/// `A` Kaiming-uniform with `a = sqrt(5)`, i.e. uniform in `±1/sqrt(in_features)`, and `B`
/// zero, so the adapted model starts equal to the base model. Values come from
/// [`engine::rng::Rng`] seeded with `seed`, drawn layer by layer in [`PROJECTIONS`] order; the
/// tensors are stored in the model's dtype (f32 on a GPU, see [`attach`]).
pub fn init(model: &mut Llama, cfg: &LoraConfig, seed: u64) -> EngineResult<()> {
    cfg.validate().map_err(engine::Error::Msg)?;
    let mut rng = Rng::new(seed);
    let on_gpu = !model.embed_tokens.device().is_cpu();
    let mut fresh: HashMap<String, Tensor> = HashMap::new();
    for i in 0..model.layers.len() {
        for proj in targets_in_order(cfg) {
            let (out, inp) = model.layers[i].projection(proj).expect("known projection").base.dims();
            let bound = 1.0 / (inp as f64).sqrt();
            let a: Vec<f32> = (0..cfg.r * inp).map(|_| rng.uniform_range(-bound, bound) as f32).collect();
            let path = module_path(i, proj);
            let dtype = if on_gpu { engine::DType::F32 } else { model.dtype };
            let a = engine::ops::cast(&Tensor::from_vec(a, &[cfg.r, inp])?, dtype)?;
            let b = Tensor::zeros(&[out, cfg.r], dtype, engine::Device::Cpu)?;
            fresh.insert(format!("{path}.lora_A.weight"), a);
            fresh.insert(format!("{path}.lora_B.weight"), b);
        }
    }
    attach(model, cfg, |n| fresh.remove(n).ok_or_else(|| engine::Error::Msg(format!("no initial value for {n}"))))
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
