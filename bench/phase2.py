"""Benchmark: Phase 2 scoring, vectorised over all latents of a layer vs a per-latent loop.

Why: docs/design.md section 5 claims Phase 2 is vectorised over all latents of a
layer at once; this script measures that claim side by side on the same data
and prints a ratio (absolute times on these machines are noise).

Setup, size-true for GemmaScope on gemma-2-2b: per layer a JumpReLU SAE
(SAE Lens's own class) with d_in 2304 and d_sae 16384, random weights, and
per-latent thresholds placed so each latent fires on about --fire-rate of
the (random, standard normal) inputs; --tasks random activation vectors and
random labels. One layer's SAE exists at a time, as in the real phase.

- vectorised (the project's code): ``encode`` + ``latent_scores`` +
  ``PermutationNull.update`` over all d_sae latents of the layer;
- naive: for each latent of a subset, its firing shares, means and scipy
  Welch t, then for each permutation its separation score and the running
  maximum, in Python loops. Encoding is NOT counted against the naive way
  (it reuses the vectorised encoding), so the ratio is conservative.

Both ways use the same permutations, and the script checks that they agree on
the subset before printing timings.

Usage (from the repo root): python3 -m bench.phase2 [--layers N] [--tasks N] [--permutations N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import stats as sps

from common.saes.loading import encode
from common.statistics.stats import PermutationNull, latent_scores

FULL_LAYERS, FULL_D_SAE = 26, 16384


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=FULL_LAYERS)
    p.add_argument("--tasks", type=int, default=500)
    p.add_argument("--permutations", type=int, default=200)
    p.add_argument("--d-in", type=int, default=2304)
    p.add_argument("--d-sae", type=int, default=FULL_D_SAE)
    p.add_argument("--naive-latents", type=int, default=40, help="latents per layer scored the naive way")
    p.add_argument("--fire-rate", type=float, default=0.03, help="share of inputs each latent fires on")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_layer_sae(d_in: int, d_sae: int, layer: int, fire_rate: float, seed: int):
    """A JumpReLU SAE with SAE Lens's random init and thresholds giving ``fire_rate`` on N(0, I) inputs.

    With b_dec = b_enc = 0 and x ~ N(0, I), latent j's pre-activation is
    N(0, ||W_enc[:, j]||^2); a threshold of z_(1 - rate) * ||W_enc[:, j]|| makes
    it fire on ``fire_rate`` of inputs.
    """
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed * 1000 + layer)
    cfg = JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_post"))
    sae = JumpReLUSAE(cfg)
    z = float(sps.norm.ppf(1.0 - fire_rate))
    with torch.no_grad():
        sae.threshold.copy_(z * sae.W_enc.norm(dim=0))
    sae.requires_grad_(False)
    return sae


def naive_layer(
    acts: np.ndarray,
    correct: np.ndarray,
    perms: np.ndarray,
    null_c: np.ndarray,
    null_i: np.ndarray,
) -> dict[str, np.ndarray]:
    """The per-latent way: one latent at a time, one permutation at a time (updates null_c/null_i in place)."""
    d = acts.shape[1]
    out = {k: np.empty(d) for k in ("f_correct", "f_incorrect", "mean_correct", "mean_incorrect", "t_stat")}
    for j in range(d):
        a = acts[:, j].astype(np.float64)
        fire = a > 0
        out["f_correct"][j] = fire[correct].mean()
        out["f_incorrect"][j] = fire[~correct].mean()
        out["mean_correct"][j] = a[correct].mean()
        out["mean_incorrect"][j] = a[~correct].mean()
        out["t_stat"][j] = sps.ttest_ind(a[correct], a[~correct], equal_var=False).statistic
        for p in range(perms.shape[0]):
            labels = perms[p]
            s = fire[labels].mean() - fire[~labels].mean()
            if s > null_c[p]:
                null_c[p] = s
            if -s > null_i[p]:
                null_i[p] = -s
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    rng = np.random.default_rng(args.seed)
    correct = rng.random(args.tasks) < 0.4
    k = min(args.naive_latents, args.d_sae)
    print(
        f"phase 2 bench: {args.layers} layers x {args.d_sae} latents, d_in {args.d_in}, {args.tasks} tasks "
        f"({int(correct.sum())} correct), {args.permutations} permutations, naive on {k} latents/layer; "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )

    t0 = time.perf_counter()
    import sae_lens  # noqa: F401  (imported once here so its ~10 s import is not counted as layer 0's work)

    print(f"  import sae_lens {time.perf_counter() - t0:.1f}s", flush=True)
    null = PermutationNull(correct, n_permutations=args.permutations, seed=args.seed)
    sub_null = PermutationNull(correct, n_permutations=args.permutations, seed=args.seed)  # same permutations
    perms = null.shuffled.T.astype(bool)  # (P, n)
    naive_c = np.full(args.permutations, -np.inf)
    naive_i = np.full(args.permutations, -np.inf)
    t_make = t_encode = t_scores = t_null = t_naive = 0.0
    fire_rates = []

    for layer in range(args.layers):
        t0 = time.perf_counter()
        sae = make_layer_sae(args.d_in, args.d_sae, layer, args.fire_rate, args.seed)
        x = rng.standard_normal((args.tasks, args.d_in), dtype=np.float32)
        t1 = time.perf_counter()
        acts = encode(sae, x)
        t2 = time.perf_counter()
        scores = latent_scores(acts, correct)
        t3 = time.perf_counter()
        null.update(acts > 0)
        t4 = time.perf_counter()
        naive = naive_layer(acts[:, :k], correct, perms, naive_c, naive_i)
        t5 = time.perf_counter()
        t_make += t1 - t0
        t_encode += t2 - t1
        t_scores += t3 - t2
        t_null += t4 - t3
        t_naive += t5 - t4
        fire_rates.append(float((acts > 0).mean()))

        # Same answers on the subset, or the timings mean nothing.
        sub_null.update(acts[:, :k] > 0)
        for key, value in naive.items():
            np.testing.assert_allclose(scores[key][:k], value, rtol=1e-7, atol=1e-12, err_msg=key)
        print(
            f"  layer {layer:2d}: make SAE {t1 - t0:5.2f}s  encode {t2 - t1:5.2f}s  scores {t3 - t2:5.2f}s  "
            f"null {t4 - t3:5.2f}s  | naive {k} latents {t5 - t4:5.2f}s  (fire rate {fire_rates[-1]:.3f})",
            flush=True,
        )
        del sae, acts, x

    np.testing.assert_allclose(sub_null.null_max["correct"], naive_c, rtol=1e-12)
    np.testing.assert_allclose(sub_null.null_max["incorrect"], naive_i, rtol=1e-12)

    n_vec = args.layers * args.d_sae
    n_naive = args.layers * k
    t_vec = t_encode + t_scores + t_null
    rate_vec = n_vec / t_vec
    rate_naive = n_naive / t_naive
    full = FULL_LAYERS * FULL_D_SAE
    print("\nresults (subset scores and null maxima agree between the two ways)")
    print(f"  mean fire rate            {np.mean(fire_rates):.4f}")
    print(f"  vectorised: {n_vec} latents in {t_vec:.2f}s (encode {t_encode:.2f} + scores {t_scores:.2f} "
          f"+ null {t_null:.2f}) = {rate_vec:,.0f} latents/s")
    print(f"  naive:      {n_naive} latents in {t_naive:.2f}s (encoding not counted) = {rate_naive:,.1f} latents/s")
    rate_scoring = n_vec / (t_scores + t_null)
    print(f"  ratio vectorised / naive: {rate_vec / rate_naive:,.0f}x with encoding counted, "
          f"{rate_scoring / rate_naive:,.0f}x scoring alone ({rate_scoring:,.0f} latents/s)")
    print(f"  projected full run ({FULL_LAYERS} x {FULL_D_SAE} = {full} latents, {args.permutations} permutations):")
    print(f"    vectorised {full / rate_vec:8.1f} s  ({full / rate_vec / 60:.1f} min; plus loading 26 SAEs, "
          f"here creating them took {t_make / args.layers:.2f}s/layer)")
    print(f"    naive      {full / rate_naive:8.1f} s  ({full / rate_naive / 3600:.1f} h)")


if __name__ == "__main__":
    main()
