"""The drafters in YAML pipelines on a tiny local model, and the `specdec retrieval` commands."""

import json

import pytest

from specdec import InputError, ModelMismatchError, Pipeline, main, measure_cost_model
from specdec.testing import save_tiny_model
from specdec_plugin_retrieval.store import open_store

PROMPT = "the cat sat on the mat. the cat sat on the"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), seed=3)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, model_dir):
    folder = tmp_path_factory.mktemp("pipeline-store")
    corpus = folder / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "the cat sat on the mat. the dog sat on the log."}) + "\n")
    assert main(["retrieval", "build", str(corpus), "--tokenizer", model_dir, "-o", str(folder / "store")]) == 0
    return folder / "store"


def pipeline(model_dir, drafter):
    return Pipeline.from_dict({"target": {"model": model_dir}, "drafter": drafter,
                               "sampling": {"max_new_tokens": 40, "stop_token_ids": []}})


def test_yaml_pipelines_generate_what_plain_decoding_generates(model_dir, store_dir):
    plain = pipeline(model_dir, {"type": "none"}).generate(PROMPT)
    for drafter in (
        {"type": "prompt_lookup"},
        {"type": "prompt_lookup", "params": {"max_branches": 3, "selection": "frequent", "adaptive": False}},
        {"type": "rest", "params": {"store": str(store_dir)}},
        {"type": "fallback", "params": {"drafters": [{"type": "prompt_lookup"},
                                                     {"type": "rest", "params": {"store": str(store_dir)}}]}},
    ):
        result = pipeline(model_dir, drafter).generate(PROMPT)
        assert result.token_ids == plain.token_ids, drafter
        sampled = pipeline(model_dir, drafter).generate(PROMPT, temperature=0.8, seed=5)
        assert len(sampled.token_ids) == 40


def test_rest_pipeline_refuses_a_missing_store_or_another_tokenizer(tmp_path, model_dir, store_dir):
    with pytest.raises(InputError, match="no retrieval store at"):
        pipeline(model_dir, {"type": "rest", "params": {"store": str(tmp_path / "none")}})
    other = save_tiny_model(tmp_path / "other", seed=3)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["cat"])
    tokenizer.save_pretrained(other)
    with pytest.raises(ModelMismatchError, match="different vocabulary"):
        pipeline(other, {"type": "rest", "params": {"store": str(store_dir)}})


def test_build_with_a_pipeline_and_info(tmp_path, model_dir, capsys):
    corpus = tmp_path / "notes.txt"
    corpus.write_text("one document of plain text")
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text(f"target: {{model: {model_dir}}}\ndrafter: {{type: prompt_lookup}}\n")
    assert main(["retrieval", "build", str(corpus), "--pipeline", str(yaml_file), "-o", str(tmp_path / "s")]) == 0
    assert "1 documents" in capsys.readouterr().out
    assert main(["retrieval", "info", str(tmp_path / "s"), "--verify"]) == 0
    assert "sha256 verified" in capsys.readouterr().out
    assert main(["retrieval", "info", str(tmp_path / "s"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_documents"] == 1


def test_cli_errors_are_one_line_messages(tmp_path, model_dir, capsys):
    assert main(["retrieval", "build", str(tmp_path / "missing.txt"), "--tokenizer", model_dir,
                 "-o", str(tmp_path / "s")]) == 1
    assert "corpus file" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    assert main(["retrieval", "build", str(tmp_path / "empty.txt"), "--tokenizer", model_dir,
                 "-o", str(tmp_path / "s")]) == 1
    assert "the corpus is empty" in capsys.readouterr().err
    assert main(["retrieval", "info", str(tmp_path / "s")]) == 1
    assert "no retrieval store" in capsys.readouterr().err
    assert main(["retrieval", "self-distill", "-o", str(tmp_path / "d"), "--model", model_dir,
                 "--batch-size", "0"]) == 2


def test_self_distill_answers_prompts_builds_a_store_and_resumes(tmp_path, model_dir, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("say hello\nname a color\ncount to three\n")
    output = tmp_path / "store"
    args = ["retrieval", "self-distill", "--model", model_dir, "--prompts", str(prompts), "-o", str(output),
            "--max-new-tokens", "6", "--batch-size", "2"]
    assert main(args) == 0
    corpus = tmp_path / "store.corpus.jsonl"
    records = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert sorted(record["messages"][0]["content"] for record in records) == ["count to three", "name a color",
                                                                             "say hello"]
    assert all(record["messages"][-1]["role"] == "assistant" for record in records)
    assert open_store(output).meta["num_documents"] == 3
    # an interrupted run left half a line: the rerun drops it and answers that prompt again only
    corpus.write_text(corpus.read_text() + '{"messages": [{"role": "us')
    assert main(args + ["--overwrite"]) == 0
    assert len(corpus.read_text().splitlines()) == 3
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err


def test_the_shipped_prompt_set_is_large_and_diverse():
    from specdec import read_chat_prompts
    from specdec_plugin_retrieval.self_distill import default_prompts_path

    records = [json.loads(line) for line in default_prompts_path().read_text().splitlines()]
    assert len(read_chat_prompts(default_prompts_path())) == len(records) >= 300
    categories = {record["category"] for record in records}
    assert {"writing", "coding", "math", "explanation", "summary", "extraction"} <= categories


def test_node_cost_auto_measures_the_target_once(model_dir):
    built = pipeline(model_dir, {"type": "prompt_lookup", "params": {"node_cost": "auto"}})
    cost = built.drafter.drafting.cost
    assert measure_cost_model(built.model) is cost  # the core's measurement of this target, cached per model
    sizes = [size for size, _ in cost.curve]
    costs = [value for _, value in cost.curve]
    assert sizes[0] == 1 and sizes == sorted(sizes)
    assert 1.0 <= costs[0] and costs == sorted(costs)  # a larger draft never costs less
    assert cost.step_cost(8) == costs[sizes.index(8)]
    plain = pipeline(model_dir, {"type": "none"}).generate(PROMPT)
    assert built.generate(PROMPT).token_ids == plain.token_ids


def test_a_store_with_out_of_vocabulary_ids_is_refused_when_the_pipeline_is_built(tmp_path, model_dir,
                                                                                  store_dir):
    import shutil

    import numpy as np

    damaged = tmp_path / "store"
    shutil.copytree(store_dir, damaged)
    tokens = np.load(damaged / "tokens.npy")
    top = tokens[tokens != tokens.max()].max()  # the largest id (the separator is the dtype's maximum)
    tokens[tokens == top] = 1000  # same size, same suffix order, an id no tiny model has
    np.save(damaged / "tokens.npy", tokens)
    open_store(damaged)  # the cheap checks on opening cannot see it
    with pytest.raises(ModelMismatchError, match=f"retrieval store {damaged} holds the token id 1000, outside "
                                                 f"the target model's vocabulary"):
        pipeline(model_dir, {"type": "rest", "params": {"store": str(damaged)}})
