"""One rank of a tensor-parallel test job: `torchrun --nproc-per-node 2 tests/tp_worker.py CASES MODEL OUT`.

Builds the pipeline of each comma-separated case (tests/tp_cases.py; the test builds the same
pipelines in one process for reference) with `target.tp_size` = WORLD_SIZE, and writes this
rank's generated tokens per case to OUT/rank<R>.json. The cases "fail", "hang" and "disagree"
make rank 1 fail, hang or build another pipeline on purpose; "megatron" shards the target with
`parallelize_module`, as for a model that transformers has no plan for.
"""

import json
import os
import sys
import time
from pathlib import Path

from specdec.distributed import exit_rank
from specdec.pipeline import Pipeline

sys.path.insert(0, str(Path(__file__).parent))
from tp_cases import PROMPTS, pipeline_data  # noqa: E402


def main() -> None:
    cases, model, out = sys.argv[1:4]
    rank = int(os.environ["RANK"])
    results = {}
    for case in cases.split(","):
        data = pipeline_data(case, model, tp_size=int(os.environ["WORLD_SIZE"]))
        if case == "disagree" and rank == 1:
            data["sampling"]["max_new_tokens"] += 1
        if case == "megatron":  # as for a model class without a transformers plan (stays so: run it last)
            import specdec.distributed

            specdec.distributed.has_plan = lambda config: False
        pipeline = Pipeline.from_dict(data)
        if case in ("fail", "hang") and rank == 1:
            _fail_third_verification(pipeline, hang=case == "hang")
        q_proj = pipeline.model.model.layers[0].self_attn.q_proj.weight  # a DTensor when sharded
        results[case] = {"single": pipeline.generate(PROMPTS[0]).token_ids,
                         "batch": [result.token_ids for result in pipeline.generate_batch(PROMPTS)],
                         "q_rows": q_proj.to_local().shape[0] if hasattr(q_proj, "to_local") else q_proj.shape[0]}
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    exit_rank(0)  # as the `specdec` command ends a rank (a plain exit may abort in gloo's threads)


def _fail_third_verification(pipeline, hang: bool) -> None:
    """Make this rank raise (or hang) in its third verification forward, mid-generation."""
    verify = pipeline.verifier.verify_batch
    calls = []

    def failing(batch):
        calls.append(1)
        if len(calls) == 3:
            if hang:
                time.sleep(3600)
            raise RuntimeError("rank 1 failed on purpose in its third verification")
        return verify(batch)

    pipeline.verifier.verify_batch = failing

if __name__ == "__main__":
    main()
