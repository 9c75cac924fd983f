"""Training: unrolled levels match what the drafter computes, checkpoints resume to the same
model, and `specdec eagle train` / `export` run end to end into a working pipeline."""

import json

import pytest
import torch

from specdec import Pipeline, SamplingParams, main
from specdec.testing import sample_sequences, save_tiny_model, tiny_llama

from specdec_plugin_eagle.build import new_draft_model
from specdec_plugin_eagle.drafter import EagleDrafter, TreeShape, _Node
from specdec_plugin_eagle.features import compute_features, frequent_tokens
from specdec_plugin_eagle.train import Trainer, TrainConfig, unroll


@pytest.mark.parametrize("style", ["eagle1", "eagle3"])
def test_unrolled_levels_are_what_the_drafter_computes_for_a_chain(style):
    """Level m of training at position i is the chain drafted m deep after committing i + 1 tokens."""
    target = tiny_llama(2, vocab_size=16)
    model = new_draft_model(target, style=style, feature_layers=(0, 1, 2) if style == "eagle3" else None)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    tokens = [3, 9, 1, 4, 4, 12, 7, 2, 5, 11]
    with torch.inference_mode():
        hidden = target(torch.tensor([tokens]), output_hidden_states=True).hidden_states
        features = torch.cat([hidden[layer] for layer in model.config.feature_layers], dim=-1)
        levels = unroll(model, torch.tensor([tokens]), features, 3)
    cut = 6  # commit tokens[:cut]: features of positions 0..cut-2 are known, the root is tokens[cut - 1]
    drafter = EagleDrafter(model.eval().requires_grad_(False), TreeShape(depth=3, top_k=1, frontier=1, max_nodes=3))
    drafter.start(tokens[:cut], SamplingParams())
    drafter._features = features[0, : cut - 1]
    with torch.inference_mode():
        output = drafter._catch_up(tokens[:cut])
        # training runs one causal forward over the sequence, the drafter incremental ones over its
        # cache: float32 sums in another order, last bits differ by kernel (an AVX2-only CPU rounds
        # 1e-4 apart where AMX agrees to 1e-5); a wrong mask or position is off by far more
        torch.testing.assert_close(output, levels[0][0, cut - 2], rtol=1e-4, atol=1e-4)
        # deeper levels, teacher-forced: the drafted tokens are the real next ones
        produced, nodes, entry = {-1: output}, [], {}
        for depth in (1, 2):
            nodes.append(_Node(tokens[cut - 1 + depth], len(nodes) - 1, depth, 1.0, 1.0))
            result = drafter._feed(nodes, [len(nodes) - 1], entry, produced, cut - 1, cut)
            torch.testing.assert_close(result[0], levels[depth][0, cut - 2], rtol=1e-4, atol=1e-4)


def test_training_improves_accuracy_and_a_resumed_run_ends_with_the_same_model(tmp_path):
    target = tiny_llama(4, vocab_size=16, init_std=0.3)
    data = compute_features(target, sample_sequences(target, count=24, length=24, temperature=0.0),
                            (-1,), progress=False)
    config = TrainConfig(levels=2, epochs=6, batch_tokens=256, learning_rate=3e-3, eval_fraction=0.2,
                         eval_depth=3, dtype="float32")

    def trainer(folder):
        return Trainer(config, new_draft_model(target, draft_ids=frequent_tokens(torch.ones(16), 12, [15])),
                       data, folder)

    whole = trainer(tmp_path / "whole")
    before = whole.evaluate()
    whole.train(progress=False)
    after = whole.evaluate()
    assert after["chain"][0] > before["chain"][0] and after["chain"][2] <= after["chain"][1] <= after["chain"][0]
    first = trainer(tmp_path / "parts")
    first.train(progress=False, max_steps=whole.total_steps // 2, checkpoint_every=1)
    second = trainer(tmp_path / "parts")
    assert second.resume() and second.step == whole.total_steps // 2
    second.train(progress=False)
    for key, value in whole.model.state_dict().items():
        assert torch.allclose(value, second.model.state_dict()[key], atol=1e-5), key


def test_every_batch_of_every_epoch_is_trained_on_once_though_epochs_pack_differently(tmp_path):
    """Sequences of mixed lengths pack into a different number of batches in each epoch's shuffle:
    the schedule follows each epoch's own count (it once took the first epoch's for all, and a
    shorter later epoch ended training with an IndexError; a longer one lost its last batches)."""
    target = tiny_llama(4, vocab_size=16, init_std=0.3)
    sequences = [sequence for length in (6, 11, 17, 23, 29) for sequence in
                 sample_sequences(target, count=30, length=length, temperature=1.0, seed=length)]
    data = compute_features(target, sequences, (-1,), progress=False)
    config = TrainConfig(levels=1, epochs=3.5, batch_tokens=100, eval_fraction=0.1, dtype="float32")
    trainer = Trainer(config, new_draft_model(target), data, tmp_path)
    epochs = [trainer.batches.epoch(number) for number in range(4)]
    assert len({len(batches) for batches in epochs}) > 1  # the case at hand: epochs of different sizes
    half = -(-len(epochs[3]) // 2)
    assert [trainer.batch(step) for step in range(trainer.total_steps)] == \
        epochs[0] + epochs[1] + epochs[2] + epochs[3][:half]


def test_the_train_and_export_commands_give_draft_models_that_work_in_pipelines(tmp_path, capsys):
    model_path = save_tiny_model(tmp_path / "tiny", seed=1, init_std=0.3, num_layers=4)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": text}) for text in
                                 ["tell me a story", "what is rain?", "say hello", "count to five",
                                  "name a color", "why is the sea salty?"]) + "\n")
    out = tmp_path / "run"
    arguments = ["eagle", "train", "--out", str(out), "--model", model_path, "--prompts", str(prompts),
                 "--max-new-tokens", "16", "--distill-temperatures", "0", "1", "--style", "eagle3",
                 "--layers", "1", "2", "3", "--draft-vocab", "40", "--epochs", "3", "--batch-tokens", "128",
                 "--eval-fraction", "0.2", "--dtype", "float32", "--checkpoint-every", "2", "--quiet"]
    assert main(arguments) == 0
    output = capsys.readouterr().out
    assert "held-out top-1 accuracy by depth" in output and "depth 6:" in output
    for name in ("distill-T0.jsonl", "distill-T1.jsonl", "features.pt", "checkpoint.pt", "report.json"):
        assert (out / name).is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["training"]["steps"] > 0 and len(report["accuracy"]["chain"]) == 6
    assert main(arguments) == 1  # a second run refuses to overwrite the checkpoint without --resume
    assert "--resume" in capsys.readouterr().err
    assert main(arguments + ["--resume"]) == 0  # everything is reused: nothing left to do
    assert "resuming at step" in capsys.readouterr().out
    assert main(["eagle", "export", "--weights", str(out / "weights"), "--out", str(tmp_path / "eagle3"),
                 "--model", model_path, "--dtype", "float32"]) == 0

    greedy = {"target": {"model": model_path}, "sampling": {"temperature": 0, "max_new_tokens": 20}}
    plain = Pipeline.from_dict(greedy).generate("say hello").token_ids
    for weights in (out / "weights", tmp_path / "eagle3"):
        for tree in ("dynamic", "chain"):
            drafter = {"type": "eagle", "params": {"weights": str(weights), "tree": tree, "node_cost": 0.0}}
            assert Pipeline.from_dict({**greedy, "drafter": drafter}).generate("say hello").token_ids == plain
