"""Fuzz tests of specdec's contract: bad input returns a specdec error, never anything else.

Every test feeds random input to one entry point (YAML text, pipeline mappings, command lines,
prompts and sampling overrides) and checks the one property the whole library promises: it
returns, or raises a `SpecdecError` whose message names the input; never another exception (a
traceback for CLI users) and never a silently wrong result. Examples are bounded so the file
runs in seconds in CI; to hunt for more, run with SPECDEC_FUZZ_EXAMPLES=2000 and
HYPOTHESIS_PROFILE=thorough (random rather than derandomized examples).
"""

import contextlib
import io
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specdec import Pipeline
from specdec.cli import _parser, check_sampling_flags, read_prompts, validated_pipeline
from specdec.config import ValidatedPipeline, parse_yaml, validate_pipeline
from specdec.errors import ConfigError, InputError
from specdec.plugins import load_plugins
from specdec.testing import TINY_TOKENIZER_VOCAB, tiny_llama, tiny_tokenizer

PLUGINS = load_plugins()
REGISTRY = PLUGINS.registry
FUZZ = settings(max_examples=int(os.environ.get("SPECDEC_FUZZ_EXAMPLES", 60)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# -- pipeline files and mappings -------------------------------------------------------------------

#: Names a pipeline uses, so that random data often reaches phase 2 and the plugins' params models.
NAMES = sorted({"name", "target", "model", "device", "dtype", "drafter", "verifier", "acceptance", "sampling",
                "type", "params", "temperature", "top_k", "top_p", "seed", "max_new_tokens", "stop_strings",
                "stop_token_ids", "drafters", "num_tokens", "store", "heads", "tree", "num_nodes", "max_depth",
                "adaptive", "node_cost", "max_ngram", "min_ngram", "max_span", "min_span", "scheduler",
                "max_batch_size", "draft_budget", "auto", "off",
                *(name for kind in REGISTRY.components.values() for name in kind)})
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
           | st.sampled_from(NAMES) | st.text(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=4), inner, max_size=4),
                      max_leaves=20)
PIPELINES = st.dictionaries(st.sampled_from(NAMES) | SCALARS.filter(lambda value: value is not None), VALUES,
                            max_size=6)


@FUZZ
@given(data=PIPELINES | VALUES)
def test_random_pipeline_data_validates_or_is_a_config_error(data):
    try:
        validated = validate_pipeline(data, REGISTRY, "<fuzz>")
    except ConfigError as error:
        assert "<fuzz>" in str(error)
    else:
        assert isinstance(validated, ValidatedPipeline)


#: YAML pieces: tags that make PyYAML's constructors fail, anchors, aliases, merges, flow brackets.
YAML_PIECES = st.sampled_from([
    "\n", "  ", "- ", ": ", ", ", "[", "]", "{", "}", "&a ", "*a", "<<: ", "? ", "!!float ", "!!int ",
    "!!timestamp ", "!!bool ", "!!binary ", "!!set ", "!!omap ", "!!python/name:os.system ", "!custom ",
    "'", '"', "#", "|\n", ">\n", "---\n", "...\n", "0x", "1e400", ".nan", "~", "\t", "\x00", "\ud800",
    "\ufeff", "%YAML 1.1\n", *NAMES])


@FUZZ
@given(pieces=st.lists(YAML_PIECES | st.text(max_size=6), max_size=40))
def test_random_yaml_text_parses_and_validates_or_is_a_config_error(pieces):
    text = "".join(pieces)
    try:
        data = parse_yaml(text, "fuzz.yaml")
        validate_pipeline(data, REGISTRY, "fuzz.yaml", text)
    except ConfigError as error:
        assert "fuzz.yaml" in str(error)


@FUZZ
@given(raw=st.binary(max_size=64) | st.text(max_size=40).map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_random_bytes_in_a_pipeline_file_are_config_errors(tmp_path_factory, raw):
    from specdec.config import load_yaml

    path = tmp_path_factory.mktemp("fuzz") / "pipeline.yaml"
    path.write_bytes(raw)
    try:
        data, text = load_yaml(path)
        validate_pipeline(data, REGISTRY, str(path), text)
    except ConfigError as error:
        assert str(path) in str(error)


# -- the command line ------------------------------------------------------------------------------

COMMANDS = ["generate", "validate", "plugins", "bench", "retrieval", "medusa", "typical", "build", "info",
            "train", "tree", "self-distill", "distill"]
FLAGS = ["--prompts-file", "--batch-size", "--temperature", "-t", "--top-k", "--top-p", "--seed", "--max-new-tokens", "-n", "--stop", "--system",
         "--raw", "--json", "--no-stream", "--pipeline", "-p", "--help", "--version", "--verify", "--nodes",
         "--heads", "--tokenizer", "-o", "--questions", "--tasks", "--limit", "--", "-"]
ARGUMENTS = ["0", "-1", "0.7", "nan", "inf", "-inf", "1e309", "", " ", "3", "99999999999999999999999",
             "abc", "caf\udce9", "x.yaml"]


@FUZZ
@given(argv=st.lists(st.sampled_from(COMMANDS + FLAGS + ARGUMENTS) | st.text(max_size=6), max_size=8))
def test_random_command_lines_parse_or_exit_with_a_usage_error(argv):
    """argparse exits 2 on bad usage (0 for --help/--version); the generate flags that parse are
    then checked without loading a model: a ConfigError naming the flag, or fine."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            args = _parser(PLUGINS).parse_args(argv)
        except SystemExit as stopped:
            assert stopped.code in (0, 2), err.getvalue()
            return
        if not getattr(args, "prompt", None):
            return  # not `generate`, or prompts to read from stdin
        try:
            read_prompts(args)
            check_sampling_flags(validated_pipeline(None, PLUGINS), args)
        except ConfigError as error:
            assert str(error).startswith(("--", "the prompt", "prompt argument", "cannot read --prompts-file",
                                          "<default pipeline>")), str(error)


# -- prompts and overrides in the Python API -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pipeline():
    model = tiny_llama(0, vocab_size=TINY_TOKENIZER_VOCAB, eos_token_id=tiny_tokenizer().eos_token_id)
    return Pipeline.from_dict({"sampling": {"max_new_tokens": 2}}, model=model, tokenizer=tiny_tokenizer())


def _tensors():
    dtypes = st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.float32, torch.bool])
    shapes = st.lists(st.integers(0, 3), max_size=3)
    return st.builds(lambda dtype, shape, seed: (torch.randint(-3, TINY_TOKENIZER_VOCAB + 3, shape,
                                                               generator=torch.Generator().manual_seed(seed))
                                                 .to(dtype)),
                     dtypes, shapes, st.integers(0, 1000))


MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]) | SCALARS,
                                           "content": st.text(max_size=10) | SCALARS}), min_size=1, max_size=3)
PROMPTS = (st.binary(max_size=8) | st.text(max_size=12) | st.lists(st.integers(-3, 40), max_size=8)
           | st.lists(SCALARS | st.lists(st.integers(0, 5), max_size=2), max_size=4) | _tensors() | MESSAGES
           | SCALARS)


@FUZZ
@given(prompt=PROMPTS)
def test_random_prompts_generate_or_are_input_errors(tiny_pipeline, prompt):
    try:
        result = tiny_pipeline.generate(prompt)
    except InputError as error:
        assert "prompt" in str(error) or "chat message" in str(error), str(error)
        return
    assert not isinstance(prompt, (bytes, bytearray)), "bytes were taken for token ids"
    if isinstance(prompt, list) and all(type(item) is int for item in prompt):
        assert result.prompt_token_ids == prompt  # ids pass through unchanged
    if isinstance(prompt, torch.Tensor):
        assert prompt.ndim == 1 and not prompt.is_floating_point() and prompt.dtype != torch.bool
        assert result.prompt_token_ids == prompt.tolist()


OVERRIDES = st.dictionaries(
    st.sampled_from(["temperature", "top_k", "top_p", "seed", "max_new_tokens", "stop_strings",
                     "stop_token_ids", "tempreature"]),
    SCALARS | st.lists(SCALARS, max_size=2) | st.floats(0, 2), max_size=3)


@FUZZ
@given(overrides=OVERRIDES)
def test_random_sampling_overrides_generate_or_are_input_errors(tiny_pipeline, overrides):
    try:
        result = tiny_pipeline.generate([5, 6, 7], **overrides)
    except InputError as error:
        named = [key for key, value in overrides.items() if value is not None]
        assert any(key in str(error) for key in named), str(error)
        return
    temperature = overrides.get("temperature")
    assert temperature is None or (math.isfinite(float(temperature)) and float(temperature) >= 0)
    assert len(result.token_ids) <= (overrides.get("max_new_tokens") or 2)

