#!/usr/bin/env python3
"""PyTorch's own numbers on the card the criterion benches ran on, at the same shapes, for
benches/RESULTS.md: device copy bandwidth, bf16 matmul (x @ W^T), SDPA's flash backend
(causal GQA, batch 2, 32 q heads / 8 kv heads, seq 2048, head_dim 128; forward and
forward + backward) and F.cross_entropy on materialized logits (4094 x 4096 hidden x 128256
vocab; time and peak memory).

Prints one JSON object per line. Times: CUDA events around each call after warm-up, median of
`reps`. FLOPs are counted as in the Rust benches: matmul 2mnk; attention forward
4*b*h*s*s*d/2 (causal), backward 2.5x, forward + backward 3.5x; loss 2*n*h*v forward,
4*n*h*v forward + backward.

    python3 benches/pytorch_ref.py            # on the GPU machine (torch 2.11)
"""
import json
import statistics

import torch
import torch.nn.functional as F

DEV = "cuda"


def emit(**kv):
    kv.setdefault("device", torch.cuda.get_device_name(0))
    print(json.dumps(kv), flush=True)


def time_ms(fn, reps=20, warmup=3):
    """Median milliseconds of fn() on the current stream, each call between two CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth():
    n = 512 << 20
    src = torch.empty(n, dtype=torch.uint8, device=DEV)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src))
    emit(bench="copy_dtod", bytes=2 * n, ms=ms, gb_s=2 * n / ms / 1e6)


def matmul():
    for m, n, k in [(8192, 8192, 8192), (4096, 4096, 4096), (4096, 14336, 4096), (4096, 4096, 14336)]:
        x = torch.randn(m, k, dtype=torch.bfloat16, device=DEV)
        w = torch.randn(n, k, dtype=torch.bfloat16, device=DEV)
        ms = time_ms(lambda: x @ w.t())
        emit(bench="matmul_bf16", m=m, n=n, k=k, ms=ms, tflops=2 * m * n * k / ms / 1e9)


def attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, hq, hkv, s, d = 2, 32, 8, 2048, 128
    fwd_flops = 4 * b * hq * s * s * d / 2
    q = torch.randn(b, hq, s, d, dtype=torch.bfloat16, device=DEV, requires_grad=True)
    k = torch.randn(b, hkv, s, d, dtype=torch.bfloat16, device=DEV, requires_grad=True)
    v = torch.randn(b, hkv, s, d, dtype=torch.bfloat16, device=DEV, requires_grad=True)
    do = torch.randn(b, hq, s, d, dtype=torch.bfloat16, device=DEV)

    def run(gqa):
        """The attention call and the leaves whose gradients it accumulates."""
        if gqa == "native":
            return (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)), (q, k, v)
        # Flash without GQA support: the kv heads repeated once, outside the timing.
        kr = k.detach().repeat_interleave(hq // hkv, dim=1).requires_grad_()
        vr = v.detach().repeat_interleave(hq // hkv, dim=1).requires_grad_()
        return (lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=True)), (q, kr, vr)

    def measure(backend, gqa):
        try:
            f, leaves = run(gqa)
            with torch.no_grad():
                ms = time_ms(f)
            emit(bench="sdpa", backend=backend, gqa=gqa, shape=[b, hq, hkv, s, d], phase="fwd", ms=ms,
                 tflops=fwd_flops / ms / 1e9)

            def fwd_bwd():
                for t in leaves:
                    t.grad = None
                f().backward(do)

            ms = time_ms(fwd_bwd)
            emit(bench="sdpa", backend=backend, gqa=gqa, shape=[b, hq, hkv, s, d], phase="fwd+bwd", ms=ms,
                 tflops=3.5 * fwd_flops / ms / 1e9)
        except RuntimeError as e:
            emit(bench="sdpa", backend=backend, gqa=gqa, error=str(e).splitlines()[0][:300])

    # The reference: the flash backend (FlashAttention-2). Then whatever SDPA picks by
    # default on this card (cuDNN attention on Hopper, where available), for information.
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        for gqa in ["native", "repeat_kv"]:
            measure("flash", gqa)
    measure("default", "native")


def cross_entropy():
    n, hidden, vocab = 4094, 4096, 128256
    flops = 2 * n * hidden * vocab
    h = torch.randn(n, hidden, dtype=torch.bfloat16, device=DEV).requires_grad_()
    w = (torch.randn(vocab, hidden, dtype=torch.bfloat16, device=DEV) * 0.02)
    labels = torch.randint(0, vocab, (n,), device=DEV)
    f32_logits = n * vocab * 4

    variants = {
        # transformers' LlamaForCausalLM: bf16 logits upcast to f32, then the loss.
        "materialized_f32": lambda: F.cross_entropy((h @ w.t()).float(), labels),
        "materialized_bf16": lambda: F.cross_entropy(h @ w.t(), labels),
    }
    for name, f in variants.items():
        with torch.no_grad():
            ms = time_ms(f, reps=10)
        emit(bench="cross_entropy", variant=name, phase="fwd", rows=n, vocab=vocab, ms=ms,
             tflops=flops / ms / 1e9)

        def fwd_bwd():
            h.grad = None
            f().backward()

        ms = time_ms(fwd_bwd, reps=10)
        h.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        h.grad = None
        emit(bench="cross_entropy", variant=name, phase="fwd+bwd", rows=n, vocab=vocab, ms=ms,
             tflops=2 * flops / ms / 1e9, peak_extra_bytes=peak, f32_logits_bytes=f32_logits,
             ratio=peak / f32_logits)


if __name__ == "__main__":
    emit(bench="env", torch=torch.__version__, cuda=torch.version.cuda)
    for step in (copy_bandwidth, matmul, attention, cross_entropy):
        try:
            step()
        except Exception as e:  # one failing part must not hide the others
            emit(bench=step.__name__, error=f"{type(e).__name__}: {e}"[:300])
        torch.cuda.empty_cache()
