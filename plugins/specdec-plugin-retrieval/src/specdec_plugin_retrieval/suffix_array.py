"""Suffix arrays with numpy: construction by prefix doubling, range search, continuation tries.

`suffix_array(tokens)` lists the start positions of all suffixes of `tokens` in lexicographic
order, a suffix that is a prefix of another sorting first (the order of Python list comparison).
Prefix doubling: after round r every suffix is ranked by its first 2**r tokens; the next round
sorts by the pair (rank of the first 2**r tokens, rank of the next 2**r tokens). Each round is
one numpy argsort, and rounds stop once all ranks are distinct, so the cost is
O(N log N * log L) for L the longest repeated substring.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Start positions of the suffixes of the 1-D integer array `tokens`, sorted."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError("tokens must be a 1-D array")
    size = tokens.shape[0]
    index_dtype = np.int32 if size < 2**31 else np.int64
    if size == 0:
        return np.empty(0, dtype=index_dtype)
    # rank by the first token: dense ranks in [0, size)
    _, rank = np.unique(tokens, return_inverse=True)
    rank = rank.astype(np.int64).reshape(-1)
    order = np.argsort(rank, kind="stable")
    span = 1
    while True:
        if int(rank[order[-1]]) == size - 1:  # every rank distinct: fully sorted
            break
        # key = (rank of the first `span` tokens, rank of the next `span` tokens or -1 past the end)
        second = np.full(size, -1, dtype=np.int64)
        second[:size - span] = rank[span:]
        key = rank * (size + 1) + (second + 1)
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        new_group = np.empty(size, dtype=np.int64)
        new_group[0] = 0
        np.not_equal(sorted_key[1:], sorted_key[:-1], out=new_group[1:], casting="unsafe")
        rank = np.empty(size, dtype=np.int64)
        rank[order] = np.cumsum(new_group)
        span *= 2
    return order.astype(index_dtype)


def find_range(tokens: np.ndarray, suffixes: np.ndarray, query: Sequence[int],
               low: int = 0, high: int | None = None) -> tuple[int, int]:
    """The range [start, stop) of `suffixes` whose suffixes begin with `query` (two binary searches)."""
    query = [int(token) for token in query]
    width = len(query)
    high = suffixes.shape[0] if high is None else high

    def prefix(at: int) -> list[int]:
        start = int(suffixes[at])
        return tokens[start:start + width].tolist()

    lo, hi = low, high
    while lo < hi:  # first suffix whose prefix >= query
        mid = (lo + hi) // 2
        if prefix(mid) < query:
            lo = mid + 1
        else:
            hi = mid
    start, hi = lo, high
    while lo < hi:  # first suffix whose prefix > query
        mid = (lo + hi) // 2
        if prefix(mid) <= query:
            lo = mid + 1
        else:
            hi = mid
    return start, lo


def longest_suffix_match(tokens: np.ndarray, suffixes: np.ndarray, context: Sequence[int],
                         min_span: int, max_span: int) -> tuple[int, int, int]:
    """The longest tail of `context` (between min_span and max_span tokens) occurring in
    `tokens`, as (span, start, stop) with [start, stop) its range in `suffixes`; span 0 if none.

    A tail that occurs implies that every shorter tail occurs, so the span is binary-searched.
    """
    best = (0, 0, 0)
    low, high = min_span, min(max_span, len(context))
    while low <= high:
        span = (low + high) // 2
        start, stop = find_range(tokens, suffixes, context[len(context) - span:])
        if stop > start:
            best = (span, start, stop)
            low = span + 1
        else:
            high = span - 1
    return best


def continuations(tokens: np.ndarray, suffixes: np.ndarray, start: int, stop: int, span: int,
                  length: int, max_count: int, separator: int) -> np.ndarray:
    """`[K, length]` int64: the `length` tokens after each match in suffixes[start:stop], with -1
    from the first separator or the end of `tokens` on. Rows stay in suffix order (so equal
    prefixes are adjacent); when there are more than `max_count` matches, K = `max_count` rows
    evenly spaced over the range."""
    count = stop - start
    if count > max_count:
        picks = start + (np.arange(max_count, dtype=np.int64) * count) // max_count
        positions = np.asarray(suffixes[picks], dtype=np.int64)
    else:
        positions = np.asarray(suffixes[start:stop], dtype=np.int64)
    index = positions[:, None] + span + np.arange(length, dtype=np.int64)[None, :]
    beyond = index >= tokens.shape[0]
    rows = np.asarray(tokens[np.minimum(index, tokens.shape[0] - 1)], dtype=np.int64)
    cut = np.logical_or.accumulate(beyond | (rows == separator), axis=1)
    rows[cut] = -1
    return rows


def trie_from_sorted_rows(rows: np.ndarray, max_nodes: int) -> tuple[list[int], list[int], list[int]]:
    """Merge continuation rows whose equal prefixes are adjacent (see `continuations`) into a
    trie of at most `max_nodes` nodes, keeping the best supported ones.

    :returns: (tokens, parents, counts) with parents first and siblings by decreasing count.
    """
    count, length = rows.shape
    if count == 0 or length == 0 or max_nodes < 1:
        return [], [], []
    differs = np.ones(rows.shape, dtype=bool)
    differs[1:] = rows[1:] != rows[:-1]
    opens = np.logical_or.accumulate(differs, axis=1)  # [K, L]: row i opens a group at depth d
    group_of = np.cumsum(opens, axis=0) - 1  # [K, L]: each row's group at each depth
    columns = {"size": [], "depth": [], "group": [], "parent": [], "token": []}
    for depth in range(length):
        first = np.flatnonzero(opens[:, depth])
        tokens_here = rows[first, depth]
        valid = tokens_here >= 0  # -1: the continuation ended before this depth
        columns["size"].append(np.diff(np.append(first, count))[valid])
        columns["depth"].append(np.full(int(valid.sum()), depth))
        columns["group"].append(group_of[first, depth][valid])
        columns["parent"].append((group_of[first, depth - 1] if depth else np.full(first.shape, -1))[valid])
        columns["token"].append(tokens_here[valid])
    size, depth, group, parent, token = (np.concatenate(columns[name]) for name in columns)
    # best supported first: a parent's count is at least its child's and depth breaks ties, so
    # the kept nodes include every kept node's parent
    kept = np.lexsort((depth, -size))[:max_nodes]
    kept = kept[np.lexsort((-size[kept], depth[kept]))]  # by depth, then best first
    node_of: dict[tuple[int, int], int] = {}
    tokens: list[int] = []
    parents: list[int] = []
    counts: list[int] = []
    for item in kept.tolist():
        level = int(depth[item])
        node_of[(level, int(group[item]))] = len(tokens)
        tokens.append(int(token[item]))
        parents.append(node_of[(level - 1, int(parent[item]))] if level else -1)
        counts.append(int(size[item]))
    return tokens, parents, counts
