#!/usr/bin/env python3
"""Builds the golden fixtures of the model tests (in the spirit of llm.c's test_gpt2).

For each tiny random Llama below, in fp32 with eager attention, this script attaches PEFT
LoRA adapters (nonzero A and B) to all seven projections and saves into
tests/fixtures/golden_<name>.safetensors:

  base weights under their Hugging Face names, the adapters under PEFT's names
  (base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight, ...), input_ids, labels
  (with -100 entries), logits, loss, `grad.<adapter name>` for every LoRA tensor, and the
  losses of 5 AdamW (fp32) steps on the same batch (`adamw_losses`, the loss before each
  step). Metadata: config.json text, lora_r, lora_alpha, AdamW settings, library versions.

Run it where torch + transformers + peft are installed (the GPU machine has them):
    python3 scripts/make_golden.py tests/fixtures
"""
import json
import sys

import torch
import transformers
import peft
from safetensors.torch import save_file

CASES = {
    # GQA (4 query / 2 kv heads), llama3 rope scaling, untied embeddings.
    "gqa_llama3": dict(hidden_size=32, intermediate_size=44, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, vocab_size=97, max_position_embeddings=64,
                       rms_norm_eps=1e-5, tie_word_embeddings=False,
                       rope=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                                 high_freq_factor=4.0, original_max_position_embeddings=16)),
    # GQA with head_dim 64, a size the CUDA attention kernels take: the GPU golden test.
    "gqa_hd64": dict(hidden_size=96, intermediate_size=132, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=64, vocab_size=97, max_position_embeddings=64,
                     rms_norm_eps=1e-5, tie_word_embeddings=False,
                     rope=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                               high_freq_factor=4.0, original_max_position_embeddings=16)),
    # Plain multi-head attention, tied embeddings, default rope.
    "tied": dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3,
                 num_key_value_heads=3, head_dim=8, vocab_size=61, max_position_embeddings=64,
                 rms_norm_eps=1e-6, tie_word_embeddings=True,
                 rope=dict(rope_type="default", rope_theta=10000.0)),
}
LORA_R, LORA_ALPHA = 4, 8
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_config(spec):
    spec = dict(spec)
    rope = spec.pop("rope")
    major = int(transformers.__version__.split(".")[0])
    if major >= 5:
        return transformers.LlamaConfig(**spec, rope_parameters=rope, attn_implementation="eager")
    theta = rope.pop("rope_theta")
    scaling = None if rope["rope_type"] == "default" else rope
    return transformers.LlamaConfig(**spec, rope_theta=theta, rope_scaling=scaling, attn_implementation="eager")


def build(name, spec, seed):
    torch.manual_seed(seed)
    cfg = make_config(spec)
    model = transformers.LlamaForCausalLM(cfg).float()
    # Larger than the default init (std 0.02) so activations, logits and gradients are O(1)
    # and the comparison can fail.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.3)
    base = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        base.pop("lm_head.weight", None)
    lcfg = peft.LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, bias="none",
                           target_modules=TARGETS, task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lcfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.3)
    adapter = {k: v.detach().clone().contiguous() for k, v in peft.get_peft_model_state_dict(model).items()}
    lora_params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    b, t = 2, 9
    ids = torch.randint(0, cfg.vocab_size, (b, t))
    labels = ids.clone()
    labels[0, :3] = -100
    labels[1, 5] = -100
    model.train()
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    grads = {}
    for n, p in lora_params.items():
        # named_parameters has ".default" in adapter names; PEFT's saved names do not.
        grads["grad." + n.replace(".default", "")] = p.grad.detach().clone().contiguous()
    assert set(k[5:] for k in grads) == set(adapter), (sorted(grads)[:3], sorted(adapter)[:3])

    opt = torch.optim.AdamW(list(lora_params.values()), **ADAMW)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()

    tensors = dict(base)
    tensors.update(adapter)
    tensors.update(grads)
    tensors["input_ids"] = ids.to(torch.int64)
    tensors["labels"] = labels.to(torch.int64)
    tensors["logits"] = out.logits.detach().contiguous()
    tensors["loss"] = out.loss.detach().reshape(1)
    tensors["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
    meta = {
        "config": cfg.to_json_string(),
        "lora_r": str(LORA_R),
        "lora_alpha": str(LORA_ALPHA),
        "adamw": json.dumps(ADAMW),
        "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
    }
    return tensors, meta


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    seeds = {"gqa_llama3": 1234, "tied": 1235, "gqa_hd64": 1236}
    for name, spec in CASES.items():
        tensors, meta = build(name, spec, seed=seeds[name])
        path = f"{outdir}/golden_{name}.safetensors"
        save_file(tensors, path, metadata=meta)
        print(path, "loss", tensors["loss"].item(), "adamw", tensors["adamw_losses"].tolist())


if __name__ == "__main__":
    main()
