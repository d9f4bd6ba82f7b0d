"""GPU throughput: a ~0.5B-parameter Llama trained with LoRA and full fine-tuning in bf16.

Run:  .venv/bin/python -m bench.gpu [--steps 30] [--warmup 5] [--batch 16] [--seq 1024]
      .venv/bin/python -m bench.gpu --cpu-smoke     (tiny model on CPU: checks the script itself)

Prepared for a lent GPU; never required. Without CUDA it prints
"no CUDA device: skipped" and exits 0.

Self-contained: the model is a randomly initialised LlamaForCausalLM built
from a LlamaConfig in code (no hub), saved once into a temporary
FINETUNE_HOME/models, then loaded and trained through the studio's own code:
finetune.modeling.load_model (LoRA keeps the base in bf16; full fine-tuning
keeps fp32 master weights under bf16 autocast) and finetune.training's
_build_trainer (same TrainingArguments, collator and event callback as a
studio run). The data are random token ids, every row exactly --seq tokens.

Per method: tokens/s over the steps after --warmup (CUDA-synchronised), MFU =
6 x N x tokens/s / peak bf16 FLOP/s, with N the parameters that do matmuls
(all but the input embedding; attention score FLOPs left out, so MFU is a
slight underestimate), peak memory (torch.cuda.max_memory_allocated), and
memory allocated / reserved after dropping everything, gc.collect() and
torch.cuda.empty_cache(). Peak FLOP/s: env BENCH_PEAK_TFLOPS, else a table by
device name (H100/H200 989 TFLOP/s dense bf16). For LoRA 6N overstates the
work (frozen weights get no weight gradients, ~4N), so both are shown.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Figure, print_progress, write_table

# Dense bf16 tensor-core peaks (TFLOP/s), matched against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = [
    ("H200", 989.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0),
    ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
    ("RTX 4090", 165.0), ("A6000", 155.0),
]

FULL_SHAPE = {  # ~0.48B parameters
    "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 32,
    "num_attention_heads": 16, "num_key_value_heads": 16, "max_position_embeddings": 4096,
}
SMOKE_SHAPE = {
    "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256,
}


def peak_tflops(device_name: str) -> float | None:
    if os.environ.get("BENCH_PEAK_TFLOPS"):
        return float(os.environ["BENCH_PEAK_TFLOPS"])
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def build_model(folder: Path, shape: dict, cuda: bool) -> tuple[int, int]:
    """A random Llama saved as safetensors (fp32) with the bundled tokenizer; returns (total, matmul) params."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from bench.common import shared_model_dir

    torch.manual_seed(0)
    config = LlamaConfig(**shape, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    matmul = total - model.get_input_embeddings().weight.numel()
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(shared_model_dir()).save_pretrained(folder)
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return total, matmul


def train_once(method: str, model_path: Path, home: Path, args, vocab: int, cuda: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from finetune import modeling, training
    from finetune.config import TrainConfig
    from finetune.events import EventLog
    from finetune.settings import Settings

    settings = Settings(home=home)
    config = TrainConfig(dataset_id="random", base_model=str(model_path), method=method, max_steps=args.steps,
                         per_device_train_batch_size=args.batch, max_seq_length=args.seq,
                         learning_rate=2e-4 if method == "lora" else 2e-5, logging_steps=10, save_steps=10**6)
    plan = modeling.pick_device()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = modeling.load_model(str(model_path), config, plan, settings)
    trainable, total = modeling.count_parameters(model)
    tokenizer = modeling.load_tokenizer(str(model_path), settings)
    g = torch.Generator().manual_seed(1)
    rows = args.batch * (args.steps + 1)
    ids = torch.randint(3, vocab, (rows, args.seq), generator=g).tolist()
    dataset = Dataset.from_dict({"input_ids": ids, "labels": ids})
    run_dir = Path(tempfile.mkdtemp(prefix=f"gpu-{method}-", dir=home))
    ctx = training.RunContext(run_dir, EventLog(run_dir / "events.jsonl"), lambda: False, lambda _f: None)
    trainer = training._build_trainer(config, model, tokenizer, dataset, None, ctx, plan)

    class Clock(TrainerCallback):
        t0: float | None = None
        t1: float | None = None

        def on_step_end(self, a, state, control, **kw):
            if state.global_step in (args.warmup, args.steps):
                if cuda:
                    torch.cuda.synchronize()
                if state.global_step == args.warmup:
                    self.t0 = time.perf_counter()
                else:
                    self.t1 = time.perf_counter()

    clock = Clock()
    trainer.add_callback(clock)
    t_start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t_start
    timed_steps = args.steps - args.warmup
    tokens_per_s = timed_steps * args.batch * args.seq / (clock.t1 - clock.t0)
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
    events = [e for e in ctx.events.iter_all() if e["level"] == "METRIC"]
    first_loss, last_loss = events[0].get("loss"), events[-1].get("loss")
    del trainer, model, dataset, ids, clock
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    after_alloc = torch.cuda.memory_allocated() / 2**20 if cuda else float("nan")
    after_reserved = torch.cuda.memory_reserved() / 2**20 if cuda else float("nan")
    return {"method": method, "trainable": trainable, "total": total, "tokens_per_s": tokens_per_s, "peak_mb": peak_mb,
            "after_alloc_mb": after_alloc, "after_reserved_mb": after_reserved, "wall_s": wall,
            "loss": f"{first_loss:.3f} → {last_loss:.3f}" if first_loss is not None and last_loss is not None else "n/a"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU, to test this script")
    args = parser.parse_args()
    if not 0 < args.warmup < args.steps:
        parser.error("--warmup must be between 1 and --steps - 1")

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print("no CUDA device: skipped")
        return 0
    if args.cpu_smoke:
        args.steps, args.warmup, args.batch, args.seq = min(args.steps, 6), min(args.warmup, 2), 2, 64
    shape = SMOKE_SHAPE if args.cpu_smoke else FULL_SHAPE
    device = torch.cuda.get_device_name(0) if cuda else "CPU (smoke test)"
    peak = peak_tflops(device) if cuda else None
    home = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    model_path = home / "models" / "random-llama"
    t0 = time.perf_counter()
    total, matmul = build_model(model_path, shape, cuda)
    print_progress(f"{device}: built a {total / 1e6:.0f}M-parameter Llama in {time.perf_counter() - t0:.1f} s")
    results = []
    for method in args.methods.split(","):
        print_progress(f"training {method} for {args.steps} steps")
        results.append(train_once(method, model_path, home, args, shape["vocab_size"], cuda))
        r = results[-1]
        print_progress(f"{method}: {r['tokens_per_s']:,.0f} tokens/s, peak {r['peak_mb']:,.0f} MB, "
                       f"after cleanup {r['after_alloc_mb']:,.1f} MB allocated, loss {r['loss']}")

    rows, summary = [], []
    for r in results:
        flops = 6 * matmul * r["tokens_per_s"]
        mfu = flops / (peak * 1e12) if peak else None
        mfu_text = "n/a (unknown peak)" if mfu is None else f"{mfu:.1%}"
        if r["method"] == "lora" and mfu is not None:
            mfu_text += f" (4N: {4 * matmul * r['tokens_per_s'] / (peak * 1e12):.1%})"
        clean = r["after_alloc_mb"] < 64 if cuda else None
        rows.append([r["method"], f"{r['trainable'] / 1e6:,.1f}M of {r['total'] / 1e6:,.0f}M", f"{r['tokens_per_s']:,.0f}",
                     mfu_text, f"{r['peak_mb']:,.0f}", f"{r['after_alloc_mb']:,.1f} / {r['after_reserved_mb']:,.1f}",
                     r["loss"], f"{r['wall_s']:.1f}"])
        summary.append(Figure(f"gpu ({device}): {r['method']} tokens/s, MFU, peak memory",
                              f"{r['tokens_per_s']:,.0f}, {mfu_text}, {r['peak_mb']:,.0f} MB", "(report only)", None))
        summary.append(Figure(f"gpu: {r['method']} memory allocated after cleanup", f"{r['after_alloc_mb']:,.1f} MB",
                              "near 0 (< 64 MB)", clean))
    write_table(
        "gpu", f"GPU training throughput: random {total / 1e6:.0f}M-parameter Llama, bf16 ({device})",
        ["method", "trainable params", "tokens/s", "MFU (6N)", "peak MB", "after cleanup MB (alloc / reserved)",
         "loss first → last", "wall s"],
        rows,
        notes=(f"{args.steps} steps, batch {args.batch} × {args.seq} tokens (random ids), tokens/s over steps "
               f"{args.warmup + 1}-{args.steps}. N = {matmul / 1e6:.0f}M matmul parameters; peak "
               f"{'n/a' if peak is None else f'{peak:.0f} TFLOP/s dense bf16'}. Studio path: modeling.load_model + "
               "training._build_trainer (LoRA r=16 all-linear, base in bf16; full: fp32 weights, bf16 autocast)."),
        summary=summary,
        save=not args.cpu_smoke,  # a smoke test's figures mean nothing: print only
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
