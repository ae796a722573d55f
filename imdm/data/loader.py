"""Per-rank loading with torchdata's StatefulDataLoader. The batch sampler walks the global
order (a pure function of the seed and the step) and yields this rank's micro-batches; its
position is the loader state saved in checkpoints, so a resumed run reads exactly the next
batch. Each item is a whole micro-batch: {tokens, valid, global_index, step}, plus `extras`
(a dict of per-row tensors) for datasets that have `extras(index)`."""

from __future__ import annotations

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from imdm.data.order import GlobalBatchOrder


class _StepBatches:
    """Iterator over (step, micro-batch) positions from a given position on."""

    def __init__(self, owner: "RankBatchSampler", position: int):
        self.owner, self.position = owner, position

    def __iter__(self):
        return self

    def __next__(self) -> list[int]:
        o = self.owner
        step, micro = divmod(self.position, len(o.micro_slices))
        self.position += 1
        return [step * o.global_batch + int(i) for i in o.micro_slices[micro]]

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


class RankBatchSampler:
    """Yields lists of global positions (step * global_batch + index in the global batch) for
    this rank's micro-batches, step after step, without end."""

    def __init__(self, global_batch: int, rank: int, world: int, micro_batch: int, order: GlobalBatchOrder):
        self.global_batch = global_batch
        self.micro_slices = order.rank_slices(rank, world, micro_batch)
        self.position = 0

    def __iter__(self):
        return _StepBatches(self, self.position)

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


class OrderedRows(torch.utils.data.Dataset):
    """Maps global positions to dataset rows through the seeded order; fetches a micro-batch at once."""

    def __init__(self, dataset, order: GlobalBatchOrder):
        self.dataset, self.order = dataset, order

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, positions: list[int]) -> dict:
        gb = self.order.global_batch
        step = positions[0] // gb
        rows = self.order.global_rows(step)
        index = torch.tensor([p % gb for p in positions], dtype=torch.int64)
        tokens, valid = self.dataset.rows(rows[index])
        batch = {"tokens": tokens, "valid": valid, "global_index": index, "step": step}
        if hasattr(self.dataset, "extras"):   # per-row fields beyond the tokens (a coupling's z_t, t, seed)
            batch["extras"] = self.dataset.extras(rows[index])
        return batch


def _whole_batch(batch: dict) -> dict:
    return batch


def make_loader(dataset, order: GlobalBatchOrder, rank: int, world: int, micro_batch: int,
                num_workers: int = 0) -> StatefulDataLoader:
    """The rank's stateful loader over `dataset` (anything with __len__ and rows(index))."""
    sampler = RankBatchSampler(order.global_batch, rank, world, micro_batch, order)
    return StatefulDataLoader(OrderedRows(dataset, order), batch_sampler=sampler, collate_fn=_whole_batch,
                              num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                              persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers else None)
