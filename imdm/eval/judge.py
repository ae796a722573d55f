"""Judges: frozen causal language models that score text for generative perplexity and give the
features MAUVE compares (docs/method.md section 9). A judge is loaded once per evaluation from a
Hugging Face model (a hub name or a `save_pretrained` folder; imdm.eval.hf_judge) or from a run
directory of this project's autoregressive model, written `run:RUN_DIR` (imdm.eval.run_judge).
It runs in eval mode without dropout, under bf16 autocast on CUDA and in float32 on the CPU.

A sequence longer than the judge's context is read in windows of `context` tokens, each read
afresh (nothing carried over) and starting at the previous window's last token, so every token
after the first is scored exactly once, given at most `context - 1` tokens before it."""

from __future__ import annotations

import torch

from imdm.recipe import RecipeError

RUN_PREFIX = "run:"


class Judge:
    """A frozen causal LM behind one interface. Backends implement `encode`, `decode`,
    `_window_nll` and `_last_hidden`; the windowing, batching and precision live here."""

    def __init__(self, name: str, context: int, eos_id: int | None, device: torch.device, batch: int):
        if context < 2:
            raise RecipeError("eval.judge", [f"judge '{name}' has a context of {context} tokens: it scores nothing"])
        self.name, self.context, self.eos_id = name, context, eos_id
        self.device, self.batch = device, batch

    def encode(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def _window_nll(self, tokens: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
        """Per row of `tokens` [B, T] (right-padded; row b holds lengths[b] tokens): the NLL of
        its tokens 1 .. lengths[b] - 1 given the tokens before them in the row."""
        raise NotImplementedError

    def _last_hidden(self, tokens: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """[B, d]: the last layer's hidden state where each row reads its last token."""
        raise NotImplementedError

    def _padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
        lengths = [len(r) for r in rows]
        tokens = torch.zeros(len(rows), max(lengths), dtype=torch.int64)
        for b, r in enumerate(rows):
            tokens[b, : len(r)] = torch.tensor(r, dtype=torch.int64)
        return tokens.to(self.device), lengths

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def windows(self, n: int) -> list[int]:
        """Start positions of the windows that score tokens 1 .. n - 1 of an n-token sequence."""
        return list(range(0, n - 1, self.context - 1))

    @torch.no_grad()
    def token_nll(self, ids: list[list[int]]) -> list[torch.Tensor]:
        """Per sequence: float64 CPU NLL of its tokens 1 .. n-1 (n - 1 values; none when n < 2)."""
        pieces = [(s, start) for s, seq in enumerate(ids) for start in self.windows(len(seq))]
        out = [[] for _ in ids]
        for first in range(0, len(pieces), self.batch):
            chunk = pieces[first: first + self.batch]
            tokens, lengths = self._padded([ids[s][start: start + self.context] for s, start in chunk])
            with self._autocast():
                nll = self._window_nll(tokens, lengths)
            for (s, _), values in zip(chunk, nll):
                out[s].append(values.double().cpu())
        return [torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64) for parts in out]

    @torch.no_grad()
    def features(self, ids: list[list[int]]) -> torch.Tensor:
        """[N, d] float32 CPU: the last hidden state at each sequence's last token, the sequence
        cut to its first `context` tokens."""
        if not ids or any(len(seq) == 0 for seq in ids):
            raise RecipeError("judge features", ["need at least one sequence, and no empty one"])
        feats = []
        for first in range(0, len(ids), self.batch):
            tokens, lengths = self._padded([seq[: self.context] for seq in ids[first: first + self.batch]])
            with self._autocast():
                feats.append(self._last_hidden(tokens, lengths).float().cpu())
        return torch.cat(feats)


def load_judge(spec: str, device: torch.device, batch: int = 16) -> Judge:
    """The judge `spec` names: `run:RUN_DIR` (an autoregressive run of this project) or a Hugging
    Face causal LM (hub name or local folder)."""
    if not spec:
        raise RecipeError("eval.judge", ["no judge named ('' turns the generative metrics off)"])
    if spec.startswith(RUN_PREFIX):
        from imdm.eval.run_judge import load_run_judge
        return load_run_judge(spec, device, batch)
    from imdm.eval.hf_judge import load_hf_judge
    return load_hf_judge(spec, device, batch)
