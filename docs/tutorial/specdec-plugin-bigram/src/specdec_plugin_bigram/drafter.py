"""A drafter that predicts each next token as the most frequent successor of the current one."""

from collections import Counter, defaultdict

from specdec import BaseDrafter, Draft, DraftContext


class BigramDrafter(BaseDrafter):
    """Counts which token follows which in the sequence so far and drafts by following the most
    frequent successor, up to `num_tokens` tokens, while that successor was seen `min_count` times.

    Drafts are deterministic (no q), so any lossless policy verifies them losslessly.
    """

    def __init__(self, num_tokens: int = 4, min_count: int = 2):
        self.num_tokens = num_tokens
        self.min_count = min_count

    def start(self, prompt, params):
        self.successors = defaultdict(Counter)
        self.indexed = 0  # tokens[:indexed] are counted

    def propose(self, context: DraftContext) -> Draft:
        tokens = context.tokens
        for position in range(max(self.indexed, 1), len(tokens)):  # only what is new since last step
            self.successors[tokens[position - 1]][tokens[position]] += 1
        self.indexed = len(tokens)

        draft, current = [], tokens[-1]
        for _ in range(min(self.num_tokens, context.max_depth)):
            if not self.successors[current]:
                break
            token, count = self.successors[current].most_common(1)[0]
            if count < self.min_count:
                break
            draft.append(token)
            current = token
        return Draft.chain(draft)
