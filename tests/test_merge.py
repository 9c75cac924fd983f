"""The `merge` drafter: the trie merge, pruning, what members hear, refusals, config, losslessness."""

import functools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from specdec import (AuxTokens, CostModel, Draft, DraftContext, DraftError, SamplingParams,
                     StepOutcome)
from specdec.config import validate_pipeline
from specdec.cost import path_probabilities
from specdec.draft import merge_trees
from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.merge import MergeDrafter, node_slots
from specdec.plugins import load_plugins
from specdec.protocols import BaseDrafter
from specdec.testing import (AcceptsEverythingWhenSampling, ModelTreeDrafter, SAMPLING_CASES,
                             assert_lossless, config_problems, perturbed_copy)

VOCAB = 16


class Fixed(BaseDrafter):
    """Proposes the same tree every step and records every outcome it hears."""

    def __init__(self, tokens, parents, *, confidence=None, q=None, aux=None, wants_logits=False, layers=()):
        self.args = (list(tokens), tuple(parents), q, aux, confidence)
        self.wants_logits, self.hidden_state_layers = wants_logits, tuple(layers)
        self.heard: list[StepOutcome] = []
        self.last: Draft | None = None

    def propose(self, context):
        self.last = Draft(*self.args)
        return self.last

    def observe(self, outcome):
        self.heard.append(outcome)


def context(tokens=(1, 2, 3), max_depth=16, max_nodes=None):
    return DraftContext(list(tokens), 1, SamplingParams(), max_depth, None, 0, max_nodes=max_nodes)


def node_of(draft, *tokens):
    """The node reached from the root through `tokens`."""
    row = 0
    for token in tokens:
        row = next(child for child in draft.children[row] if int(draft.tokens[child]) == token) + 1
    return row - 1


def paths(draft):
    return {tuple(int(draft.tokens[node]) for node in draft.path_to(leaf)) for leaf in range(draft.num_nodes)}


def outcome(draft, path, tokens=(1, 2, 3), next_token=0, **kwargs):
    accepted = tuple(int(draft.tokens[node]) for node in path)
    return StepOutcome(draft, tuple(path), accepted, next_token, list(tokens) + list(accepted) + [next_token], **kwargs)


# -- the trie -------------------------------------------------------------------------------------


def test_merge_trees_shares_prefixes_and_keeps_parents_first():
    tokens, parents, index = merge_trees([([5, 6, 7], [-1, 0, 0]), ([5, 6, 8], [-1, 0, 1]), ([9], [-1]), ([], [])])
    assert tokens == (5, 6, 7, 8, 9)
    assert parents == (-1, 0, 0, 1, -1)
    assert index == ((0, 1, 2), (0, 1, 3), (4,), ())


trees = st.lists(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3)), max_size=12), max_size=4)


@given(trees)
def test_merge_trees_keeps_every_path_and_no_duplicate_sibling(raw):
    inputs = []
    for nodes in raw:  # (parent choice, token): the parent is any earlier node or the root
        parents = [choice % (index + 1) - 1 for index, (choice, _) in enumerate(nodes)]
        inputs.append(([token for _, token in nodes], parents))
    tokens, parents, index = merge_trees(inputs)
    merged = Draft(list(tokens), parents)  # validates parents before children
    for row in merged.children:
        assert len({tokens[child] for child in row}) == len(row)
    for (member_tokens, member_parents), nodes in zip(inputs, index):
        member = Draft(member_tokens, member_parents)
        for node in range(member.num_nodes):
            assert [tokens[n] for n in merged.path_to(nodes[node])] == [member_tokens[n] for n in member.path_to(node)]


def test_merge_trees_refuses_a_parent_after_its_child():
    with pytest.raises(DraftError, match="node 0 of tree 0 has parent 1"):
        merge_trees([([5, 6], [1, -1])])


# -- confidence on Draft, path probabilities --------------------------------------------------------


def test_draft_confidence_is_validated_and_follows_its_nodes():
    draft = Draft([4, 5, 6], [-1, 0, -1], confidence=[0.9, 0.5, 0.25])
    assert draft.confidence == (0.9, 0.5, 0.25)
    assert draft.subtree([2, 0]).confidence == (0.25, 0.9)
    assert draft.truncated(1).confidence == (0.9, 0.25)
    with pytest.raises(DraftError, match="3 tokens but 2 confidence values"):
        Draft([4, 5, 6], [-1, 0, -1], confidence=[0.9, 0.5])
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(DraftError, match="probabilities in \\[0, 1\\]"):
            Draft([4], [-1], confidence=[bad])


def test_path_probabilities_multiply_down_the_path_and_cap_siblings():
    assert path_probabilities([-1, 0, 1], [0.5, 0.5, 0.5]) == [0.5, 0.25, 0.125]
    capped = path_probabilities([-1, -1, 0], [0.8, 0.4, 0.5], max_sibling_sum=0.6)
    assert capped == pytest.approx([0.4, 0.2, 0.2])


def test_node_slots_are_depth_and_sibling_rank():
    # root children ranks 0, 1, 2, 3, 4 (the last two share rank 3); a grandchild of the first
    assert node_slots([-1, -1, -1, -1, -1, 0]) == [0, 1, 2, 3, 3, 4]


# -- merging and pruning --------------------------------------------------------------------------


def test_merged_tree_is_the_union_with_shared_prefixes():
    first, second = Fixed([5, 6, 7], [-1, 0, 0]), Fixed([5, 6, 8, 9], [-1, 0, 1, -1])
    draft = MergeDrafter([first, second], adaptive=False).propose(context())
    assert draft.num_nodes == 5 and draft.q is None
    assert paths(draft) == {(5,), (5, 6), (5, 7), (5, 6, 8), (9,)}
    assert all(parent < node for node, parent in enumerate(draft.parents))
    assert draft.confidence is not None and len(draft.confidence) == 5


def test_pruning_keeps_the_likelier_nodes_closed_under_ancestors():
    sure = Fixed([1, 2, 3], [-1, 0, 1], confidence=[0.9, 0.9, 0.9])
    unsure = Fixed([4, 5, 6], [-1, 0, 1], confidence=[0.2, 0.2, 0.2])
    for max_nodes, expected in ((1, {(1,)}), (3, {(1,), (1, 2), (1, 2, 3)}),
                                (4, {(1,), (1, 2), (1, 2, 3), (4,)})):
        draft = MergeDrafter([unsure, sure], adaptive=False, max_nodes=max_nodes).propose(context())
        assert paths(draft) == expected
    # the step's own budget and depth apply too
    assert paths(MergeDrafter([unsure, sure], adaptive=False).propose(context(max_nodes=2))) == {(1,), (1, 2)}
    assert paths(MergeDrafter([unsure, sure], adaptive=False).propose(context(max_depth=1))) == {(1,), (4,)}
    # the cost model: at 0.3 plain steps per node, the unlikely branch does not pay for itself
    costly = MergeDrafter([unsure, sure], cost=CostModel(node_cost=0.3))
    assert paths(costly.propose(context())) == {(1,), (1, 2), (1, 2, 3)}
    # and when nothing pays, nothing is drafted
    hopeless = Fixed([4], [-1], confidence=[0.01])
    assert MergeDrafter([hopeless], cost=CostModel(node_cost=0.3)).propose(context()).num_nodes == 0


def test_a_node_two_members_propose_combines_their_estimates():
    one, other = Fixed([1], [-1], confidence=[0.5]), Fixed([1], [-1], confidence=[0.4])
    assert MergeDrafter([one, other], adaptive=False).propose(context()).confidence == (0.5,)
    noisy = MergeDrafter([one, other], adaptive=False, combine="noisy_or").propose(context())
    assert noisy.confidence == (pytest.approx(0.7),)


class Oracle(BaseDrafter):
    """Proposes the next tokens of a known text (right: `offset` 0) or wrong ones."""

    def __init__(self, text, offset):
        self.text, self.offset = text, offset

    def propose(self, context):
        start = len(context.tokens)
        return Draft.chain([(token + self.offset) % 100 for token in self.text[start:start + 3]])


def test_estimates_without_confidence_are_learned_per_member():
    text = list(range(1, 100))
    wrong, right = Oracle(text, 50), Oracle(text, 0)
    merge = MergeDrafter([wrong, right], adaptive=False, max_nodes=3)
    merge.start(text[:3], SamplingParams())
    first = merge.propose(context(text[:3]))
    assert int(first.tokens[0]) == 54  # equal priors: the first member's nodes come first
    length = 3
    for _ in range(10):
        draft = merge.propose(context(text[:length]))
        path = []
        for token in text[length:length + 3]:
            row = path[-1] + 1 if path else 0
            match = [child for child in draft.children[row] if int(draft.tokens[child]) == token]
            if not match:
                break
            path.append(match[0])
        merge.observe(outcome(draft, path, text[:length], next_token=text[length + len(path)]))
        length += len(path) + 1
    learned = merge.propose(context(text[:length]))
    assert [int(token) for token in learned.tokens] == text[length:length + 3]
    assert merge.accepted[1] > 0 and merge.accepted[0] == 0


# -- what members hear ----------------------------------------------------------------------------


def test_members_hear_their_own_draft_when_the_path_lies_in_it():
    a = Fixed([5, 6], [-1, 0], layers=(-1,))
    b = Fixed([5, 7], [-1, 0], wants_logits=True)
    merge = MergeDrafter([a, b], adaptive=False)
    assert merge.wants_logits and merge.hidden_state_layers == (-1,)
    draft = merge.propose(context())
    n5, n6, n7 = node_of(draft, 5), node_of(draft, 5, 6), node_of(draft, 5, 7)
    logits = torch.arange(4, dtype=torch.float32)[:, None].expand(4, VOCAB)  # row r holds r
    hidden = {-1: torch.zeros(3, 4), 2: torch.ones(3, 4)}
    merge.observe(outcome(draft, [n5, n6], logits=logits, hidden_states=hidden))
    heard_a, heard_b = a.heard[-1], b.heard[-1]
    assert heard_a.draft is a.last and heard_a.path == (0, 1) and heard_a.logits is None
    assert set(heard_a.hidden_states) == {-1} and heard_b.hidden_states == {}
    # 6 is not b's: b hears the merged draft, as inside fallback
    assert heard_b.draft is draft and heard_b.path == (n5, n6) and heard_b.logits is logits
    assert heard_a.accepted_tokens == heard_b.accepted_tokens == (5, 6)

    draft = merge.propose(context())
    n5, n7 = node_of(draft, 5), node_of(draft, 5, 7)
    merge.observe(outcome(draft, [n5], logits=logits))
    assert a.heard[-1].draft is a.last and a.heard[-1].path == (0,)
    heard_b = b.heard[-1]
    assert heard_b.draft is b.last and heard_b.path == (0,)
    assert heard_b.logits[:, 0].tolist() == [0.0, n5 + 1.0, n7 + 1.0]  # its own rows: root, 5, 7


def test_a_logits_member_with_pruned_nodes_hears_the_merged_draft():
    a = Fixed([5, 6], [-1, 0], confidence=[0.9, 0.9])
    b = Fixed([5, 7], [-1, 0], confidence=[0.9, 0.1], wants_logits=True)
    merge = MergeDrafter([a, b], adaptive=False, max_nodes=2)
    draft = merge.propose(context())
    assert paths(draft) == {(5,), (5, 6)}
    logits = torch.zeros(3, VOCAB)
    merge.observe(outcome(draft, [node_of(draft, 5)], logits=logits))
    assert a.heard[-1].draft is a.last and a.heard[-1].path == (0,)
    assert b.heard[-1].draft is draft and b.heard[-1].logits is logits


def test_a_trimmed_draft_or_an_empty_member_is_heard_correctly():
    a, b, empty = Fixed([5, 6], [-1, 0]), Fixed([5, 7], [-1, 0]), Fixed([], [])
    merge = MergeDrafter([a, b, empty], adaptive=False)
    draft = merge.propose(context())
    trimmed = draft.subtree([node_of(draft, 5)])  # as the engine trims an oversized draft
    merge.observe(outcome(trimmed, [0]))
    assert all(member.heard[-1].draft is trimmed for member in (a, b, empty))
    draft = merge.propose(context())
    merge.observe(outcome(draft, []))
    assert empty.heard[-1].draft is empty.last and empty.heard[-1].path == ()
    merge.observe(outcome(Draft.empty(), []))  # a step it was not asked to draft
    assert a.heard[-1].draft.num_nodes == 0 and len(a.heard) == 3


# -- refusals and aux rows ------------------------------------------------------------------------


def test_a_sampled_member_draft_is_refused_naming_the_member():
    sampled = Fixed([3], [-1], q=torch.full((1, VOCAB), 1.0 / VOCAB))
    merge = MergeDrafter([Fixed([1], [-1]), sampled], ["prompt_lookup", "draft_model"])
    with pytest.raises(DraftError, match=r"drafter 1 \(draft_model\) returned a sampled draft.*greedy_draft: true"):
        merge.propose(context())


def aux_rows(num_nodes, attends):
    """Two aux rows at offsets 1 and 2; row 0 sees the draft nodes in `attends`, row 1 sees row 0."""
    attends_to = torch.zeros(2, num_nodes + 2, dtype=torch.bool)
    attends_to[0, list(attends)] = True
    attends_to[1, num_nodes] = True
    return AuxTokens(torch.tensor([3, 4]), torch.tensor([1, 2]), attends_to)


def test_aux_rows_of_one_member_pass_through_renumbered():
    carrier = Fixed([5, 6], [-1, 0], aux=aux_rows(2, [1]))
    merge = MergeDrafter([Fixed([9, 5], [-1, -1]), carrier], adaptive=False)
    draft = merge.propose(context())
    assert draft.num_aux == 2 and draft.aux.tokens.tolist() == [3, 4]
    seen = draft.aux.attends_to
    assert seen[0, : draft.num_nodes].nonzero().flatten().tolist() == [node_of(draft, 5, 6)]
    assert seen[1].nonzero().flatten().tolist() == [draft.num_nodes]
    logits = torch.zeros(2, VOCAB)
    merge.observe(outcome(draft, [], aux_logits=logits))
    assert carrier.heard[-1].aux_logits is logits and merge.drafters[0].heard[-1].aux_logits is None
    # pruned nodes lose their columns; the rows stay even when no node is kept
    alone = MergeDrafter([carrier], cost=CostModel(node_cost=5.0)).propose(context())
    assert alone.num_nodes == 0 and alone.num_aux == 2 and alone.aux.attends_to.shape == (2, 2)


def test_two_members_with_aux_rows_are_refused():
    merge = MergeDrafter([Fixed([5], [-1], aux=aux_rows(1, [0])), Fixed([6], [-1], aux=aux_rows(1, [0]))])
    with pytest.raises(DraftError, match="at most one member may carry aux rows"):
        merge.propose(context())


# -- configuration ----------------------------------------------------------------------------------

REGISTRY = load_plugins(entry_points=False).registry


def test_config_errors_name_the_field():
    found = config_problems("""\
        drafter:
          type: merge
          params:
            drafters:
              - type: none
              - type: draft_model
                params: {model: m}
              - type: draft_model
                params: {model: m, greedy_draft: true}
            max_nodes: 0
            combine: mean
        """)
    assert found[0] == "pipeline.yaml:10: drafter.params.max_nodes: must be 'auto' or a number of nodes from 1 to 512"
    assert any(line.startswith("pipeline.yaml:11: drafter.params.combine:") for line in found)
    assert len(found) == 2  # the params block fails first; its members are checked once it validates
    found = config_problems("""\
        drafter:
          type: fallback
          params:
            drafters:
              - type: merge
                params:
                  drafters:
                    - type: draft_model
                      params: {model: m}
                    - type: draft_model
                      params: {model: m, greedy_draft: true}
        """)
    assert found == ["pipeline.yaml:9: drafter.params.drafters[0].params.drafters[0].params.greedy_draft: merge "
                     "verifies deterministic drafts only, and this drafter samples its drafts when the temperature "
                     "is above 0: set greedy_draft: true"]
    assert config_problems("drafter: {type: merge, params: {drafters: []}}\n")[0].startswith(
        "pipeline.yaml:1: drafter.params.drafters: ")
    validate_pipeline({"drafter": {"type": "merge", "params": {"drafters": [{"type": "none"}], "max_nodes": 8,
                                                               "node_cost": "auto"}}}, REGISTRY)


# -- losslessness: the harness on tiny models ---------------------------------------------------------


class BigramCopy(BaseDrafter):
    """A deterministic n-gram drafter: what followed the last earlier occurrence of the last token."""

    def __init__(self, num_tokens=4):
        self.num_tokens = num_tokens

    def propose(self, context):
        tokens = list(context.tokens)
        for start in range(len(tokens) - 2, -1, -1):
            if tokens[start] == tokens[-1]:
                return Draft.chain(tokens[start + 1: start + 1 + min(self.num_tokens, context.max_depth)])
        return Draft.empty()


def merged_drafters(target, adaptive=True):
    return MergeDrafter([BigramCopy(),
                         DraftModelDrafter(perturbed_copy(target, 0.3, seed=5), 3, greedy_draft=True),
                         ModelTreeDrafter(perturbed_copy(target, 0.5, seed=6), (2, 2), mode="top")],
                        ["bigram", "draft_model", "tree"], adaptive=adaptive, cost=CostModel(node_cost=0.02))


def test_merge_is_lossless():
    assert_lossless(merged_drafters, sampling_cases=SAMPLING_CASES[:1], num_samples=500)


@pytest.mark.slow
def test_merge_is_lossless_full_check():
    assert_lossless(merged_drafters)


def test_the_harness_fails_merge_under_a_broken_policy():
    with pytest.raises(AssertionError, match="AcceptsEverythingWhenSampling does not match plain sampling"):
        assert_lossless(functools.partial(merged_drafters, adaptive=False),
                        policy=AcceptsEverythingWhenSampling(), quick=True)


@pytest.mark.slow  # merge itself is checked by test_merge_is_lossless; this is the bundled combination
def test_merge_of_the_bundled_training_free_drafters_is_lossless():
    pytest.importorskip("specdec_plugin_retrieval")
    pytest.importorskip("specdec_plugin_recycling")
    from specdec_plugin_recycling.drafter import TokenRecyclingDrafter
    from specdec_plugin_retrieval.prompt_lookup import PromptLookupDrafter

    nodes = []

    def make(target):
        merge = MergeDrafter([PromptLookupDrafter(cost=CostModel(node_cost=0.02)),
                              TokenRecyclingDrafter(cost=CostModel(node_cost=0.02))],
                             ["prompt_lookup", "token_recycling"], cost=CostModel(node_cost=0.02))
        nodes.append(merge)
        return merge

    assert_lossless(make, sampling_cases=SAMPLING_CASES[1:3], num_samples=800)
    assert sum(sum(merge.contributed) for merge in nodes) > 0
    assert all(sum(merge.accepted[member] for merge in nodes) > 0 for member in (0, 1))


def test_fallback_asks_for_logits_when_a_member_does():
    from specdec.drafters.fallback import FallbackDrafter

    assert FallbackDrafter([Fixed([1], [-1]), Fixed([2], [-1], wants_logits=True)]).wants_logits
    assert not FallbackDrafter([Fixed([1], [-1])]).wants_logits


def test_a_merge_pipeline_generates_what_plain_decoding_generates(tmp_path):
    pytest.importorskip("specdec_plugin_retrieval")
    pytest.importorskip("specdec_plugin_recycling")
    from specdec import Pipeline
    from specdec.testing import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model", seed=3)

    def pipeline(drafter):
        return Pipeline.from_dict({"target": {"model": model_dir}, "drafter": drafter,
                                   "sampling": {"max_new_tokens": 40, "stop_token_ids": []}})

    prompt = "the cat sat on the mat. the cat sat on the"
    plain = pipeline({"type": "none"}).generate(prompt)
    merged = pipeline({"type": "merge", "params": {"drafters": [{"type": "prompt_lookup"},
                                                                {"type": "token_recycling"}],
                                                   "max_nodes": 16}})
    assert merged.drafter.names == ["0 (prompt_lookup)", "1 (token_recycling)"]
    result = merged.generate(prompt)
    assert result.token_ids == plain.token_ids
    assert sum(merged.drafter.contributed) > 0
    assert len(merged.generate(prompt, temperature=0.8, seed=5).token_ids) == 40


def test_a_path_through_a_repeated_sibling_token_is_translated():
    from specdec.drafters.merge import _translated

    # member nodes: 0 = 5 and 1 = 5 below the root, 2 = 6 below node 1; merged: 5 -> 0, 6 -> 1
    assert _translated((0, 1), (0, 0, 1), (-1, -1, 1)) == (1, 2)
    assert _translated((0,), (0, 0, 1), (-1, -1, 1)) == (0,)
    assert _translated((0, 2), (0, 0, 1), (-1, -1, 1)) is None
    assert _translated((), (), ()) == ()
