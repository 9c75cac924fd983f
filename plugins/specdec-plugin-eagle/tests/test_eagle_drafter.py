"""The drafter: losslessness of chains and dynamic trees (greedy identity, batches, sampling
distribution with broken controls), its own KV cache and rollback, and node selection."""

import functools

import pytest
import torch

from specdec import BaseDrafter, CostModel, Draft, GreedyAcceptance, HFVerifier, SamplingParams, SpeculativeDecoder
from specdec.testing import (AcceptsEverythingWhenSampling, check_batched_greedy_identity, check_greedy_identity,
                             check_plugin, check_sampling_distribution, tiny_llama)

from specdec_plugin_eagle.drafter import EagleDrafter, TreeShape
from specdec_plugin_eagle.testing import train_tiny_draft

CHAIN = TreeShape(depth=4, top_k=1, frontier=1, max_nodes=4)
TREE = TreeShape(depth=4, top_k=3, frontier=2, max_nodes=10)
PROMPTS = [[1, 2, 3], [5], [4, 4, 4, 4, 7, 2], list(range(11)) * 2]


def test_specdec_discovers_the_plugin():
    check_plugin("specdec_plugin_eagle", [("drafter", "eagle")])


@functools.lru_cache(maxsize=None)
def greedy_target():
    return tiny_llama(3, vocab_size=12, eos_token_id=11)


@functools.lru_cache(maxsize=None)
def greedy_draft(style):
    layers = (0, 1, 2) if style == "eagle3" else None
    return train_tiny_draft(greedy_target(), style=style, feature_layers=layers, temperature=0.0)


@functools.lru_cache(maxsize=None)
def sampling_target():
    return tiny_llama(5, vocab_size=8, init_std=0.15)


@functools.lru_cache(maxsize=None)
def sampling_draft():
    return train_tiny_draft(sampling_target(), temperature=1.0)


class Counting(BaseDrafter):
    """Wraps a drafter; counts drafted and accepted nodes, and checks the draft cache after each step."""

    def __init__(self, inner: EagleDrafter, target=None):
        self.inner, self.target = inner, target
        self.hidden_state_layers = inner.hidden_state_layers
        self.drafted = self.accepted = 0
        self.widest = 0

    def start(self, prompt, params):
        self.inner.start(prompt, params)

    def propose(self, context):
        draft = self.inner.propose(context)
        self.last_count = len(context.tokens)
        self.drafted += draft.num_nodes
        self.widest = max(self.widest, max((len(c) for c in draft.children), default=0))
        if self.target is not None and self.inner.cache.length:
            assert_draft_cache_exact(self.inner, self.target, context.tokens)
        return draft

    def observe(self, outcome):
        self.accepted += len(outcome.path)
        self.inner.observe(outcome)


def assert_draft_cache_exact(drafter: EagleDrafter, target, tokens):
    """The committed entries equal a fresh causal forward over (real feature, next token) pairs."""
    length = drafter.cache.length
    with torch.inference_mode():
        hidden = target(torch.tensor([list(tokens)]), output_hidden_states=True).hidden_states
        features = torch.cat([hidden[layer][0, :length] for layer in drafter.hidden_state_layers], dim=-1)
        model = drafter.model
        parts = model.qkv(torch.tensor([list(tokens[1:length + 1])]), model.project_features(features)[None],
                          torch.arange(length)[None])
    stored = drafter.cache.store[:, :, :length]
    assert torch.allclose(stored[0], parts.k[0], atol=1e-4), "draft cache keys differ from a fresh forward"
    assert torch.allclose(stored[1], parts.v[0], atol=1e-4), "draft cache values differ from a fresh forward"


@pytest.mark.parametrize("style", ["eagle1", "eagle3"])
@pytest.mark.parametrize("shape", [CHAIN, TREE], ids=["chain", "tree"])
def test_greedy_output_is_plain_decoding_and_drafts_are_accepted(style, shape):
    target, model = greedy_target(), greedy_draft(style)
    drafters = []

    def make(_target):
        drafters.append(Counting(EagleDrafter(model, shape), target))
        return drafters[-1]

    check_greedy_identity(make, target, PROMPTS, max_new_tokens=24)
    assert sum(d.accepted for d in drafters) > 0.4 * sum(d.drafted for d in drafters) / shape.depth
    assert any(d.widest > 1 for d in drafters) == (shape.top_k > 1)


def test_batched_greedy_identity_of_trees():
    model = greedy_draft("eagle1")
    check_batched_greedy_identity(lambda _target: EagleDrafter(model, TREE), greedy_target(), PROMPTS)


def test_the_draft_cache_keeps_only_committed_positions_after_a_rejection():
    target, model = greedy_target(), greedy_draft("eagle1")
    counting = Counting(EagleDrafter(model, TREE), target)
    result = SpeculativeDecoder(HFVerifier(target, ()), counting, GreedyAcceptance()).generate(
        [1, 2, 3], SamplingParams(max_new_tokens=30))
    assert counting.drafted > counting.accepted > 0  # some drafts were rejected, some accepted
    # every committed position but the root, nothing of the last tree (checked against a fresh
    # forward after every step by `Counting`)
    assert counting.inner.cache.length == counting.last_count - 1 < 3 + len(result.tokens)


@pytest.mark.parametrize("shape, params", [(TREE, SamplingParams(temperature=1.0)),
                                           (CHAIN, SamplingParams(temperature=0.7, top_p=0.8))],
                         ids=["tree-T1", "chain-T0.7-top-p"])
def test_sampled_drafts_keep_the_target_distribution(shape, params):
    model = sampling_draft()
    result = check_sampling_distribution(lambda _target: EagleDrafter(model, shape), sampling_target(), params,
                                         num_samples=600)
    assert all(entry.p_value > 1e-3 for entry in result.values())


def test_the_sampling_check_catches_a_policy_that_accepts_every_draft():
    model = sampling_draft()
    with pytest.raises(AssertionError):
        check_sampling_distribution(lambda _target: EagleDrafter(model, TREE), sampling_target(),
                                    SamplingParams(temperature=1.0), policy=AcceptsEverythingWhenSampling(),
                                    num_samples=400)


class ClaimsAnotherQ(EagleDrafter):
    """Broken on purpose: draws from the draft distribution but reports its square, renormalized
    (a sharper distribution than the one sampled from), where that keeps every drawn token possible."""

    def propose(self, context):
        draft = super().propose(context)
        if draft.q is None or draft.num_nodes == 0:
            return draft
        sharper = draft.q ** 2
        return Draft(draft.tokens, draft.parents, q=sharper / sharper.sum(-1, keepdim=True))


def test_the_sampling_check_catches_a_drafter_that_claims_another_q():
    model = sampling_draft()
    with pytest.raises(AssertionError):
        check_sampling_distribution(lambda _target: ClaimsAnotherQ(model, TREE), sampling_target(),
                                    SamplingParams(temperature=1.0), num_samples=600)


class PrunesWhatItDrew(EagleDrafter):
    """Broken on purpose: drops drawn nodes whose token was unlikely under the draft (and their
    subtrees), keeping the q they were drawn with: what remains is no longer distributed as q."""

    def propose(self, context):
        draft = super().propose(context)
        if draft.q is None or draft.num_nodes == 0:
            return draft
        chances = draft.q[torch.arange(draft.num_nodes), draft.tokens]
        kept = []
        for node, parent in enumerate(draft.parents):
            if chances[node] >= 0.2 and (parent < 0 or parent in kept):
                kept.append(node)
        return draft.subtree(kept)


def test_the_sampling_check_catches_a_drafter_that_prunes_what_it_drew():
    model = sampling_draft()
    with pytest.raises(AssertionError):
        check_sampling_distribution(lambda _target: PrunesWhatItDrew(model, CHAIN), sampling_target(),
                                    SamplingParams(temperature=1.0), num_samples=600)


def test_greedy_drafts_under_sampling_carry_no_q():
    model = sampling_draft()
    check_sampling_distribution(lambda _target: EagleDrafter(model, TREE, sample=False), sampling_target(),
                                SamplingParams(temperature=1.0), num_samples=400)


def test_a_truncated_draft_vocabulary_stays_lossless_when_sampling():
    """FR-Spec: drafts come from the most frequent tokens only; q is zero elsewhere, and tokens
    outside can still be emitted by the target."""
    target = sampling_target()
    model = train_tiny_draft(target, draft_ids=torch.tensor([3, 0, 6, 1, 5, 2]), by_frequency=True,
                             temperature=1.0, epochs=20).truncate_vocabulary(4)
    assert model.draft_ids.tolist() == [3, 0, 6, 1]
    check_sampling_distribution(lambda _target: EagleDrafter(model, TREE), target, SamplingParams(temperature=1.0),
                                num_samples=400)
    with pytest.raises(ValueError, match="not ordered by frequency"):
        sampling_draft().truncate_vocabulary(4)


def test_node_selection_follows_the_cost_of_verification():
    target, model = greedy_target(), greedy_draft("eagle1")

    def drafted(cost):
        counting = Counting(EagleDrafter(model, TREE, cost))
        SpeculativeDecoder(HFVerifier(target, ()), counting, GreedyAcceptance()).generate(
            [4, 4, 4, 4, 7, 2], SamplingParams(max_new_tokens=20))
        return counting.drafted

    free, dear = drafted(CostModel(node_cost=0.0)), drafted(CostModel(node_cost=5.0))
    assert free > 0 and dear == 0


@pytest.mark.parametrize("top_k", [3, 20])
def test_a_level_of_greedy_children_is_each_rows_own_top_k_within_the_room(top_k):
    """One top-k over a whole level gives every frontier node the children a top-k of its own
    row would, in frontier order, cut at the room left; the row where the room runs out takes a
    top-k of that size (ties included: these integer logits tie often). With top_k above the
    draft vocabulary, a node gets the whole vocabulary."""
    from specdec_plugin_eagle.drafter import _Node

    model = greedy_draft("eagle1")
    drafter = EagleDrafter(model, TreeShape(depth=3, top_k=top_k, frontier=4, max_nodes=24))
    ids = model.draft_ids.tolist()
    vocab = len(ids)
    logits = torch.randint(0, 3, (4, vocab), generator=torch.Generator().manual_seed(0)).float()  # many ties
    nodes = [_Node(ids[0], -1, 1, 0.5, 0.5), _Node(ids[1], -1, 1, 0.3, 0.3)]
    frontier = [1, 0, 1, 0]  # parents may repeat: only the order of rows matters
    k = min(top_k, vocab)
    for room in (1, k - 1, k, 2 * k + 1, 4 * k, 100):
        expected = []
        for row, parent in enumerate(frontier):
            left = room - len(expected)
            if left < 1:
                break
            top = torch.softmax(logits[row], dim=-1).topk(min(k, left))
            expected += [(ids[index], parent, 2, chance, nodes[parent].path * chance)
                         for chance, index in zip(top.values.tolist(), top.indices.tolist())]
        children = drafter._top_children(logits, frontier, nodes, 2, room)
        assert [(c.token, c.parent, c.depth, c.chance, c.path) for c in children] == expected
        assert len(children) == min(room, 4 * k)
