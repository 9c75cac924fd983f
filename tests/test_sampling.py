"""SamplingParams validation and `warp_logits`, the one transform shared by drafts and targets."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from specdec.errors import InputError

from specdec.sampling import SamplingParams, TorchRandom, _nucleus, warp_logits


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", float("inf")), ("top_k", 0), ("top_p", 0.0),
    ("top_p", 1.5), ("max_new_tokens", 0), ("max_new_tokens", -3), ("stop_token_ids", (-1,)),
    ("stop_strings", ("",)), ("tempreature", 1.0),
])
def test_invalid_sampling_params_are_refused(field, value):
    with pytest.raises(ValidationError):
        SamplingParams(**{field: value})


def test_replace_validates_and_keeps_other_fields():
    params = SamplingParams(temperature=0.7, top_k=5, max_new_tokens=9)
    assert params.replace(top_p=0.5) == SamplingParams(temperature=0.7, top_k=5, top_p=0.5, max_new_tokens=9)
    with pytest.raises(InputError, match="invalid sampling parameters: max_new_tokens: Input should be "
                                         "greater than or equal to 1"):
        params.replace(max_new_tokens=0)


def test_warp_needs_a_temperature():
    with pytest.raises(ValueError, match="temperature > 0"):
        warp_logits(torch.zeros(3), SamplingParams())


logit_rows = st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=40).map(torch.tensor)


@given(logits=logit_rows, temperature=st.floats(0.05, 3.0), top_k=st.none() | st.integers(1, 50),
       top_p=st.floats(0.05, 1.0))
def test_warp_matches_hugging_face_sampling(logits, temperature, top_k, top_p):
    """Our warp is what `generate(do_sample=True)` samples from (temperature, top-k, top-p)."""
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    ours = warp_logits(logits, params)
    scores = TemperatureLogitsWarper(temperature)(None, logits[None].clone())
    if top_k is not None:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    theirs = torch.softmax(scores, -1)[0]
    # tokens exactly at the top-p boundary may be kept by one and dropped by the other only on ties
    if not torch.allclose(ours, theirs, atol=1e-5):
        sorted_probs = torch.softmax(logits / temperature, -1).sort(descending=True).values
        assume_tie = bool((sorted_probs[1:] == sorted_probs[:-1]).any())
        assert assume_tie, (ours, theirs)
    assert torch.isclose(ours.sum(), torch.tensor(1.0), atol=1e-5)


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    assert (warp_logits(logits, SamplingParams(temperature=1.0, top_k=2)) > 0).tolist() == [True, True, False, False, False]
    probs = torch.softmax(logits, -1)
    kept = warp_logits(logits, SamplingParams(temperature=1.0, top_p=float(probs[0]) + 1e-3)) > 0
    assert kept.tolist() == [True, True, False, False, False]


def test_torch_random_is_reproducible_and_exact_at_the_edges():
    first, second = TorchRandom(7), TorchRandom(7)
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    assert [first.categorical(probs) for _ in range(20)] == [second.categorical(probs) for _ in range(20)]
    assert all(first.categorical(probs) != 1 for _ in range(200))
    assert first.bernoulli(torch.tensor([1.0, 0.0, 1.0])) == [True, False, True]


@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 8.0), top_p=st.floats(0.05, 0.999))
def test_nucleus_from_growing_topk_equals_a_full_sort(seed, scale, top_p):
    """The CPU fast path (candidates from topk) keeps exactly the tokens a full sort keeps."""
    logits = torch.randn(3, 3000, generator=torch.Generator().manual_seed(seed)) * scale
    probs = torch.softmax(logits, -1)
    sorted_probs, order = probs.sort(-1, descending=True)
    keep_sorted = (sorted_probs.cumsum(-1) - sorted_probs) < top_p
    keep_sorted[:, 0] = True
    expected = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
    assert torch.equal(_nucleus(probs, top_p), expected)
