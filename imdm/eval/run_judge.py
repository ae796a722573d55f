"""An autoregressive run of this project (`algorithm.name = "ar"`, docs/method.md section 5) as
the judge, written `run:RUN_DIR`: the run's tokenizer, its sequence length as the context, its
tokenizer's EOS, and its EMA weights. The network reads the start symbol (the mask id) and then
the tokens; position i predicts token i with the mask's logit removed, as in training."""

from __future__ import annotations

import torch

from imdm.algorithms.registry import process_spec
from imdm.data.tokenizer import TextTokenizer
from imdm.diffusion.nelbo import masked_token_nll
from imdm.eval.judge import RUN_PREFIX, Judge
from imdm.recipe import RecipeError


class RunJudge(Judge):
    def __init__(self, name: str, model: torch.nn.Module, tokenizer: TextTokenizer, context: int,
                 device: torch.device, batch: int):
        super().__init__(name, context, tokenizer.eos_id, device, batch)
        self.model, self.tokenizer = model, tokenizer
        self.eos_text = tokenizer.decode([tokenizer.eos_id])   # GPT-2: "<|endoftext|>"; BERT: "" (skipped)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """The tokenizer's ids, with the EOS's own text (which decoding writes) read back as the EOS id."""
        if not self.eos_text:
            return self.tokenizer.encode_batch(texts)
        out = []
        for text in texts:
            parts = self.tokenizer.encode_batch(text.split(self.eos_text))
            ids = parts[0]
            for part in parts[1:]:
                ids = ids + [self.tokenizer.eos_id] + part
            out.append(ids)
        return out

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def _inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """[start, x_0 .. x_{T-2}]: position i reads the tokens before x_i."""
        start = torch.full_like(tokens[:, :1], self.tokenizer.mask_id)
        return torch.cat([start, tokens[:, :-1]], dim=1)

    def _window_nll(self, tokens: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
        rows = torch.cat([torch.full((n - 1,), b) for b, n in enumerate(lengths)]).to(self.device)
        cols = torch.cat([torch.arange(1, n) for n in lengths]).to(self.device)
        logits = self.model(self._inputs(tokens), select=(rows, cols))
        nll = masked_token_nll(logits, tokens[rows, cols], self.tokenizer.mask_id)
        return list(nll.split([n - 1 for n in lengths]))

    def _last_hidden(self, tokens: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """The head's input (after its norm) where each row reads its last token: the network
        reads [start, x_0 .. x_{n-1}], cut to the context."""
        inputs = torch.cat([self._inputs(tokens), tokens[:, -1:]], dim=1)[:, : self.context]
        last = torch.tensor([min(n, self.context - 1) for n in lengths], device=self.device)
        captured = []
        hook = self.model.head.linear.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
        try:
            self.model(inputs, select=(torch.arange(len(lengths), device=self.device), last))
        finally:
            hook.remove()
        return captured[0]


def load_run_judge(spec: str, device: torch.device, batch: int) -> RunJudge:
    """The AR run `run:RUN_DIR`, frozen; a run of another kind, or without a tokenizer, is refused."""
    from imdm.parallel.checkpoint import CheckpointError
    from imdm.run_loading import load_run
    run_dir = spec[len(RUN_PREFIX):]
    try:
        run = load_run(run_dir, device)
    except CheckpointError as err:
        raise RecipeError("eval.judge", [f"{spec}: {err}"]) from None
    if process_spec(run.recipe).family != "autoregressive":
        raise RecipeError("eval.judge", [f"{spec}: run of algorithm.name '{run.recipe.algorithm.name}' is not "
                                         "autoregressive (a judge run needs algorithm.name = 'ar')"])
    if run.vocab.tokenizer is None:
        raise RecipeError("eval.judge", [f"{spec}: run has no tokenizer (synthetic data): it cannot score text"])
    run.model.requires_grad_(False)
    return RunJudge(spec, run.model.eval(), run.vocab.tokenizer, run.recipe.data.seq_len, device, batch)
