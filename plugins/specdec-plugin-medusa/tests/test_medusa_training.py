"""Training: data files, precomputed hidden states, resumable training, and the whole
`specdec medusa train` command on a tiny model, ending in a pipeline that uses the heads."""

import json

import pytest
import torch

from specdec import InputError, Pipeline, TokenSequence, main, read_corpus, target_signature
from specdec.testing import sample_sequences, save_tiny_model, tiny_llama, tiny_tokenizer

from specdec_plugin_medusa.data import load_prompts, shipped_prompts_path
from specdec_plugin_medusa.features import IGNORE, compute_features, training_positions
from specdec_plugin_medusa.heads import read_config
from specdec_plugin_medusa.train import Trainer, TrainConfig


def test_the_shipped_prompt_set_is_a_few_hundred_chat_prompts():
    conversations = load_prompts()
    assert len(conversations) >= 250
    assert all(conversation[-1]["role"] == "user" for conversation in conversations)
    assert shipped_prompts_path().name == "prompts.jsonl"


def test_every_corpus_format_is_read_with_the_right_spans_to_learn(tmp_path):
    tokenizer = tiny_tokenizer()
    records = [
        {"token_ids": [3, 4, 5, 6, 7], "num_prompt_tokens": 2},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"prompt": "hi", "response": "ok"},
        {"text": "plain words"},
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(record) for record in records) + "\n")
    (tmp_path / "notes.txt").write_text("first doc\n\nsecond doc\n")
    sequences = read_corpus([tmp_path / "data.jsonl", tmp_path / "notes.txt"], tokenizer)
    assert len(sequences) == 6
    assert sequences[0] == TokenSequence((3, 4, 5, 6, 7), ((2, 5),))
    chat = sequences[1]
    [(start, end)] = chat.spans
    assert tokenizer.decode(list(chat.token_ids[start:end])) == "yo<|im_end|>"  # the answer and its end
    [(start, end)] = sequences[2].spans
    assert tokenizer.decode(list(sequences[2].token_ids[start:end])) == "ok<|im_end|>"
    assert sequences[3].spans == ((0, len("plain words")),)
    assert [tokenizer.decode(list(sequence.token_ids)) for sequence in sequences[4:]] == ["first doc", "second doc"]


def test_bad_corpus_lines_name_the_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"answer": 3}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: expected 'token_ids'"):
        read_corpus([tmp_path / "bad.jsonl"], tiny_tokenizer())


def test_long_sequences_are_cut_into_windows(tmp_path):
    (tmp_path / "long.jsonl").write_text(json.dumps({"token_ids": list(range(10)), "num_prompt_tokens": 3}) + "\n")
    windows = read_corpus([tmp_path / "long.jsonl"], tokenizer=None, max_length=4)
    assert [window.token_ids for window in windows] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert [window.spans for window in windows] == [((3, 4),), ((0, 4),), ((0, 2),)]


def test_training_positions_and_labels_stay_inside_the_learned_span():
    sequence = TokenSequence((10, 11, 12, 13, 14, 15), ((3, 6),))
    positions, futures = training_positions(sequence, max_future=3)
    # position 2 predicts token 3 (the first learned one); head k learns futures[:, k + 1]
    assert positions == [2, 3, 4]
    assert futures == [[13, 14, 15], [14, 15, IGNORE], [15, IGNORE, IGNORE]]


def test_precomputed_states_are_what_the_lm_head_reads():
    model = tiny_llama(0, vocab_size=12)
    sequences = [TokenSequence((1, 2, 3, 4, 5), ((2, 5),)), TokenSequence((6, 7, 8), ((1, 3),))]
    features = compute_features(model, sequences, max_future=3, progress=False)
    assert features.hidden.dtype == torch.float16 and features.num_positions == 3 + 2
    with torch.inference_mode():
        fresh = model(torch.tensor([[1, 2, 3, 4, 5]]), output_hidden_states=True)
    torch.testing.assert_close(features.hidden[:3].float(), fresh.hidden_states[-1][0, 1:4], atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(model.lm_head(features.hidden[:3].float()).argmax(-1),
                               fresh.logits[0, 1:4].argmax(-1))


def trainer(model, features, folder, **overrides):
    options = dict(num_heads=2, epochs=3, batch_size=32, eval_fraction=0.2, dtype="float32", top_k=3)
    options.update(overrides)
    return Trainer(TrainConfig(**options), features, model.get_output_embeddings().weight,
                   target_signature(model), folder)


def test_a_resumed_run_ends_with_the_same_heads_as_an_uninterrupted_one(tmp_path):
    model = tiny_llama(0, vocab_size=12)
    features = compute_features(model, sample_sequences(model, count=12, length=20), max_future=3, progress=False)
    straight = trainer(model, features, tmp_path / "straight")
    straight.train(progress=False)
    interrupted = trainer(model, features, tmp_path / "resumed")
    interrupted.train(progress=False, max_steps=4)
    assert (tmp_path / "resumed" / "checkpoint.pt").is_file()
    resumed = trainer(model, features, tmp_path / "resumed")
    assert resumed.resume() and resumed.step == 4
    resumed.train(progress=False)
    assert resumed.step == straight.step == straight.total_steps
    for name, tensor in straight.heads.state_dict().items():
        torch.testing.assert_close(resumed.heads.state_dict()[name], tensor, rtol=0, atol=0)
    with pytest.raises(InputError, match="other training settings \\(learning_rate\\)"):
        trainer(model, features, tmp_path / "resumed", learning_rate=0.5).resume()


def test_training_makes_the_heads_better_than_the_identity_start(tmp_path):
    model = tiny_llama(0, vocab_size=12)
    features = compute_features(model, sample_sequences(model, count=24, length=30, temperature=0.0),
                                max_future=3, progress=False)
    run = trainer(model, features, tmp_path, epochs=20, learning_rate=3e-3)
    before = run.evaluate()
    run.train(progress=False)
    after = run.evaluate()
    assert all(late > early for early, late in zip(before["top1"], after["top1"]))
    assert len(after["per_rank"]) == 2 and len(after["per_rank"][0]) == 3
    assert after["topk"][0] == pytest.approx(sum(after["per_rank"][0]), abs=1e-3)


def test_the_train_command_runs_the_whole_recipe_and_its_heads_work_in_a_pipeline(tmp_path, capsys):
    model_path = save_tiny_model(tmp_path / "tiny", seed=1, init_std=0.3)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": text}) for text in
                                 ["tell me a story", "what is rain?", "say hello", "count to five",
                                  "name a color", "why is the sea salty?"]) + "\n")
    out = tmp_path / "run"
    arguments = ["medusa", "train", "--out", str(out), "--model", model_path, "--self-distill", "--prompts",
                 str(prompts), "--max-new-tokens", "16", "--distill-temperatures", "0", "1", "--num-heads", "2",
                 "--epochs", "4", "--batch-size", "16", "--eval-fraction", "0.2", "--dtype", "float32",
                 "--tree-nodes", "3", "--checkpoint-every", "2", "--quiet"]
    assert main(arguments) == 0
    output = capsys.readouterr().out
    assert "held-out accuracy per head" in output and "recommended tree: 3 nodes" in output
    for name in ("distill-T0.jsonl", "distill-T1.jsonl", "features.pt", "checkpoint.pt", "report.json"):
        assert (out / name).is_file()
    config = read_config(out / "heads")
    assert config.num_heads == 2 and len(config.tree) == 3
    assert config.training["steps"] > 0 and config.training["self_distillation"]["temperatures"] == [0.0, 1.0]
    assert main(arguments) == 1  # a second run refuses to overwrite the checkpoint without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(arguments + ["--resume"]) == 0  # everything is reused: nothing left to do
    assert "resuming at step" in capsys.readouterr().out

    greedy = {"target": {"model": model_path}, "sampling": {"temperature": 0, "max_new_tokens": 20}}
    medusa = Pipeline.from_dict({**greedy, "drafter": {"type": "medusa", "params": {"heads": str(out / "heads")}}})
    plain = Pipeline.from_dict(greedy)
    assert medusa.generate("say hello").token_ids == plain.generate("say hello").token_ids

    assert main(["medusa", "tree", "--heads", str(out / "heads"), "--nodes", "2", "--json"]) == 0
    [tree] = json.loads(capsys.readouterr().out)["trees"]
    assert tree["nodes"] == 2
