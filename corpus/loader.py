"""Batches: random contiguous windows with a resumable cursor, split across data-parallel ranks.

Also the fixed validation batches.
"""

from __future__ import annotations

import numpy as np
import torch

from .documents import DataError

# --------------------------------------------------------------------------------------------------------------------
# Loading batches


def _num_windows(num_tokens: int, seq_len: int) -> int:
    """Windows of `seq_len + 1` tokens at stride `seq_len`: each token is a target exactly once per epoch."""
    return max(0, (num_tokens - 1) // seq_len)


def _gather(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    rows = tokens[starts[:, None] + np.arange(seq_len + 1)]
    return torch.from_numpy(rows.astype(np.int64))


class TokenLoader:
    """Deterministic, resumable batches of contiguous token windows, split across data-parallel ranks.

    Windows: the shard is cut at stride `seq_len` into windows of `seq_len + 1` tokens (inputs plus the shifted
    targets), window `i` starting at token `i * seq_len`; so windows do not overlap except for the one boundary
    token, and every token is a prediction target once per epoch.

    Order: epoch `e` visits the windows in `np.random.default_rng([seed, e]).permutation(num_windows)`; the epochs'
    permutations are concatenated into one endless sequence of window positions. Global batch `b` is positions
    `[b * G, (b + 1) * G)` with `G = batch_size * world_size` (a batch that runs past an epoch's end continues into
    the next epoch), and rank `r` takes the slice `[b * G + r * batch_size, b * G + (r + 1) * batch_size)`. Hence
    2 ranks x B together see exactly the windows of 1 rank x 2B, in the same order, and the global token stream
    depends on the global batch size only.

    Resuming: `cursor` is the number of batches drawn. It is all the state there is (the order is a pure function
    of seed and position), so `load_state_dict(state_dict())` on a fresh loader continues with exactly the batches
    an uninterrupted loader would have drawn. All ranks share the same cursor.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be a flat 1-D array, got shape {tokens.shape}")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_windows = _num_windows(len(tokens), seq_len)
        if self.num_windows == 0:
            raise DataError(f"{len(tokens)} tokens are too few for one window of seq_len + 1 = {seq_len + 1}")
        self.cursor = 0
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            self._perm_epoch = epoch
        return self._perm

    def _window_indices(self, first: int, count: int) -> np.ndarray:
        """Window indices at global positions `[first, first + count)` of the endless epoch sequence."""
        out = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            pos = first + filled
            epoch, offset = divmod(pos, self.num_windows)
            take = min(count - filled, self.num_windows - offset)
            out[filled : filled + take] = self._permutation(epoch)[offset : offset + take]
            filled += take
        return out

    @property
    def epoch(self) -> float:
        """Fraction of passes over the shard made so far (by all ranks together)."""
        return self.cursor * self.batch_size * self.world_size / self.num_windows

    def next_batch(self) -> torch.Tensor:
        """This rank's next batch: int64 tensor `[batch_size, seq_len + 1]` (inputs `[:, :-1]`, targets `[:, 1:]`)."""
        global_batch = self.batch_size * self.world_size
        first = self.cursor * global_batch + self.rank * self.batch_size
        windows = self._window_indices(first, self.batch_size)
        self.cursor += 1
        return _gather(self.tokens, windows * self.seq_len, self.seq_len)

    def state_dict(self) -> dict[str, int]:
        """The cursor plus the settings it is only meaningful with (checked on load)."""
        return {
            "cursor": self.cursor,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "world_size": self.world_size,
            "num_tokens": len(self.tokens),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the cursor; refuses a state saved with other settings, which would silently change the data."""
        for key in ("seed", "batch_size", "seq_len", "world_size", "num_tokens"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise ValueError(f"loader state has {key}={state[key]}, but this loader has {key}={mine}")
        cursor = int(state["cursor"])
        if cursor < 0:
            raise ValueError(f"loader cursor must be non-negative, got {cursor}")
        self.cursor = cursor


def val_batches(tokens: np.ndarray, batch_size: int, seq_len: int, max_batches: int) -> list[torch.Tensor]:
    """Fixed validation batches: the first windows of the shard in order, `batch_size` per batch.

    The same windows every evaluation make validation losses comparable across steps and runs. Windows are cut as
    in `TokenLoader`. Only full batches are returned, except that a shard holding less than one batch gives a single
    smaller batch, so a small validation set is still used rather than silently skipped.
    """
    if batch_size < 1 or seq_len < 1 or max_batches < 1:
        raise ValueError("batch_size, seq_len and max_batches must be positive")
    n = _num_windows(len(tokens), seq_len)
    if n == 0:
        raise DataError(f"{len(tokens)} validation tokens are too few for one window of {seq_len + 1}")
    if n < batch_size:
        return [_gather(tokens, np.arange(n) * seq_len, seq_len)]
    count = min(max_batches, n // batch_size)
    return [_gather(tokens, (np.arange(batch_size) + b * batch_size) * seq_len, seq_len) for b in range(count)]
