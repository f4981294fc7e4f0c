"""Section 1 of summary.md: the Phase 2 family p with its Monte Carlo error, and 'undecided' when it can flip."""

from __future__ import annotations

from common.datadir import Phase2Null, TopLatent
from common.statistics.stats import monte_carlo_verdict
from phase3_validation.summary import _null_section


def _top(direction: str, layer: int, latent: int, separation: float, p_family: float) -> TopLatent:
    return TopLatent(direction=direction, rank=1, layer=layer, latent=latent, separation_score=separation,
                     p_family=p_family, f_correct=0.5, f_incorrect=0.1)


def _doc(p_correct: float, p_incorrect: float, n_perm: int) -> tuple[Phase2Null, dict[str, TopLatent | None]]:
    mc = {"correct": monte_carlo_verdict(p_correct, n_perm), "incorrect": monte_carlo_verdict(p_incorrect, n_perm)}
    top: dict[str, TopLatent | None] = {d: _top(d, 3, 7 if d == "correct" else 9, 0.4, mc[d]["p"]) for d in mc}
    null = Phase2Null({"n_permutations": n_perm, "seed": 1, "n_latents_in_family": 1234, "mc_verdicts": mc,
                       "beats_null": {d: mc[d]["decision"] == "below" for d in mc}})
    return null, top


def test_undecided_verdict_says_how_many_more_shuffles():
    text = "\n".join(_null_section(*_doc(0.043, 0.6, 2000)))
    more = monte_carlo_verdict(0.043, 2000)["more_shuffles_needed"]
    assert "out of 1234 unflagged latents" in text and "one family for both directions" in text
    assert f"| correct | L3/7 | 0.400 | 0.043 +- 0.0045 | undecided at this number of shuffles (about {more} more" in text
    assert "| incorrect | L3/9 | 0.400 | 0.6 +- 0.011 | **no** |" in text
    assert "The correct-preferring latent is undecided at 2000 shuffles" in text
    assert "No incorrect-preferring latent beat the shuffled-label null** out of 1234 unflagged latents" in text


def test_decided_verdict_is_a_plain_yes():
    text = "\n".join(_null_section(*_doc(0.001, 0.3, 2000)))
    assert "| correct | L3/7 | 0.400 | 0.001 +- 0.00071 | yes |" in text
    assert not any("undecided" in line for line in text.splitlines() if line.startswith("| ") or "**" in line)


def test_results_without_monte_carlo_fields_still_render():
    null = Phase2Null({"n_permutations": 50, "seed": 7, "beats_null": {"correct": True, "incorrect": False}})
    text = "\n".join(_null_section(null, {"correct": _top("correct", 1, 2, 0.5, 0.02), "incorrect": None}))
    assert "| correct | L1/2 | 0.500 | 0.02 | yes |" in text and "| incorrect | none |" in text
