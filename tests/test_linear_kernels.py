"""target.linear_kernel: oneDNN kernels for a float32 target's linear layers on a CPU, on the
model only inside specdec's forwards, chosen by timing under `auto`."""

import copy

import pytest
import torch

import specdec.linear_kernels as linear_kernels
from specdec import ConfigError, Pipeline
from specdec.linear_kernels import (LinearKernels, configure_linear_kernel, float32_linears, follow_linear_kernel,
                                    linear_forward, linear_kernels_for, time_linear_kernels)
from specdec.model_runner import CausalLMRunner
from specdec.testing import tiny_llama

needs_onednn = pytest.mark.skipif(not linear_kernels.onednn_available(), reason="torch built without oneDNN")


def model(seed: int = 0) -> torch.nn.Module:
    return tiny_llama(seed, vocab_size=128, hidden_size=64, num_layers=3)


def installed_forwards(target: torch.nn.Module) -> int:
    return sum("forward" in module.__dict__ for module in target.modules() if isinstance(module, torch.nn.Linear))


@needs_onednn
@pytest.mark.parametrize("packed", [False, True])
def test_onednn_logits_match_torch_to_float32_rounding(packed):
    target = model()
    ids = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = target(ids).logits
        kernels = LinearKernels(target, packed)
        with kernels.installed():
            got = target(ids).logits
    assert len(kernels.forwards) == len(float32_linears(target)) == 3 * 7 + 1  # 7 per layer + the LM head
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@needs_onednn
def test_kernels_are_on_the_model_only_while_installed_and_nesting_keeps_them():
    target = model()
    kernels = LinearKernels(target, packed=True)
    assert installed_forwards(target) == 0
    with kernels.installed():
        with kernels.installed():
            assert installed_forwards(target) == len(kernels.forwards)
        assert installed_forwards(target) == len(kernels.forwards)  # the outer block still runs them
    assert installed_forwards(target) == 0
    with pytest.raises(RuntimeError), kernels.installed():
        raise RuntimeError("a failed forward")
    assert installed_forwards(target) == 0  # taken off on the way out of an error too


@needs_onednn
def test_the_runner_forwards_with_the_configured_kernels_and_leaves_the_model_stock():
    target = model()
    assert configure_linear_kernel(target, "onednn_packed") == "onednn_packed"
    seen = []
    kernels = linear_kernels_for(target)
    forwards = dict(kernels.forwards)
    head = target.get_output_embeddings()
    kernels.forwards[head] = lambda x: (seen.append(x.shape), forwards[head](x))[1]
    kernels.forwards[head].current = lambda parameters: True
    runner = CausalLMRunner(target)
    runner.prepare(1, 64)
    runner.forward(torch.arange(5), torch.arange(5))
    assert seen, "the verifier's forward did not run the configured kernels"
    assert installed_forwards(target) == 0


@needs_onednn
@pytest.mark.parametrize("kernel", ["onednn", "onednn_packed"])
def test_speculative_greedy_generation_with_onednn_is_plain_greedy_generation(kernel):
    """Whole generations: prompt lookup verifies multi-token drafts on the oneDNN kernels, and the
    tokens are those of plain decoding on torch's kernels of the same weights."""
    reference, tested = model(3), model(3)
    prompt = [5, 9, 17, 5, 9, 17, 5, 9, 30, 41, 5, 9, 17]
    plain = Pipeline.from_dict({"target": {"linear_kernel": "torch"}, "drafter": {"type": "none"}},
                               model=reference).generate(prompt, max_new_tokens=48)
    pipeline = Pipeline.from_dict({"target": {"linear_kernel": kernel},
                                   "drafter": {"type": "prompt_lookup", "params": {"num_tokens": 5}}},
                                  model=tested)
    assert pipeline.linear_kernel == kernel
    speculative = pipeline.generate(prompt, max_new_tokens=48)
    assert speculative.token_ids == plain.token_ids
    assert speculative.stats.draft_tokens > 0  # multi-row verifications ran
    assert installed_forwards(tested) == 0


def test_auto_keeps_torch_for_a_model_whose_products_do_not_decide_its_step(monkeypatch):
    monkeypatch.setattr(linear_kernels, "time_linear_kernels", lambda *a, **k: pytest.fail("timed a tiny model"))
    target = model()
    assert configure_linear_kernel(target, "auto") == "torch"
    assert linear_kernels_for(target) is None


@needs_onednn
@pytest.mark.parametrize("seconds, memory, expected", [
    ({"torch": 1.0, "onednn": 0.7, "onednn_packed": 0.5}, 1 << 40, "onednn_packed"),
    ({"torch": 1.0, "onednn": 0.7}, 1 << 10, "onednn"),  # no memory for a reordered copy: not timed
    ({"torch": 1.0, "onednn": 0.97, "onednn_packed": 0.98}, 1 << 40, "torch"),  # within noise of torch
])
def test_auto_takes_the_fastest_kernel_that_fits(monkeypatch, seconds, memory, expected):
    monkeypatch.setattr(linear_kernels, "AUTO_MIN_BYTES", 0)
    monkeypatch.setattr(linear_kernels, "_available_memory", lambda: memory)
    timed_modes = []

    def timing(modules, modes, *args, **kwargs):
        timed_modes.append(list(modes))
        return {mode: seconds[mode] for mode in modes}

    monkeypatch.setattr(linear_kernels, "time_linear_kernels", timing)
    target = model()
    assert configure_linear_kernel(target, "auto") == expected
    assert timed_modes == [list(seconds)]
    assert (linear_kernels_for(target) is None) == (expected == "torch")


@needs_onednn
def test_timing_the_kernels_measures_every_mode_asked():
    target = model()
    seconds = time_linear_kernels(float32_linears(target), ["torch", "onednn", "onednn_packed"], repeats=1)
    assert set(seconds) == {"torch", "onednn", "onednn_packed"}
    assert all(value > 0 for value in seconds.values())


@needs_onednn
def test_pipelines_sharing_a_model_must_agree_on_the_kernel():
    target = model()
    assert configure_linear_kernel(target, "onednn") == "onednn"
    assert configure_linear_kernel(target, "auto") == "onednn"  # auto keeps what the model already runs
    assert configure_linear_kernel(target, "onednn") == "onednn"
    with pytest.raises(ConfigError, match="must agree"):
        configure_linear_kernel(target, "torch")


def test_explicit_onednn_is_refused_where_it_cannot_run():
    target = copy.deepcopy(model()).to(torch.bfloat16)
    with pytest.raises(ConfigError, match="float32 linear layers on a CPU|needs oneDNN"):
        configure_linear_kernel(target, "onednn_packed")
    with pytest.raises(ConfigError, match="must be one of"):
        configure_linear_kernel(model(), "mkl")
    assert configure_linear_kernel(target, "auto") == "torch"


@needs_onednn
def test_drafters_computing_with_the_target_get_its_kernel():
    target = model()
    module = target.model.layers[0].mlp.down_proj
    x = torch.randn(2, module.in_features)
    stock = linear_forward(target, module)  # not configured: torch's product
    torch.testing.assert_close(stock(x), torch.nn.functional.linear(x, module.weight), rtol=0, atol=0)
    configure_linear_kernel(target, "onednn_packed")
    assert linear_forward(target, module) is linear_kernels_for(target).forwards[module]
    torch.testing.assert_close(linear_forward(target, module)(x), stock(x), rtol=1e-4, atol=1e-5)
    assert follow_linear_kernel(model(1), target) == "onednn_packed"  # a drafter's own float32 model
    assert follow_linear_kernel(model(2).to(torch.bfloat16), target) == "torch"  # where oneDNN cannot run
    assert follow_linear_kernel(model(3), model(4)) == "torch"  # a target left on torch's kernel


class Scaled(torch.nn.Linear):
    """A linear layer with a forward of its own (as quantization-aware or scaled layers have)."""

    def forward(self, x):
        return 2 * super().forward(x)


@needs_onednn
def test_only_plain_linear_products_are_replaced():
    target = model()
    target.model.layers[0].mlp.down_proj = Scaled(128, 64, bias=False)
    patched = target.model.layers[1].mlp.down_proj
    patched.forward = lambda x: torch.zeros(*x.shape[:-1], 64)  # someone else's forward (a hook library's)
    kernels = LinearKernels(target, packed=True)
    assert target.model.layers[0].mlp.down_proj not in kernels.forwards and patched not in kernels.forwards
    with kernels.installed():
        assert patched.forward(torch.ones(1, 128)).abs().sum() == 0  # theirs, still
    assert "forward" in patched.__dict__  # not taken away on the way out


@needs_onednn
@pytest.mark.parametrize("packed", [False, True])
def test_a_weight_changed_after_configuring_is_computed_with_as_it_is_now(packed):
    target = model()
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(1))
    kernels = LinearKernels(target, packed)
    with torch.no_grad():
        target.model.layers[1].mlp.up_proj.weight.mul_(3.0)  # in place
        target.lm_head.weight = torch.nn.Parameter(target.lm_head.weight * 0.5)  # replaced (untied)
    with torch.inference_mode():
        expected = target(ids).logits
        with kernels.installed():
            got = target(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
