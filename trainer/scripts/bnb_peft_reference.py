#!/usr/bin/env python3
"""References for the trainer's tests, made with the Python stack ferrotune replaces.

Run on the GPU machine (torch, transformers, peft, bitsandbytes installed):

    python3 trainer/scripts/bnb_peft_reference.py OUT_DIR [PEFT_CHECK_DIR]

1. bitsandbytes' dynamic maps (`create_dynamic_map(signed=True/False)`).
2. `bnb.optim.AdamW8bit` (min_8bit_size=0, block-wise 8-bit states) on one tensor of 700
   values over 6 steps of fixed gradients spanning many magnitudes: the parameter and both
   states (codes and absmax) after every step.
3. 5 steps of `bnb.optim.AdamW8bit` (min_8bit_size=0) and of `torch.optim.AdamW` on each golden
   model (tests/fixtures/golden_*.safetensors) on the GPU in fp32: the losses.
All of it goes to OUT_DIR/bnb_adamw8bit.safetensors (the trainer tests' fixture).

4. With PEFT_CHECK_DIR (written by `cargo run -p trainer --example peft_export_check`): each
   adapter folder there is loaded with `PeftModel.from_pretrained` onto its golden base model,
   and PEFT's logits (adapter applied, then merged) are compared with ferrotune's.
"""
import json
import os
import sys

import torch
import transformers
import peft
from safetensors.torch import load_file, save_file, safe_open

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def golden_base(name, device):
    path = os.path.join(FIXTURES, f"golden_{name}.safetensors")
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    d = json.loads(meta["config"])
    skip = {"model_type", "transformers_version", "attn_implementation", "_attn_implementation"}
    cfg = transformers.LlamaConfig(**{k: v for k, v in d.items() if k not in skip}, attn_implementation="eager")
    model = transformers.LlamaForCausalLM(cfg).float()
    base = {k: v for k, v in tensors.items() if k.startswith("model.") or k == "lm_head.weight"}
    missing, unexpected = model.load_state_dict(base, strict=False)
    assert not unexpected, unexpected
    assert all(m == "lm_head.weight" for m in missing), missing
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model.to(device), tensors, meta


def golden_peft(name, device):
    model, tensors, meta = golden_base(name, device)
    lcfg = peft.LoraConfig(r=int(meta["lora_r"]), lora_alpha=int(meta["lora_alpha"]), lora_dropout=0.0,
                           bias="none", target_modules=TARGETS, task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lcfg)
    adapter = {k: v.to(device) for k, v in tensors.items() if ".lora_" in k and not k.startswith("grad.")}
    res = peft.set_peft_model_state_dict(model, adapter)
    assert not [k for k in res.unexpected_keys], res.unexpected_keys
    ids = tensors["input_ids"].to(device)
    labels = tensors["labels"].to(device)
    return model, ids, labels, json.loads(meta["adamw"])


def losses_of(name, make_opt, device, steps=5):
    model, ids, labels, _ = golden_peft(name, device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_opt(params)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss
        out.append(loss.item())
        loss.backward()
        opt.step()
    return out


def bnb_reference(out_dir):
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    print("bitsandbytes", bnb.__version__)
    t = {
        "map_signed": F.create_dynamic_map(signed=True).float(),
        "map_unsigned": F.create_dynamic_map(signed=False).float(),
    }
    dev = "cuda"
    g = torch.Generator().manual_seed(1234)
    n, steps = 700, 6
    p0 = torch.randn(n, generator=g) * 0.1
    t["tensor.p0"] = p0.clone()
    p = torch.nn.Parameter(p0.clone().to(dev))
    opt = bnb.optim.AdamW8bit([p], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, min_8bit_size=0)
    for s in range(steps):
        mags = 10 ** (-6 * torch.rand(n, generator=g))
        grad = torch.randn(n, generator=g) * mags
        grad[s::97] = 0.0
        t[f"tensor.grad{s}"] = grad.clone()
        p.grad = grad.to(dev)
        opt.step()
        st = opt.state[p]
        t[f"tensor.p{s + 1}"] = p.detach().cpu().clone()
        t[f"tensor.state1_{s + 1}"] = st["state1"].cpu().clone()
        t[f"tensor.state2_{s + 1}"] = st["state2"].cpu().clone()
        t[f"tensor.absmax1_{s + 1}"] = st["absmax1"].cpu().clone()
        t[f"tensor.absmax2_{s + 1}"] = st["absmax2"].cpu().clone()

    for name in ["gqa_llama3", "tied"]:
        _, _, _, adamw = golden_peft(name, "cpu")
        lr, betas, eps, wd = adamw["lr"], tuple(adamw["betas"]), adamw["eps"], adamw["weight_decay"]
        l8 = losses_of(name, lambda ps: bnb.optim.AdamW8bit(ps, lr=lr, betas=betas, eps=eps, weight_decay=wd,
                                                              min_8bit_size=0), dev)
        l32 = losses_of(name, lambda ps: torch.optim.AdamW(ps, lr=lr, betas=betas, eps=eps, weight_decay=wd), dev)
        print(name, "bnb AdamW8bit", l8)
        print(name, "torch AdamW (GPU)", l32)
        t[f"{name}.adamw8bit_losses"] = torch.tensor(l8, dtype=torch.float32)
        t[f"{name}.adamw_gpu_losses"] = torch.tensor(l32, dtype=torch.float32)
    t = {k: v.contiguous() for k, v in t.items()}
    meta = {"versions": f"torch {torch.__version__}, bitsandbytes {bnb.__version__}, peft {peft.__version__}, "
                        f"transformers {transformers.__version__}",
            "tensor_optimizer": json.dumps(dict(lr=1e-2, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.01,
                                                min_8bit_size=0, steps=steps))}
    path = os.path.join(out_dir, "bnb_adamw8bit.safetensors")
    save_file(t, path, metadata=meta)
    print("wrote", path)


def peft_check(check_dir):
    worst = 0.0
    for name in sorted(os.listdir(check_dir)):
        adir = os.path.join(check_dir, name)
        if not os.path.isfile(os.path.join(adir, "adapter_config.json")):
            continue
        base, _, _ = golden_base(name, "cpu")
        model = peft.PeftModel.from_pretrained(base, adir)
        model.eval()
        ref = load_file(os.path.join(adir, "ferrotune_logits.safetensors"))
        with torch.no_grad():
            got = model(input_ids=ref["input_ids"]).logits
            merged = model.merge_and_unload()
            got_merged = merged(input_ids=ref["input_ids"]).logits
        scale = ref["logits"].abs().max().item()
        d = (got - ref["logits"]).abs().max().item() / scale
        dm = (got_merged - ref["logits"]).abs().max().item() / scale
        cfg = model.peft_config["default"] if hasattr(model, "peft_config") else None
        print(f"PEFT load {name}: max|Δlogits|/max|ref| = {d:.3e} (adapter), {dm:.3e} (merged)")
        worst = max(worst, d, dm)
    print(f"PEFT check worst {worst:.3e}", "OK" if worst < 1e-4 else "FAILED")


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    if len(sys.argv) > 2:
        peft_check(sys.argv[2])
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        print("bitsandbytes missing:", e)
        return
    bnb_reference(out_dir)


if __name__ == "__main__":
    main()
