"""The judging floor: how often FP32 keeps its own top-1 under one pixel level of input noise."""
from __future__ import annotations

import numpy as np
import pytest

from exporter.quantize.judging import Criterion, floor_sentence, noise_floor

STD = (0.229, 0.224, 0.225)


def _channel_means(x) -> np.ndarray:
    """A 3-class 'model': class c's logit is the mean of input channel c, run the way the
    exporter's runners read their input (``len`` and slices of 16)."""
    return np.concatenate([np.asarray(x[i:i + 16]).mean(axis=(2, 3)) * 100.0
                           for i in range(0, len(x), 16)])


def _samples(decisive: int, ties: int, size: int = 16) -> np.ndarray:
    """``decisive`` samples whose channel means differ by far more than the noise can move them,
    and ``ties`` whose three channels are identical (every class tied)."""
    rng = np.random.default_rng(1)
    far = np.zeros((decisive, 3, size, size), np.float32)
    far[np.arange(decisive), rng.integers(0, 3, decisive)] = 1.0  # margin 1.0 vs noise <= 0.02
    tied = np.repeat(rng.standard_normal((ties, 1, size, size)).astype(np.float32), 3, axis=1)
    return np.concatenate([far, tied])


def test_decisive_samples_never_flip_and_ties_flip_as_often_as_chance():
    assert noise_floor(_channel_means, _samples(100, 0), STD)["top1_agreement"] == 1.0
    floor = noise_floor(_channel_means, _samples(100, 300), STD)
    # a three-way tie keeps class 0 (argmax's pick on the clean input) in 1 of 3 noisy draws
    assert floor["samples"] == 400 and floor["pixel_levels"] == 1
    assert 0.25 + 0.75 / 3 - 0.06 < floor["top1_agreement"] < 0.25 + 0.75 / 3 + 0.06
    assert floor["kl_mean"] > 0


def test_the_noise_is_one_pixel_level_per_channel_in_normalized_units():
    seen = []

    def run(x):
        seen.append(np.concatenate([x[i:i + 3] for i in range(0, len(x), 3)]))
        return _channel_means(x)

    x = _samples(4, 4, size=64)
    noise_floor(run, x, STD, levels=2)
    moved = np.abs(seen[1] - seen[0]).max(axis=(0, 2, 3))
    bound = 2 / 255 / np.asarray(STD)
    assert (moved <= bound * (1 + 1e-5)).all() and (moved > 0.99 * bound).all(), (moved, bound)


def test_the_floor_says_when_it_is_below_the_budget_and_refuses_unfit_inputs():
    x = _samples(100, 300)
    strict = Criterion("agreement", 0.95)
    assert noise_floor(_channel_means, x, STD, criterion=strict)["below_budget"] is True
    assert noise_floor(_channel_means, x, STD, criterion=Criterion("agreement", 0.3))["below_budget"] is False
    assert "below_budget" not in noise_floor(_channel_means, x, STD, criterion=Criterion("accuracy_drop", 1.0))
    assert noise_floor(_channel_means, x, (0.5, 0.5), criterion=strict) is None  # 2 std, 3 channels
    assert noise_floor(_channel_means, x[:0], STD) is None
    floor = noise_floor(_channel_means, x[:100], (0.5,))  # one std for every channel
    assert floor_sentence(floor) == ("FP32 itself keeps its top-1 on 1.000 of these samples under "
                                     "+-1 pixel level of input noise")
    assert floor_sentence(None) == ""


@pytest.mark.parametrize("levels, word", [(1, "level"), (2, "levels")])
def test_floor_sentence_counts_levels(levels, word):
    floor = noise_floor(_channel_means, _samples(10, 0), STD, levels=levels)
    assert floor_sentence(floor).endswith(f"+-{levels} pixel {word} of input noise")


def test_the_noisy_samples_are_made_a_slice_at_a_time():
    """Memory does not grow with the judging set: the noisy copy never exists whole."""
    import tracemalloc

    x = np.zeros((2000, 3, 32, 32), np.float32)  # 24.6 MB
    x[:, 0] = 1.0
    tracemalloc.start()
    floor = noise_floor(_channel_means, x, STD, ref=_channel_means(x))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert floor["top1_agreement"] == 1.0 and floor["samples"] == 2000
    assert peak < 4 * 1024 * 1024, peak  # a few 16-sample slices and the logits, not 24.6 MB
