"""GPU check of the steering path: ``steer`` + batched greedy generation on CUDA in bf16.

Why: Phase 3's steering is tested on the CPU in float32; on a GPU the model
runs in bf16 and the vector must be cast and placed on the device. This checks,
on any local model folder (the tiny demo model will do):
- a zero vector reproduces the unsteered greedy outputs exactly, for each hook point;
- a large vector changes them;
- the position policy "prompt" steers only the prefill.
Imports only torch and transformers (the GPU machine has no sae_lens/transformer_lens).

Run from the repository root, as a module:
    python3 -m bench.gpu_steering_check MODEL_DIR [--device cuda]
"""

from __future__ import annotations

import argparse
import sys

import torch

from common.modeling.generation import GenerationConfig, generate_batches
from common.modeling.models import default_dtype, load_model_and_tokenizer, resolve_device, text_sizes
from common.modeling.steering import steer
from common.prompts import build_prompt

PROMPTS = [
    build_prompt("Write a function to add two to a number.", ["assert add_two(1) == 3", "assert add_two(0) == 2", "assert add_two(-2) == 0"]),
    build_prompt("Write a function to reverse a list.", ["assert reverse_list([1, 2]) == [2, 1]", "assert reverse_list([]) == []", "assert reverse_list([3]) == [3]"]),
    build_prompt("Write a function to count the vowels in a string.", ["assert count_vowels('abc') == 1", "assert count_vowels('') == 0", "assert count_vowels('aei') == 3"]),
]


def texts(model, tokenizer, cfg) -> list[str]:
    out = {r.index: r.generated_text for b in generate_batches(model, tokenizer, PROMPTS, [], cfg) for r in b}
    return [out[i] for i in range(len(PROMPTS))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    model, tokenizer = load_model_and_tokenizer(args.model_dir, device, default_dtype(device))
    cfg = GenerationConfig(max_new_tokens=24, batch_size=len(PROMPTS))
    base = texts(model, tokenizer, cfg)
    d = text_sizes(model).d_model
    ok = True
    for hook_point in ("resid_pre", "resid_mid", "resid_post"):
        for positions in ("prompt", "all"):
            with steer(model, 1, torch.zeros(d), hook_point, positions):
                zero = texts(model, tokenizer, cfg)
            big = torch.randn(d, generator=torch.Generator().manual_seed(0)) * 50
            with steer(model, 1, big, hook_point, positions) as adder:
                steered = texts(model, tokenizer, cfg)
            same, changed = zero == base, sum(a != b for a, b in zip(steered, base))
            ok &= same and changed > 0
            print(f"{hook_point:10s} {positions:6s} zero vector identical: {same}; large vector changed {changed}/{len(base)}; steered passes {adder.calls}")
    print(f"device {device}, dtype {next(model.parameters()).dtype}: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
