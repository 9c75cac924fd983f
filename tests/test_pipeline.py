"""Pipeline: YAML -> components -> text, chat and streaming generation on a tiny local model."""

import logging
import types
from pathlib import Path

import pytest
from pydantic import BaseModel

from specdec import InputError, Pipeline, RejectionSampling, hookimpl
from specdec.plugins import load_plugins
from specdec.testing import save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), seed=4)


@pytest.fixture(scope="module")
def pipelines(model_dir):
    plain = Pipeline.from_dict({"target": {"model": model_dir}, "sampling": {"max_new_tokens": 24}})
    speculative = Pipeline.from_dict({
        "target": {"model": model_dir},
        "drafter": {"type": "draft_model", "params": {"model": model_dir, "num_tokens": 3}},
        "sampling": {"max_new_tokens": 24}})
    return plain, speculative


def test_from_yaml_builds_the_named_components(tmp_path, model_dir):
    path = tmp_path / "p.yaml"
    path.write_text(f"name: tiny-spec\ntarget: {{model: {model_dir}}}\n"
                    f"drafter: {{type: draft_model, params: {{model: {model_dir}, num_tokens: 2}}}}\n"
                    f"acceptance: {{type: rejection}}\nsampling: {{max_new_tokens: 5}}\n")
    pipeline = Pipeline.from_yaml(path)
    assert type(pipeline.drafter).__name__ == "DraftModelDrafter" and pipeline.drafter.num_tokens == 2
    assert isinstance(pipeline.policy, RejectionSampling) and pipeline.lossless
    assert pipeline.config.label == "tiny-spec"
    assert len(pipeline.generate("abc").token_ids) <= 5


def test_text_chat_and_id_prompts(pipelines):
    plain, speculative = pipelines
    for prompt in ("hello there", [{"role": "user", "content": "hi"}], [3, 4, 5]):
        expected = plain.generate(prompt)
        result = speculative.generate(prompt)
        assert result.token_ids == expected.token_ids and result.text == expected.text
        assert result.stats.steps <= expected.stats.steps
    chat = plain.encode([{"role": "user", "content": "hi"}])
    assert plain.tokenizer.decode(chat).endswith("<|im_start|>assistant\n")


def test_stream_pieces_join_to_the_generated_text(pipelines):
    _, speculative = pipelines
    stream = speculative.stream("once upon", temperature=0.9, seed=1)
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text
    assert stream.result.token_ids == speculative.generate("once upon", temperature=0.9, seed=1).token_ids


def test_sampling_overrides_and_stop_strings(pipelines):
    plain, _ = pipelines
    assert len(plain.generate("abc", max_new_tokens=3).token_ids) == 3
    full = plain.generate("abc", max_new_tokens=24, stop_token_ids=())
    stop = full.text[5:7]
    cut = plain.generate("abc", max_new_tokens=24, stop_token_ids=(), stop_strings=(stop,))
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.index(stop)]


def test_streaming_never_shows_part_of_a_stop_string(pipelines):
    plain, _ = pipelines
    full = plain.generate("abc", max_new_tokens=24, stop_token_ids=())
    stop = full.text[6:9]
    stream = plain.stream("abc", max_new_tokens=24, stop_token_ids=(), stop_strings=(stop,))
    assert "".join(stream) == stream.result.text == full.text[: full.text.index(stop)]


def test_bad_prompts_are_refused(pipelines):
    plain, _ = pipelines
    with pytest.raises(InputError, match="empty"):
        plain.generate("")
    with pytest.raises(InputError, match="'role' and 'content'"):
        plain.generate([{"text": "hi"}])
    with pytest.raises(InputError, match="a prompt is"):
        plain.generate([1.5, 2])


def test_a_lossy_policy_is_announced(model_dir, caplog):
    class Params(BaseModel):
        pass

    module = types.ModuleType("lossy")
    module.register_acceptance_policies = hookimpl(
        lambda register: register("sloppy", Params, lambda context, params: RejectionSampling(), lossless=False))
    module.register_acceptance_policies.__name__ = "register_acceptance_policies"
    plugins = load_plugins([("lossy", module)], entry_points=False)
    with caplog.at_level(logging.WARNING):
        pipeline = Pipeline.from_dict({"target": {"model": model_dir}, "acceptance": {"type": "sloppy"}},
                                      plugins=plugins)
    assert not pipeline.lossless and "LOSSY" in caplog.text


def test_a_draft_model_with_another_tokenizer_is_refused(tmp_path, model_dir):
    from transformers import AutoTokenizer

    other = save_tiny_model(tmp_path / "other")
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["zz"])
    tokenizer.save_pretrained(other)
    from specdec.errors import ModelMismatchError

    with pytest.raises(ModelMismatchError, match="different vocabulary"):
        Pipeline.from_dict({"target": {"model": model_dir},
                            "drafter": {"type": "draft_model", "params": {"model": other}}})


def test_relative_paths_resolve_against_the_pipeline_file(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    save_tiny_model(folder / "models" / "tiny", seed=4)
    (folder / "p.yaml").write_text("target: {model: models/tiny}\n"
                                   "drafter: {type: draft_model, params: {model: models/tiny, num_tokens: 2}}\n")
    monkeypatch.chdir(tmp_path)  # not the pipeline's folder
    pipeline = Pipeline.from_yaml(folder / "p.yaml")
    assert len(pipeline.generate("abc", max_new_tokens=4).token_ids) == 4
    from specdec.registry import BuildContext

    context = BuildContext(None, None, None, None, None, None, base_dir=folder)
    assert context.resolve_path("store") == folder / "store"
    assert context.resolve_path("/abs/store") == Path("/abs/store")


@pytest.mark.parametrize("prompt, message", [
    (b"Hello", "the prompt is bytes; decode it to text first"),
    (bytearray(b"Hi"), "the prompt is bytes"),
    ([1, True, 3], "prompt item 1 is bool True"),
    ([1, 2.0], "prompt item 1 is float 2.0"),
    ([1, -2], "prompt item 1 is the token id -2; token ids are >= 0"),
    ([[1, 2], [3]], "prompt item 0 is list [1, 2]"),
    ([1, "a"], "prompt item 1 is str 'a'"),
    (7, "the prompt is of type int"),
    ({"role": "user", "content": "hi"}, "the prompt is of type dict"),
    ([{"role": "user", "content": 5}], "chat message 0 needs 'role' and 'content' keys with string values"),
    ("caf\udce9", "the prompt is not valid text: character 3 stands for byte 0xe9"),
])
def test_prompts_that_are_not_text_messages_or_ids_are_refused(pipelines, prompt, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("[", r"\[")):
        pipelines[0].generate(prompt)


def test_id_tensors_are_prompts_but_not_float_or_2d_ones(pipelines):
    import torch

    plain = pipelines[0]
    assert plain.encode(torch.tensor([3, 4, 5])) == [3, 4, 5]
    with pytest.raises(InputError, match="prompt item 0 is float"):
        plain.encode(torch.tensor([3.0, 4.0]))
    with pytest.raises(InputError, match=r"must be 1-D, got shape \(1, 2\)"):
        plain.encode(torch.tensor([[3, 4]]))


def test_bad_sampling_overrides_are_input_errors_naming_the_field(pipelines):
    with pytest.raises(InputError, match="temperature: Input should be greater than or equal to 0"):
        pipelines[0].generate("hi", temperature=-1)
    with pytest.raises(InputError, match="tempreature: unknown sampling parameter"):
        pipelines[0].generate("hi", tempreature=1)


def test_a_greedy_pipeline_refuses_a_temperature_before_decoding(model_dir):
    pipeline = Pipeline.from_dict({"target": {"model": model_dir}, "acceptance": {"type": "greedy"}})
    with pytest.raises(InputError, match="'greedy' acceptance policy decodes deterministically"):
        pipeline.params(temperature=0.5)


def test_a_drafter_with_changed_params_is_validated_like_the_yaml_block(model_dir, pipelines):
    from specdec import ConfigError

    _, speculative = pipelines
    drafter = speculative.drafter_with({"num_tokens": 1})
    assert type(drafter) is type(speculative.drafter) and drafter.num_tokens == 1
    assert speculative.drafter.num_tokens == 3  # the pipeline's own drafters keep their params
    with pytest.raises(ConfigError, match=r"^speculation\.params\.num_tokens: must be >= 1$"):
        speculative.drafter_with({"num_tokens": 0}, location="speculation.params")
    with pytest.raises(ConfigError, match=r"drafter\.params\.num_tokns: unknown field \(did you mean 'num_tokens'\?\)"):
        speculative.drafter_with({"num_tokns": 2})
    prompt_ids = speculative.encode("hello there")
    handle = speculative.scheduler.submit(prompt_ids, speculative.params(), drafter=drafter)
    speculative.scheduler.run([handle])
    assert handle.result.tokens == speculative.generate("hello there").token_ids
    assert handle.stats.draft_tokens <= handle.stats.steps  # one draft token per step at most


def test_incremental_text_holds_back_a_possible_stop_string(pipelines):
    plain, _ = pipelines
    expected = plain.generate("hello there")
    stop = expected.text[5:8]
    params = plain.params(stop_strings=(stop,))
    text = plain.incremental_text(params)
    pieces = [text.add([token]) for token in expected.token_ids]
    pieces.append(text.finish())
    assert "".join(pieces) == text.text == expected.text[: expected.text.index(stop)]
    assert all(stop not in "".join(pieces[: index + 1]) for index in range(len(pieces)))
