"""``run.py test-gpu``: what devices, dtypes and memory a run would use, and a one-batch smoke test.

Why: before a night-long Phase 1, a researcher wants to know in one minute
that the GPU is seen, bf16 works, the model loads (gated access, disk), and
batched generation with activation capture produces sane shapes.
"""

from __future__ import annotations

import logging
import time

import torch

from common.config import PipelineConfig
from common.modeling.generation import GenerationConfig, generate_batches
from common.modeling.models import default_dtype, load_model_and_tokenizer, num_layers, resolve_device
from common.prompts import build_prompt

logger = logging.getLogger(__name__)

SMOKE_PROBLEMS = [
    ("Write a function to add two numbers.", ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"]),
    ("Write a function to reverse a string.", ["assert reverse('ab') == 'ba'", "assert reverse('') == ''", "assert reverse('x') == 'x'"]),
    ("Write a function to find the maximum of a list.", ["assert max_of([1, 3, 2]) == 3", "assert max_of([5]) == 5", "assert max_of([-1, -2]) == -1"]),
    ("Write a function to count vowels in a string.", ["assert count_vowels('hello') == 2", "assert count_vowels('xyz') == 0", "assert count_vowels('aei') == 3"]),
]


def describe_devices() -> list[str]:
    lines = [f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            lines.append(
                f"  cuda:{i} {props.name}: {total / 2**30:.1f} GiB total, {free / 2**30:.1f} GiB free, "
                f"compute {props.major}.{props.minor}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"
            )
    else:
        lines.append("  no CUDA GPU visible: Phase 1 would run on the CPU (float32), which is very slow for gemma-2-2b")
    return lines


def test_gpu_cli(cfg: PipelineConfig) -> int:
    for line in describe_devices():
        print(line)
    device = resolve_device(cfg.device)
    dtype = default_dtype(device)
    print(f"chosen device {device}, dtype {dtype}")
    t0 = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(cfg.model, device, dtype)
    print(f"loaded {cfg.model}: {num_layers(model)} layers in {time.perf_counter() - t0:.1f} s")
    n = max(1, min(cfg.batch_size or 2, len(SMOKE_PROBLEMS)))
    prompts = [build_prompt(text, tests) for text, tests in SMOKE_PROBLEMS[:n]]
    gen_cfg = GenerationConfig(max_new_tokens=32, batch_size=n)
    t0 = time.perf_counter()
    results = [r for batch in generate_batches(model, tokenizer, prompts, None, gen_cfg) for r in batch]
    elapsed = time.perf_counter() - t0
    tokens = sum(r.n_generated_tokens for r in results)
    shapes = {layer: vec.shape for layer, vec in results[0].activations.items()}
    dtypes = {str(vec.dtype) for r in results for vec in r.activations.values()}
    print(f"smoke test: {len(results)} prompts, {tokens} new tokens in {elapsed:.1f} s ({tokens / elapsed:.1f} tokens/s)")
    print(f"activations: {len(shapes)} layers, shape {next(iter(shapes.values()))}, dtype {', '.join(sorted(dtypes))}")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    for r in results[:2]:
        print(f"--- sample ({r.stop_reason}, {r.n_generated_tokens} tokens):\n{r.generated_text[:200]}")
    ok = len(results) == n and all(len(r.activations) == num_layers(model) for r in results) and dtypes == {"float32"}
    print("test-gpu: OK" if ok else "test-gpu: FAILED (see above)")
    return 0 if ok else 1
