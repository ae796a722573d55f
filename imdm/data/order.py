"""Which dataset rows each rank reads at each step: a seeded permutation per epoch, cut into
global batches, each global batch split by data-parallel rank and then into micro-batches.
A pure function of (seed, step), so a resumed run reads exactly the next batch."""

from __future__ import annotations

import torch


class GlobalBatchOrder:
    def __init__(self, dataset_size: int, global_batch: int, seed: int):
        if dataset_size < global_batch:
            raise ValueError(f"the dataset has {dataset_size} sequences, fewer than one global batch "
                             f"({global_batch})")
        self.size, self.global_batch, self.seed = dataset_size, global_batch, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=gen)
        return self._perm

    def global_rows(self, step: int) -> torch.Tensor:
        """Dataset rows of the whole global batch of `step` (int64 [global_batch])."""
        pos = step * self.global_batch + torch.arange(self.global_batch, dtype=torch.int64)
        epochs, within = pos // self.size, pos % self.size
        out = torch.empty_like(pos)
        for epoch in torch.unique(epochs).tolist():
            sel = epochs == epoch
            out[sel] = self._permutation(epoch)[within[sel]]
        return out

    def rank_slices(self, rank: int, world: int, micro_batch: int) -> list[torch.Tensor]:
        """Global-batch indices this rank processes, one tensor per micro-batch."""
        per_rank = self.global_batch // world
        mine = torch.arange(rank * per_rank, (rank + 1) * per_rank, dtype=torch.int64)
        return list(mine.split(micro_batch))
