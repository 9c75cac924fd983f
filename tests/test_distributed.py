"""Tensor-parallel targets: 2 CPU processes (gloo) under torchrun against one process.

The tiny Llama has 4 query and 2 key/value heads, so each rank holds 2 and 1. Outputs are
compared in float32: the sharded forward sums the row-parallel products in another order than
one process (logits differ by ~1e-6), and the tiny model's peaked logits leave no near-tie for
that to flip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specdec.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from tp_cases import PROMPTS, pipeline_data  # noqa: E402

WORKER = Path(__file__).parent / "tp_worker.py"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from specdec.testing import save_tiny_model

    folder = tmp_path_factory.mktemp("tiny")
    save_tiny_model(folder / "target-draft", seed=1)  # the draft model of tp_cases' "sampling_draft_model"
    return save_tiny_model(folder / "target")


def torchrun(*arguments: str, processes: int = 2, timeout: float = 240, **env) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node processes ARGUMENTS...` on CPU ranks (a script and its
    arguments, or "-m", a module, ...); a rank that aborts prints its threads' stacks."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
                   "CUDA_VISIBLE_DEVICES": "", "PYTHONFAULTHANDLER": "1", **env}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)


def launch(cases: str, model: str, out: Path, timeout: float = 240, processes: int = 2,
           **env) -> subprocess.CompletedProcess:
    """Run tests/tp_worker.py on CPU ranks under torchrun; the ranks' tokens land in `out`."""
    out.mkdir(exist_ok=True)
    return torchrun(str(WORKER), cases, model, str(out), processes=processes, timeout=timeout, **env)


def ranks(out: Path, count: int = 2) -> list[dict]:
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(count)]


def single_process(case: str, model: str) -> dict:
    from specdec.pipeline import Pipeline

    pipeline = Pipeline.from_dict(pipeline_data(case, model))
    return {"single": pipeline.generate(PROMPTS[0]).token_ids,
            "batch": [result.token_ids for result in pipeline.generate_batch(PROMPTS)]}


def test_two_ranks_match_one_process_token_for_token(tiny_model, tmp_path):
    """Greedy with prompt lookup (chains) and token recycling (trees), one request and a batch of
    two, equal one process; seeded and unseeded sampling, with prompt lookup and with a replicated
    draft model sampling its drafts, give the same tokens on both ranks."""
    done = launch("prompt_lookup,tree,sampling,sampling_unseeded,sampling_draft_model,megatron", tiny_model, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    first, second = ranks(tmp_path)
    assert first == second
    assert {case: result.pop("q_rows") for case, result in first.items()} == dict.fromkeys(first, 16)  # of 32
    reference = single_process("prompt_lookup", tiny_model)
    assert first["prompt_lookup"] == reference
    assert first["megatron"] == reference  # parallelize_module's split, as for a model without a plan
    assert first["tree"] == single_process("tree", tiny_model)
    assert first["sampling"]["single"] != first["sampling_unseeded"]["single"]


def test_a_model_without_plan_or_standard_projections_is_refused():
    import torch

    from specdec.distributed import TensorParallel, megatron_parallelize
    from specdec.errors import ModelMismatchError

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.Linear(4, 4)

    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([Layer()])
    with pytest.raises(ModelMismatchError, match=r"no tensor-parallel plan in transformers.*mlp.down_proj.*"
                                                 r"run it with target.tp_size 1"):
        megatron_parallelize(model, TensorParallel(0, 2, torch.device("cpu")))


def test_a_failing_rank_takes_the_job_down(tiny_model, tmp_path):
    done = launch("fail", tiny_model, tmp_path, timeout=180, SPECDEC_TP_TIMEOUT="20")
    assert done.returncode != 0
    assert "rank 1 failed on purpose" in done.stderr
    assert not (tmp_path / "rank0.json").exists()


@pytest.mark.slow
def test_the_default_model_on_three_ranks_decodes_as_one_process(tmp_path):
    """SmolLM2-135M (9 query, 3 key/value heads) split 3 ways, greedy with prompt lookup."""
    from specdec.models import DEFAULT_MODEL

    done = launch("prompt_lookup", DEFAULT_MODEL, tmp_path, timeout=400, processes=3)
    assert done.returncode == 0, done.stderr[-4000:]
    results = ranks(tmp_path, 3)
    assert results[0] == results[1] == results[2]
    assert results[0]["prompt_lookup"].pop("q_rows") == 576 // 3
    assert results[0]["prompt_lookup"] == single_process("prompt_lookup", DEFAULT_MODEL)


@pytest.mark.slow
def test_a_hung_rank_times_out_the_job(tiny_model, tmp_path):
    done = launch("hang", tiny_model, tmp_path, timeout=180, SPECDEC_TP_TIMEOUT="10")
    assert done.returncode != 0
    assert "rank 0 of 2: the sharded target's forward failed" in done.stderr, done.stderr[-3000:]
    assert "SPECDEC_TP_TIMEOUT (now 10 s)" in done.stderr


@pytest.mark.slow
def test_ranks_with_different_pipelines_are_refused(tiny_model, tmp_path):
    done = launch("disagree", tiny_model, tmp_path, timeout=180)
    assert done.returncode != 0
    assert "the ranks disagree on the pipeline" in done.stderr, done.stderr[-3000:]


EXITING_RANK = """
import sys, torch, torch.distributed
from specdec import exit_rank
torch.distributed.init_process_group("gloo")
held = torch.distributed.group.WORLD  # as a sharded model holds its group past the end of the script
block = torch.zeros(1_000_000)
for _ in range(4):
    torch.distributed.broadcast(block, src=0)
print(f"rank {torch.distributed.get_rank()} done", end="")  # unflushed: exit_rank flushes
exit_rank(int(sys.argv[1]))
"""


def test_exit_rank_ends_a_rank_with_its_status_and_its_output(tmp_path):
    """The end that `specdec` and tests/tp_worker.py use. A plain exit (even after
    destroy_process_group) aborted one such 2-rank job in two here (gloo's worker threads freeing
    the last collective during interpreter shutdown: 'terminate called without an active exception')."""
    script = tmp_path / "exiting_rank.py"
    script.write_text(EXITING_RANK)
    done = torchrun(str(script), "0", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 done" in done.stdout and "rank 1 done" in done.stdout
    failed = torchrun(str(script), "3", timeout=120)
    assert failed.returncode != 0
    assert "exitcode  : 3" in failed.stderr and "SIGABRT" not in failed.stderr, failed.stderr[-3000:]


def test_exit_rank_outside_a_job_is_sys_exit():
    from specdec import exit_rank

    with pytest.raises(SystemExit) as exited:
        exit_rank(4)
    assert exited.value.code == 4


def test_tp_size_is_validated_in_the_pipeline_file():
    from specdec.config import TargetSpec

    assert TargetSpec().tp_size == 1
    assert TargetSpec(tp_size=4).tp_size == 4
    with pytest.raises(ValueError):
        TargetSpec(tp_size=0)


def test_tp_size_must_divide_the_heads():
    from transformers import LlamaConfig

    from specdec.distributed import check_divisible

    config = LlamaConfig(num_attention_heads=4, num_key_value_heads=2, hidden_size=32, intermediate_size=64)
    check_divisible(config, 2)
    with pytest.raises(ConfigError, match=r"tp_size 4 does not divide the model's 2 key/value heads; use one of: 1, 2"):
        check_divisible(config, 4)
    with pytest.raises(ConfigError, match="3 does not divide the model's 4 attention heads and 2 key/value heads"):
        check_divisible(config, 3)


def test_tp_size_above_one_needs_torchrun(monkeypatch):
    from specdec.distributed import start

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="launch specdec under torchrun"):
        start(2, "cpu")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="tp_size is 2 but torchrun started 4 processes"):
        start(2, "cpu")


def test_collective_timeout_comes_from_the_environment(monkeypatch):
    from specdec.distributed import DEFAULT_TIMEOUT_S, collective_timeout_seconds

    monkeypatch.delenv("SPECDEC_TP_TIMEOUT", raising=False)
    assert collective_timeout_seconds() == DEFAULT_TIMEOUT_S
    monkeypatch.setenv("SPECDEC_TP_TIMEOUT", "30")
    assert collective_timeout_seconds() == 30.0
    monkeypatch.setenv("SPECDEC_TP_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="SPECDEC_TP_TIMEOUT"):
        collective_timeout_seconds()


def test_one_rank_costs_nothing(tiny_model):
    """tp_size 1 starts no process group and leaves the model unsharded (no `specdec_tp`)."""
    import torch.distributed

    from specdec.pipeline import Pipeline

    pipeline = Pipeline.from_dict(pipeline_data("prompt_lookup", tiny_model))
    assert pipeline.tp is None
    assert not torch.distributed.is_initialized()
    assert not hasattr(pipeline.model, "specdec_tp")
    assert pipeline.verifier.runner.model is pipeline.model


@pytest.mark.slow
def test_generate_under_torchrun_prints_once_what_one_process_prints(tiny_model, tmp_path):
    """`specdec generate --tp-size 2` under torchrun: rank 0 alone prints, the same text as one process."""
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"target: {{model: {tiny_model}}}\ndrafter: {{type: prompt_lookup}}\n"
                        "sampling: {temperature: 0.0, max_new_tokens: 16}\n")
    argv = ["generate", "--raw", "--json", "-p", str(pipeline), "one two one two one"]
    sharded = torchrun("-m", "specdec.cli", *argv, "--tp-size", "2")
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "specdec.cli", *argv], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
                                              "CUDA_VISIBLE_DEVICES": ""})
    assert single.returncode == 0, single.stderr[-3000:]
    lines = sharded.stdout.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["token_ids"] == json.loads(single.stdout)["token_ids"]


def test_generate_refuses_stdin_and_bad_tp_sizes(capsys, monkeypatch):
    from specdec.cli import main

    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("a prompt"))
    assert main(["generate", "--tp-size", "2"]) == 2
    assert "pass the prompt as an argument or with --prompts-file" in capsys.readouterr().err
    assert main(["generate", "--tp-size", "0", "hi"]) == 2
    assert "--tp-size must be >= 1, got 0" in capsys.readouterr().err


def test_torchrun_without_tp_size_is_refused(capsys, monkeypatch):
    """Ranks that would each decode the whole model alone (and print the same text)."""
    from specdec.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["generate", "hi"]) == 2
    assert "torchrun started 2 processes but <default pipeline> has target.tp_size 1: pass --tp-size 2" \
        in capsys.readouterr().err
