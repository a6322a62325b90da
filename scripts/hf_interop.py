#!/usr/bin/env python3
"""Hugging Face interop check of what ferrotune writes (run where torch + transformers + peft are).

Given
  --base DIR     a Hugging Face model folder (config.json + safetensors),
  --adapter DIR  a PEFT adapter folder ferrotune wrote for that base (adapter_config.json +
                 adapter_model.safetensors),
  --merged DIR   the merged folder ferrotune wrote (model_llama::save_hf),
  --logits FILE  ferrotune's f32 logits [batch, seq, vocab] of the unmerged base + adapter
                 (.safetensors with a tensor "logits", or .npy),
  --ids IDS      the token ids: a JSON list of lists ("[[1,2,3],[4,5,6]]"), or a .json file;
                 default: the tensor "input_ids" of the .safetensors logits file,
this script
  1. loads the base in float32 (eager attention), applies the adapter with
     peft.PeftModel.from_pretrained and compares its logits with ferrotune's:
     max |delta| must be below 1e-3 (absolute, float32);
  2. loads the merged folder with transformers.AutoModelForCausalLM in float32 and compares
     its logits with ferrotune's. The folder stores bf16 (every weight rounded once to 8
     significant bits), so the tolerance is the rounding floor: PEFT's own float32 merge
     (merge_and_unload) with every weight rounded to the folder's dtype gives logits at
     max |delta| = floor from ferrotune's; the folder must satisfy
     max |delta| <= 1.05 * floor + 1e-4 * max |ref|.
     (On the tiny random fixtures, weights of std 0.3, floor / max |ref| is 2e-2 to 5e-2.)
  3. checks every merged weight against PEFT's merge within the rounding of the stored
     dtype: |w_file - w_peft| <= 2^-8 |w_peft| + 1e-6 for bf16 (2^-11 for f16, 1e-6
     relative for f32).
It prints one JSON object and exits 1 when a check fails, 2 on bad input.
"""
import argparse
import glob
import json
import os
import sys

import torch


def fail_input(msg):
    print(json.dumps({"error": msg}))
    sys.exit(2)


def load_logits(path):
    if path.endswith(".npy"):
        import numpy as np

        return torch.from_numpy(np.load(path)).float(), None
    from safetensors.torch import load_file

    t = load_file(path)
    if "logits" not in t:
        fail_input(f"{path}: no tensor named 'logits' (has {sorted(t)})")
    return t["logits"].float(), t.get("input_ids")


def load_ids(arg, from_file):
    if arg is None:
        if from_file is None:
            fail_input("no --ids given and the logits file has no 'input_ids' tensor")
        return from_file.long()
    text = open(arg).read() if arg.endswith(".json") else arg
    try:
        ids = json.loads(text)
    except json.JSONDecodeError as e:
        fail_input(f"--ids: invalid JSON ({e})")
    ids = torch.tensor(ids, dtype=torch.long)
    return ids if ids.dim() == 2 else ids.unsqueeze(0)


def from_pretrained(cls, path, **kw):
    """transformers 5 takes `dtype`, 4.x `torch_dtype`."""
    try:
        return cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager", **kw)
    except TypeError:
        return cls.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager", **kw)


def logits_of(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--merged", required=True)
    p.add_argument("--logits", required=True)
    p.add_argument("--ids")
    p.add_argument("--adapter-atol", type=float, default=1e-3)
    a = p.parse_args()

    import peft
    import transformers
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    ref, file_ids = load_logits(a.logits)
    ids = load_ids(a.ids, file_ids)
    if tuple(ref.shape[:2]) != tuple(ids.shape):
        fail_input(f"logits shape {list(ref.shape)} does not match ids shape {list(ids.shape)}")
    scale = ref.abs().max().item()
    out = {
        "versions": f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}",
        "ids_shape": list(ids.shape),
        "max_abs_ref": scale,
    }

    base = from_pretrained(AutoModelForCausalLM, a.base)
    model = peft.PeftModel.from_pretrained(base, a.adapter)
    got = logits_of(model, ids)
    if got.shape != ref.shape:
        fail_input(f"peft logits shape {list(got.shape)} != ferrotune's {list(ref.shape)}")
    out["adapter_max_abs_delta"] = (got - ref).abs().max().item()
    out["adapter_atol"] = a.adapter_atol
    # The adapter must matter: the base alone is far from the reference.
    with model.disable_adapter():
        out["base_only_max_abs_delta"] = (logits_of(model, ids) - ref).abs().max().item()

    exact = model.merge_and_unload()
    peft_merged = {k: v.detach().clone() for k, v in exact.state_dict().items()}
    merged = from_pretrained(AutoModelForCausalLM, a.merged)
    got = logits_of(merged, ids)
    d = (got - ref).abs().max().item()
    out["merged_max_abs_delta"] = d
    out["merged_rel_delta"] = d / scale

    # The rounding floor: PEFT's merge rounded to the dtype the folder stores.
    import safetensors

    first = sorted(glob.glob(os.path.join(a.merged, "*.safetensors")))
    if not first:
        fail_input(f"{a.merged}: no .safetensors files")
    with safetensors.safe_open(first[0], framework="pt") as st:
        stored = st.get_tensor(next(iter(st.keys()))).dtype
    with torch.no_grad():
        for prm in exact.parameters():
            prm.copy_(prm.to(stored).float())
    floor = (logits_of(exact, ids) - ref).abs().max().item()
    out["stored_dtype"] = str(stored)
    out["rounding_floor_max_abs_delta"] = floor
    out["merged_tolerance"] = 1.05 * floor + 1e-4 * scale

    # Weights against PEFT's merge, within the stored dtype's rounding.
    from safetensors import safe_open

    rel = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 1e-6}
    worst, worst_name, n, dtypes = 0.0, None, 0, set()
    for f in sorted(glob.glob(os.path.join(a.merged, "*.safetensors"))):
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                w = st.get_tensor(name)
                dtypes.add(str(w.dtype))
                if name not in peft_merged:
                    fail_input(f"{f}: tensor {name} is not a parameter of the model")
                want = peft_merged[name].float()
                if w.shape != want.shape:
                    fail_input(f"{f}: tensor {name} has shape {list(w.shape)}, the model {list(want.shape)}")
                excess = ((w.float() - want).abs() - rel[w.dtype] * want.abs()).max().item()
                n += 1
                if excess > worst or worst_name is None:
                    worst, worst_name = excess, name
    out["merged_tensors"] = n
    out["merged_dtypes"] = sorted(dtypes)
    out["merged_weight_worst_excess"] = worst
    out["merged_weight_worst_tensor"] = worst_name

    checks = {
        "adapter": out["adapter_max_abs_delta"] < a.adapter_atol,
        "adapter_matters": out["base_only_max_abs_delta"] > 10 * a.adapter_atol,
        "merged_logits": out["merged_max_abs_delta"] <= out["merged_tolerance"],
        # An f32 folder has no rounding to allow for: the adapter's bound applies.
        "merged_f32_logits": stored != torch.float32 or out["merged_max_abs_delta"] < a.adapter_atol,
        "merged_weights": n > 0 and worst <= 1e-6,
    }
    out["checks"] = checks
    out["ok"] = all(checks.values())
    print(json.dumps(out, indent=1))
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
