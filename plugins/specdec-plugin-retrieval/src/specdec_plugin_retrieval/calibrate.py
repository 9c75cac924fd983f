"""`node_cost: auto`: measure what one draft node costs the target's verification, once.

The cost model (`adaptive.CostModel`) needs the verification cost of one draft node as a fraction
of a plain one-token step. It depends on the model, the device and the dtype: about 0.12 for the
default model in float32 on 2 CPU cores, 0.01-0.02 in bfloat16 on a CPU with AMX or on a GPU
(`benchmarks/verify_cost.py` prints the whole curve). This module times the target the way a
decoding step uses it: a forward over the pending token alone, and over the pending token plus a
chain of `DRAFT_SIZE` draft tokens, on a cache of `CONTEXT_TOKENS` committed tokens, and returns the
slope. About a second on a CPU, once per model per process.
"""

from __future__ import annotations

import statistics
import time
import weakref

import torch

from specdec.draft import Draft
from specdec.verifiers.hf import HFVerifier

#: Draft size the slope is measured at (a typical prompt-lookup draft).
DRAFT_SIZE = 8
#: Committed tokens in the cache while measuring.
CONTEXT_TOKENS = 128
#: Timed forwards per size (after one warm-up each); the median is used.
REPEATS = 3

_measured: "weakref.WeakKeyDictionary[torch.nn.Module, float]" = weakref.WeakKeyDictionary()


def measure_node_cost(model: torch.nn.Module) -> float:
    """The verification cost of one draft node as a fraction of a plain step, in [0, 1]."""
    if model not in _measured:
        _measured[model] = _measure(model)
    return _measured[model]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(model: torch.nn.Module) -> float:
    verifier = HFVerifier(model, eos_token_ids=())
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    vocab = verifier.vocab_size
    prompt = torch.randint(0, vocab, (CONTEXT_TOKENS,), generator=generator).tolist()
    verifier.start(len(prompt), DRAFT_SIZE + 2)
    verifier.verify(prompt, Draft.empty())
    verifier.commit(len(prompt), ())
    times: dict[int, list[float]] = {0: [], DRAFT_SIZE: []}
    for repeat in range(REPEATS + 1):
        for size in times:  # interleaved, so that load changes hit both sizes alike
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
    plain, drafted = statistics.median(times[0]), statistics.median(times[DRAFT_SIZE])
    return min(max((drafted / plain - 1.0) / DRAFT_SIZE, 0.0), 1.0)
