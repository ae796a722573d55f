"""A Hugging Face causal LM as the judge (GPT-2 Large in the papers): its own tokenizer, its
context (max_position_embeddings), its tokenizer's EOS; loaded from a local folder or, online,
from the hub by name. transformers is imported here only (`pip install 'imdm[eval]'`)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from imdm.data.hub import hub_online
from imdm.eval.judge import RUN_PREFIX, Judge
from imdm.recipe import RecipeError


class HuggingFaceJudge(Judge):
    def __init__(self, name: str, model, tokenizer, device: torch.device, batch: int):
        context = getattr(model.config, "max_position_embeddings", None) or model.config.n_positions
        super().__init__(name, int(context), tokenizer.eos_token_id, device, batch)
        self.model, self.tokenizer = model, tokenizer

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(texts, verbose=False)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def _window_nll(self, tokens: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
        logits = self.model(input_ids=tokens).logits       # causal: right padding never reaches a real row
        return [F.cross_entropy(logits[b, : n - 1].float(), tokens[b, 1:n], reduction="none")
                for b, n in enumerate(lengths)]

    def _last_hidden(self, tokens: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        hidden = self.model(input_ids=tokens, output_hidden_states=True).hidden_states[-1]
        return hidden[torch.arange(len(lengths), device=hidden.device), torch.tensor(lengths, device=hidden.device) - 1]


def _cannot_load(spec: str, why: str) -> RecipeError:
    return RecipeError("eval.judge", [
        f"cannot load judge model '{spec}' ({why}). Offline, point eval.judge at a local folder holding a copy "
        f"(on a machine online: transformers.AutoModelForCausalLM.from_pretrained('{spec}').save_pretrained(DIR) "
        f"and the same for AutoTokenizer), or at an autoregressive run of this project as {RUN_PREFIX}RUN_DIR; "
        "eval.judge = \"\" skips the generative metrics"])


def _checkout_roots() -> list[str]:
    """sys.path entries holding this project's kernels/ folder: a checkout's root, which `python -m`
    run from it puts first on sys.path. There that folder shadows the PyPI package `kernels` that
    transformers imports."""
    return [p for p in sys.path if (Path(p or ".") / "kernels" / "sampler_step_triton.py").is_file()]


def import_transformers():
    """transformers, with the PyPI package `kernels` (if installed) imported past any checkout root."""
    roots = _checkout_roots()
    loaded = getattr(sys.modules.get("kernels"), "__file__", None) or ""
    if loaded.endswith(("kernels/__init__.py", "kernels\\__init__.py")) and \
            (Path(loaded).parent / "sampler_step_triton.py").is_file():
        del sys.modules["kernels"]      # this project's folder, imported as the top-level `kernels` by mistake
    if roots and "kernels" not in sys.modules:
        kept = sys.path[:]
        sys.path[:] = [p for p in sys.path if p not in roots]
        try:
            importlib.import_module("kernels")
        except ImportError:
            pass        # not installed: transformers then finds no `kernels` distribution and does without
        finally:
            sys.path[:] = kept
    return importlib.import_module("transformers")


def load_hf_judge(spec: str, device: torch.device, batch: int) -> HuggingFaceJudge:
    """The causal LM `spec` (a folder, or a hub name fetched only when the hub answers), frozen."""
    try:
        transformers = import_transformers()
        AutoModelForCausalLM, AutoTokenizer = transformers.AutoModelForCausalLM, transformers.AutoTokenizer
    except ImportError as err:
        problem = f"a Hugging Face judge needs transformers ({err}): pip install 'imdm[eval]'"
        raise RecipeError("eval.judge", [problem]) from None
    path = Path(spec)
    if not path.is_dir() and (path.is_absolute() or spec.startswith(".")):
        raise _cannot_load(spec, "no such folder")
    local_only = path.is_dir() or not hub_online()
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(spec, local_files_only=local_only)
    except (OSError, ValueError) as err:
        raise _cannot_load(spec, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'not found'}") \
            from None
    model.requires_grad_(False)      # float32 weights whatever the checkpoint's dtype; bf16 only under autocast
    return HuggingFaceJudge(spec, model.float().eval().to(device), tokenizer, device, batch)
