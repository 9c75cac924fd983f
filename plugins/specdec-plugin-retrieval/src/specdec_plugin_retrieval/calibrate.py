"""`node_cost: auto`: measure what verifying a draft costs the target, once.

The cost model (`adaptive.CostModel`) needs the verification cost of a draft of m nodes as a
multiple of a plain one-token step. It depends on the model, the device and the dtype, and on a
CPU it is far from linear in m: for the default model in float32 on 2 cores, 1 node costs 1.3
plain steps, 8 nodes 1.8 and 32 nodes 2.5 (a matrix-vector product turns into a matrix product
at the first node); in bfloat16 with AMX, or on a GPU, the whole curve stays near 1
(`benchmarks/verify_cost.py` prints it). This module times the target the way a decoding step
uses it, a forward over the pending token plus a chain of m draft tokens on a cache of
`CONTEXT_TOKENS` committed tokens, for each m in `DRAFT_SIZES`, and returns the curve. About three
seconds on a CPU, once per model per process.
"""

from __future__ import annotations

import statistics
import time
import weakref

import torch

from specdec.draft import Draft
from specdec.verifiers.hf import HFVerifier
from specdec_plugin_retrieval.adaptive import CostModel

#: Draft sizes the cost is measured at; the cost model interpolates between them.
DRAFT_SIZES = (1, 2, 4, 8, 16, 32, 64)
#: Committed tokens in the cache while measuring (a mid-length Spec-Bench prompt and answer).
CONTEXT_TOKENS = 512
#: Timed forwards per size (after one warm-up each); the median is used.
REPEATS = 3

_measured: "weakref.WeakKeyDictionary[torch.nn.Module, CostModel]" = weakref.WeakKeyDictionary()


def measure_cost_model(model: torch.nn.Module) -> CostModel:
    """The target's verification cost curve (see the module docstring), cached per model."""
    if model not in _measured:
        _measured[model] = CostModel(curve=_measure(model))
    return _measured[model]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(model: torch.nn.Module) -> tuple[tuple[int, float], ...]:
    verifier = HFVerifier(model, eos_token_ids=())
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    vocab = verifier.vocab_size
    context = min(CONTEXT_TOKENS, verifier.runner.max_positions - DRAFT_SIZES[-1] - 2)
    prompt = torch.randint(0, vocab, (context,), generator=generator).tolist()
    verifier.start(len(prompt), DRAFT_SIZES[-1] + 2)
    verifier.verify(prompt, Draft.empty())
    verifier.commit(len(prompt), ())
    times: dict[int, list[float]] = {size: [] for size in (0,) + DRAFT_SIZES}
    for repeat in range(REPEATS + 1):
        for size in times:  # interleaved, so that load changes hit every size alike
            draft = Draft.chain(torch.randint(0, vocab, (size,), generator=generator).tolist()) \
                if size else Draft.empty()
            _sync(device)
            tic = time.perf_counter()
            verifier.verify([prompt[-1]], draft)
            _sync(device)
            elapsed = time.perf_counter() - tic
            verifier.runner.rollback(len(prompt))  # forget the forward: the cache stays at the context
            if repeat:  # the first round warms up
                times[size].append(elapsed)
    plain = statistics.median(times[0])
    curve, floor = [], 1.0
    for size in DRAFT_SIZES:  # a larger draft never costs less: smooth out timing noise
        floor = max(floor, statistics.median(times[size]) / plain)
        curve.append((size, round(floor, 4)))
    return tuple(curve)
