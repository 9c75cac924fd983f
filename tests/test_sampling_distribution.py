"""Speculative sampling reproduces plain sampling (tests 4 and 5 of the core issue).

Each case draws NUM_SAMPLES seeded generations of MAX_NEW_TOKENS tokens from a tiny random model
and compares them with the exact distribution of plain sampling (computed by expanding the
model's conditionals): the joint distribution of the first two tokens and the marginal of each
later token (drafts reach depth 3, so every draft position is covered), each by a chi-square
goodness-of-fit test with cells expected fewer than 5 times pooled. ALPHA = 1e-3 is the
false-alarm rate of a whole case for a correct implementation (Bonferroni over its tests); the
seeds are fixed, so a run is reproducible. The power tests check that broken components are
rejected by the same check.
"""

import functools

import pytest
import torch

from specdec import BaseDrafter, Draft, RejectionSampling, SamplingParams
from specdec.drafters.draft_model import DraftModelDrafter
from specdec.sampling import warp_logits
from specdec.testing import AlwaysAccept, ModelTreeDrafter, check_sampling_distribution, perturbed_copy, tiny_llama

NUM_SAMPLES = 1000
ALPHA = 1e-3
MAX_NEW_TOKENS = 4


@functools.lru_cache(maxsize=None)
def target_model():
    return tiny_llama(5, vocab_size=8, init_std=0.1)


@functools.lru_cache(maxsize=None)
def draft_model():
    # different enough from the target that roughly half the draft tokens are rejected
    return perturbed_copy(target_model(), 0.6, seed=2)


def chain_drafter(target):
    return DraftModelDrafter(draft_model(), num_tokens=3)


def tree_drafter(mode):
    return lambda target: ModelTreeDrafter(draft_model(), (3, 1, 1), mode)


CASES = {
    "chain T=1": (chain_drafter, SamplingParams(temperature=1.0)),
    "chain T=0.7": (chain_drafter, SamplingParams(temperature=0.7)),
    "chain top-k": (chain_drafter, SamplingParams(temperature=1.0, top_k=4)),
    "chain top-p": (chain_drafter, SamplingParams(temperature=0.9, top_p=0.7)),
    "chain greedy drafts T=1": (lambda target: DraftModelDrafter(draft_model(), 3, greedy_draft=True),
                                SamplingParams(temperature=1.0)),
    "tree iid T=1": (tree_drafter("iid"), SamplingParams(temperature=1.0)),
    "tree without replacement top-p": (tree_drafter("without_replacement"),
                                       SamplingParams(temperature=0.7, top_p=0.9)),
    "tree deterministic top-k": (tree_drafter("top"), SamplingParams(temperature=1.0, top_k=5)),
}


#: Cases whose property a faster test also covers, run in the slow tier: each warp (temperature,
#: top-k, top-p) is checked exactly for rejection sampling in test_policy_exact and through the
#: engine by "chain T=1" and the drafters' own distribution tests; deterministic drafts (greedy
#: chains, top trees) by the Medusa, lookahead and Token Recycling tests; draws without
#: replacement by the exact check.
SLOW_CASES = {"chain T=0.7", "chain top-k", "chain top-p", "chain greedy drafts T=1",
              "tree without replacement top-p", "tree deterministic top-k"}


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.slow) if case in SLOW_CASES else case
                                  for case in CASES])
def test_speculative_sampling_matches_plain_sampling(case):
    make_drafter, params = CASES[case]
    results = check_sampling_distribution(make_drafter, target_model(), params, num_samples=NUM_SAMPLES,
                                          max_new_tokens=MAX_NEW_TOKENS, alpha=ALPHA)
    assert set(results) == {"tokens 1-2", "token 3", "token 4"}
    assert results["tokens 1-2"].degrees_of_freedom >= 10  # many cells compared, not a pooled few


class GreedyDraftReportingQ(BaseDrafter):
    """Drafts argmax tokens but reports the warped softmax as q, the distribution they were not
    drawn from: the bug of HF transformers #32867 and #47932."""

    def propose(self, context):
        tokens, rows = [], []
        for _ in range(min(2, context.max_depth)):
            with torch.inference_mode():
                logits = draft_model()(torch.tensor([list(context.tokens) + tokens])).logits[0, -1]
            rows.append(warp_logits(logits, context.params))
            tokens.append(int(logits.argmax()))
        return Draft.chain(tokens, torch.stack(rows))


class WrongQAtDepthThree(DraftModelDrafter):
    """Samples correctly but reports a uniform q for its third token only: a bug that only the
    tokens after the first two can reveal."""

    def propose(self, context):
        draft = super().propose(context)
        if draft.q is None or draft.num_nodes < 3:
            return draft
        q = draft.q.clone()
        q[2] = 1.0 / q.shape[1]  # uniform: accepts the third token far too often
        self._last_draft = Draft(draft.tokens, draft.parents, q)
        return self._last_draft


# The fast tier keeps the subtlest bug (depth 3); the drafters' own tests catch a broken policy
# and a wrong q with the same check (Medusa, Token Recycling, low_precision).
@pytest.mark.parametrize("make_drafter, policy", [
    pytest.param(chain_drafter, AlwaysAccept(), marks=pytest.mark.slow),
    pytest.param(lambda target: GreedyDraftReportingQ(), RejectionSampling(), marks=pytest.mark.slow),
    (lambda target: WrongQAtDepthThree(draft_model(), 3), RejectionSampling()),
], ids=["policy-always-accepts", "drafter-reports-wrong-q", "wrong-q-at-depth-3"])
def test_broken_components_fail_the_distribution_test(make_drafter, policy):
    with pytest.raises(AssertionError, match="does not match plain sampling"):
        check_sampling_distribution(make_drafter, target_model(), SamplingParams(temperature=1.0),
                                    policy=policy, num_samples=NUM_SAMPLES,
                                    max_new_tokens=MAX_NEW_TOKENS, alpha=ALPHA)
