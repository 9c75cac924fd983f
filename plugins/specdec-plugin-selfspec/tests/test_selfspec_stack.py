"""The lean decoder forward equals Hugging Face's, writes only where it is told, and its cheaper
copies stay close to the original."""

import os

import pytest
import torch

from specdec import ModelMismatchError
from specdec.testing import tiny_llama

from specdec_plugin_selfspec.formats import (choose_format, compute_dtype, copy_layers, fused_groups, fused_projection,
                                             head_projection, native_bfloat16)
from specdec_plugin_selfspec.stack import DecoderStack, target_layers


def tiny(model_type: str, seed: int = 0):
    """Tiny random models of each supported family (qwen2: q/k/v biases; qwen3: q/k norms)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_type == "llama":
        return tiny_llama(seed, vocab_size=40, num_layers=3)
    config = AutoConfig.for_model(model_type, vocab_size=40, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=256, head_dim=8, attn_implementation="sdpa",
                                  tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0, 0.2)
            elif parameter.ndim == 1:  # biases and norms: not the identity defaults
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def stack_of(model, fmt="float32"):
    dtype = compute_dtype(fmt, model.dtype)
    return DecoderStack(model, copy_layers(model, fmt), head_projection(model, fmt, None),
                        model.model.norm.weight.detach().to(dtype), dtype)


def empty_store(stack, capacity=64):
    return torch.zeros(stack.num_layers, 2, stack.num_kv_heads, capacity, stack.head_dim, dtype=stack.dtype)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_all_layers_equal_the_hugging_face_forward_prefill_then_one_token_at_a_time(model_type):
    model = tiny(model_type)
    stack = stack_of(model)
    tokens = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    with torch.inference_mode():
        reference = model(tokens[None]).logits[0]  # [10, V]
    store = empty_store(stack)
    prefill = torch.ones(6, 6, dtype=torch.bool).tril()
    logits = stack.forward(tokens[:6], torch.arange(6), store, 0, 6, prefill, logits_rows=6)
    torch.testing.assert_close(logits, reference[:6], atol=1e-4, rtol=1e-4)
    for position in range(6, 10):
        logits = stack.forward(tokens[position:position + 1], torch.tensor([position]), store, position, position + 1)
        torch.testing.assert_close(logits[0], reference[position], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_the_targets_own_layers_run_on_the_kernel_its_verification_runs():
    """`target.linear_kernel` (oneDNN where faster) reaches the layers layer-skip drafts with."""
    from specdec import configure_linear_kernel, linear_kernels_for

    model = tiny("qwen2")
    configure_linear_kernel(model, "onednn_packed")
    kernels = linear_kernels_for(model).forwards
    attention = model.model.layers[1].self_attn
    layer = target_layers(model)[1]
    assert layer.o is kernels[attention.o_proj] and layer.qkv[0] is kernels[attention.q_proj]
    stack = stack_of(model)
    tokens = torch.tensor([3, 1, 4, 1, 5, 9])
    with torch.inference_mode():
        reference = model(tokens[None]).logits[0]  # torch's kernel: the model is untouched
    logits = stack.forward(tokens, torch.arange(6), empty_store(stack), 0, 6,
                           torch.ones(6, 6, dtype=torch.bool).tril(), logits_rows=6)
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_fused_projections_equal_the_hugging_face_forward(model_type):
    """Converted copies fuse query/key/value and gate/up into one product each, and the forward
    slices queries, keys and values out of the fused output in place; in float32 such a copy is
    still the model (biases, per-head q/k norms and several new tokens included)."""
    import dataclasses

    model = tiny(model_type, seed=1)
    layers = [dataclasses.replace(own, **dict(zip(("qkv", "o", "gate_up", "down"),
                                                  (fused_projection("float32", group) for group in fused_groups(layer)))))
              for layer, own in zip(model.model.layers, target_layers(model))]
    stack = DecoderStack(model, layers, head_projection(model, "float32", None), model.model.norm.weight, model.dtype)
    assert not isinstance(stack.layers[0].qkv, tuple)
    tokens = torch.tensor([2, 7, 1, 8, 2, 8, 1, 8, 2, 8])
    with torch.inference_mode():
        reference = model(tokens[None]).logits[0]
    store = empty_store(stack)
    logits = stack.forward(tokens[:7], torch.arange(7), store, 0, 7, torch.ones(7, 7, dtype=torch.bool).tril(),
                           logits_rows=7)
    torch.testing.assert_close(logits, reference[:7], atol=1e-4, rtol=1e-4)
    two = stack.forward(tokens[7:9], torch.arange(7, 9), store, 7, 9, torch.ones(2, 9, dtype=torch.bool).tril(7),
                        logits_rows=2)
    torch.testing.assert_close(two, reference[7:9], atol=1e-4, rtol=1e-4)
    one = stack.forward(tokens[9:], torch.tensor([9]), store, 9, 10)
    torch.testing.assert_close(one[0], reference[9], atol=1e-4, rtol=1e-4)


def test_a_forward_writes_only_its_own_entries_and_a_subset_writes_only_its_layers():
    model = tiny("llama")
    stack = stack_of(model)
    store = torch.randn(stack.num_layers, 2, stack.num_kv_heads, 32, stack.head_dim)
    before = store.clone()
    stack.forward(torch.tensor([1, 2, 3]), torch.tensor([10, 11, 12]), store, 10, 13,
                  torch.ones(3, 13, dtype=torch.bool).tril(10), run=[0, 2])
    changed = (store != before).any(dim=(1, 2, 4))  # [layers, capacity]
    assert changed[[0, 2]][:, 10:13].all()
    assert not changed[1].any() and not changed[:, :10].any() and not changed[:, 13:].any()


def test_scratch_entries_can_live_anywhere_after_the_prefix_positions_come_from_rotary():
    """Attending with a mask over entries stored out of place gives the same logits: the
    layer-skip search scores windows this way without touching committed entries."""
    model = tiny("llama")
    stack = stack_of(model)
    tokens = torch.tensor([3, 1, 4, 1, 5, 9])
    store = empty_store(stack)
    stack.forward(tokens, torch.arange(6), store, 0, 6, torch.ones(6, 6, dtype=torch.bool).tril(), logits_rows=6)
    in_place = stack.forward(tokens[4:5], torch.tensor([4]), store.clone(), 4, 5)
    # the same token at position 4 with its entry stored at 20, seeing entries 0..3 and itself
    allowed = torch.zeros(1, 21, dtype=torch.bool)
    allowed[0, :4] = True
    allowed[0, 20] = True
    moved = stack.forward(tokens[4:5], torch.tensor([4]), store.clone(), 20, 21, allowed)
    torch.testing.assert_close(moved, in_place, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["int8", "bfloat16"])
def test_cheaper_copies_draft_what_the_original_would_on_most_tokens(fmt):
    model = tiny_llama(1, vocab_size=64, hidden_size=64, num_layers=3, init_std=0.1)
    exact, copy = stack_of(model), stack_of(model, fmt)
    tokens = torch.randint(0, 64, (40,), generator=torch.Generator().manual_seed(0))
    causal = torch.ones(40, 40, dtype=torch.bool).tril()
    reference = exact.forward(tokens, torch.arange(40), empty_store(exact), 0, 40, causal, logits_rows=40)
    cheap = copy.forward(tokens, torch.arange(40), empty_store(copy), 0, 40, causal, logits_rows=40)
    agreement = float((reference.argmax(-1) == cheap.argmax(-1)).float().mean())
    assert agreement >= 0.85
    assert 0 < float((reference - cheap).abs().max()) < 0.5 * float(reference.abs().max())  # really converted


def test_unsupported_architectures_are_refused_with_what_to_use_instead():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20))
    with pytest.raises(ModelMismatchError, match="Llama family.*'gpt2'.*draft_model"):
        target_layers(model)


def test_a_tensor_parallel_target_is_refused():
    from specdec_plugin_selfspec.stack import check_architecture

    model = tiny_llama()
    model.specdec_tp = object()  # what specdec.models sets on a target sharded over ranks
    with pytest.raises(ModelMismatchError, match="tensor-parallel target splits across ranks.*target.tp_size 1"):
        check_architecture(model)


def test_auto_format_measures_bfloat16_against_int8_only_where_both_run(monkeypatch):
    import specdec_plugin_selfspec.formats as formats

    measured = []
    timings = {"int8": 2e-4, "bfloat16": 1e-4}

    def measure(target, candidates):
        measured.append(tuple(candidates))
        return {fmt: timings[fmt] for fmt in candidates}

    monkeypatch.setattr(formats, "measure_formats", measure)
    monkeypatch.setattr(formats.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(formats, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    assert not native_bfloat16(torch.device("cpu")) and choose_format("auto", tiny_llama()) == "int8"
    assert measured == []  # emulated bf16 is never faster: nothing to measure
    monkeypatch.setattr(formats, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16", "amx_tile"}))
    model = tiny_llama()
    assert native_bfloat16(torch.device("cpu")) and choose_format("auto", model) == "bfloat16"
    assert measured == [("int8", "bfloat16")]
    assert choose_format("auto", model) == "bfloat16" and len(measured) == 1  # measured once per target
    timings["int8"] = 5e-5  # native bf16, but int8's products measure faster: int8
    assert choose_format("auto", tiny_llama()) == "int8"
    assert choose_format("auto", tiny_llama(), seconds={"int8": 3.0, "bfloat16": 2.0, "float32": 1.0}) == "bfloat16"
    assert choose_format("auto", tiny_llama().to(torch.bfloat16)) == "int8"  # a bf16 target: int8 reads fewer bytes
    assert choose_format("int8", tiny_llama()) == "int8"
    assert len(measured) == 2
    monkeypatch.setattr(formats, "int8_available", lambda: False)  # no quantized engine: native bf16 alone
    assert choose_format("auto", tiny_llama()) == "bfloat16" and len(measured) == 2


def test_int8_activations_get_8_bits_only_where_the_kernel_does_not_saturate():
    """fbgemm's AVX2 kernels add pairs of u8 x s8 products in int16: forced onto them (a fresh
    process, as fbgemm reads the variable once), 8-bit activations would saturate, and the probe
    must say so. Where the CPU has AVX512-VNNI, fbgemm's default kernel does not saturate."""
    import subprocess
    import sys

    from specdec_plugin_selfspec.formats import cpu_flags, int8_full_range

    probe = "from specdec_plugin_selfspec.formats import int8_full_range; print(int8_full_range())"
    forced = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            env={**os.environ, "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"})
    assert forced.stdout.strip() == "False"
    # fbgemm's own choice on a VNNI CPU (unless this process was told to pick other kernels)
    if (torch.backends.quantized.engine in ("x86", "fbgemm") and "avx512_vnni" in cpu_flags()
            and "FBGEMM_ENABLE_INSTRUCTIONS" not in os.environ):
        assert int8_full_range()


def test_int8_products_are_close_to_float_and_closer_with_8_bit_activations(monkeypatch):
    import specdec_plugin_selfspec.formats as formats

    allowed = formats.int8_full_range()
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 512, generator=generator) * 0.05
    x = torch.randn(64, 512, generator=generator)
    exact = x @ weight.t()
    errors = {}
    for full in (False, True) if allowed else (False,):
        monkeypatch.setattr(formats, "int8_full_range", lambda: full)
        errors[full] = float((formats.projection("int8", [weight], [None])(x) - exact).abs().mean())
    assert errors[False] < 0.05 * float(exact.abs().mean())
    if not allowed:
        pytest.skip("this CPU has no AVX512-VNNI: int8 copies keep 7-bit activations (checked above)")
    assert errors[True] < 0.75 * errors[False]


def test_auto_format_is_bfloat16_on_cuda():
    from specdec_plugin_selfspec.formats import auto_candidates

    assert auto_candidates(torch.device("cuda"), torch.float32) == ("bfloat16",)
    assert auto_candidates(torch.device("cuda"), torch.bfloat16) == ("bfloat16",)


def test_measure_formats_times_each_format_of_one_layer():
    from specdec_plugin_selfspec.formats import measure_formats

    seconds = measure_formats(tiny_llama(), ("int8", "bfloat16", "float32"), repeats=3)
    assert set(seconds) == {"int8", "bfloat16", "float32"} and all(value > 0 for value in seconds.values())
