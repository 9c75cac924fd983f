"""`specdec serve --tp-size 2` under torchrun on 2 CPU ranks (gloo): rank 0 answers HTTP and the
other rank follows its scheduler step for step (specdec_plugin_serve.tensor_parallel)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from specdec import Pipeline, SamplingParams
from specdec.testing import save_tiny_model
from specdec_plugin_serve.tensor_parallel import seeded


def test_unseeded_requests_get_a_seed_and_seeded_ones_keep_theirs():
    assert seeded(SamplingParams(temperature=0.7, seed=5)).seed == 5
    drawn = {seeded(SamplingParams(temperature=0.7)).seed for _ in range(3)}
    assert None not in drawn and len(drawn) == 3


@pytest.mark.slow
def test_a_two_rank_server_answers_as_one_process_and_survives_a_cancelled_stream(tmp_path, server_url):
    model = save_tiny_model(tmp_path / "model")
    path = tmp_path / "tiny.yaml"
    path.write_text(f"name: tiny\ntarget: {{model: {model}}}\ndrafter: {{type: prompt_lookup}}\n"
                    "sampling: {max_new_tokens: 400}\n")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "CUDA_VISIBLE_DEVICES": "",
                   "SPECDEC_LOAD_PLUGINS": "specdec_plugin_serve,specdec_plugin_retrieval"}
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "specdec.cli",
         "serve", str(path), "--tp-size", "2", "--port", "0", "--log-level", "warning"],
        stderr=subprocess.PIPE, text=True, env=environment)
    try:
        url = server_url(process, timeout=120)
        prompts = ["one two one two one", "a b c a b c a"]
        # a stream cancelled mid-way: both ranks must drop it at the same step
        body = {"model": "tiny", "prompt": "x y x y x y", "max_tokens": 400, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    break
        answers = [httpx.post(f"{url}/v1/completions", timeout=60,
                              json={"model": "tiny", "prompt": prompt, "max_tokens": 24}).json()["choices"][0]["text"]
                   for prompt in prompts]
        sampled = [httpx.post(f"{url}/v1/completions", timeout=60, json={
            "model": "tiny", "prompt": prompts[0], "max_tokens": 24, "temperature": 0.8}).status_code
            for _ in range(2)]
        refused = httpx.post(f"{url}/v1/completions", timeout=60, json={
            "model": "tiny", "prompt": "hi", "max_tokens": 4, "speculation": {"params": {"num_tokens": 2}}})
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    single = Pipeline.from_yaml(path)
    assert answers == [single.generate(prompt, max_new_tokens=24).text for prompt in prompts]
    assert sampled == [200, 200]  # rank-0 seeds keep the ranks together under sampling
    assert refused.status_code == 400 and "tensor-parallel server" in refused.json()["error"]["message"]

