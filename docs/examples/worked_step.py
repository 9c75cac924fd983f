"""The worked example of docs/protocols.md: one speculative step by hand."""

import torch

from specdec import Draft, HFVerifier, RejectionSampling, SamplingParams, TorchRandom
from specdec.testing import tiny_llama

model = tiny_llama(0, vocab_size=16)
verifier = HFVerifier(model, eos_token_ids=())
verifier.start(prompt_length=3, max_new_tokens=8)

#            root (token 9, the last prompt token)
#           /                \
#   node 0: token 4     node 1: token 7
#          |
#   node 2: token 4
draft = Draft(torch.tensor([4, 7, 4]), parents=(-1, -1, 0))
print(draft.depths, draft.children)    # (1, 1, 2) ((0, 1), (2,), (), ())
print(draft.ancestor_mask().int())     # node 2 sees nodes 0 and 2

output = verifier.verify(pending=[3, 5, 9], draft=draft)
print(output.logits.shape)             # [1 + 3 nodes, 16]: rows root, node 0, node 1, node 2

acceptance = RejectionSampling().accept(output.logits, draft, SamplingParams(temperature=0.0),
                                        TorchRandom(0))
print(acceptance)                      # Acceptance(path=(), next_token=13): no child is the argmax 13
verifier.commit(num_pending=3, path=acceptance.path)
print(verifier.cache.length)           # 3 prompt tokens + len(path); the target token is the next root
