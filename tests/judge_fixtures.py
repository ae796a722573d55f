"""Tiny judges and runs for the judge and generative-evaluation tests: a random GPT-2 with its own
byte-level BPE saved as a Hugging Face folder, and text runs trained a few steps on the local
corpus of ../shared/data (skipped when it is absent)."""

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEXT = ("the cat sat on the mat. the dog ate the bone. a bird sang in the tree, and the cat watched it. "
        "then the rain came down on the town and everyone went home.\n") * 3


def tiny_hf_judge(folder: Path, context: int = 16, seed: int = 0) -> Path:
    """A random 2-layer GPT-2 (width 32) with a ~300-token byte-level BPE, saved to `folder`."""
    pytest.importorskip("transformers")
    from imdm.eval.hf_judge import import_transformers
    transformers = import_transformers()      # past this checkout's kernels/ folder (see there)
    from tokenizers import ByteLevelBPETokenizer
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([TEXT], vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                                     bos_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=context,
                                     bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def needs_shared():
    if not SHARED.is_dir():
        pytest.skip("needs ../shared/data (GPT-2 tokenizer files and the local corpus) beside the checkout")


def tiny_text_run(output_dir: Path, name: str, algorithm: str, **sections) -> Path:
    """A text run (GPT-2 tokens, L 32, width 32, one block) trained 2 steps on tiny-shakespeare,
    the last 50 paragraphs held out; `sections` update the recipe's sections."""
    needs_shared()
    from imdm.algorithms.registry import recipe_from_dict
    from imdm.parallel.distributed import init_distributed
    from imdm.train.trainer import Trainer
    table = {
        "run": {"output_dir": str(output_dir), "name": name, "seed": 3},
        "model": {"size": "custom", "d_model": 32, "n_blocks": 1, "n_heads": 2, "dropout": 0.0},
        "algorithm": {"name": algorithm},
        "tokenizer": {"kind": "gpt2", "path": str(SHARED / "tokenizers" / "gpt2")},
        "data": {"source": "local", "paths": [str(SHARED / "corpus" / "tinyshakespeare" / "input.txt")],
                 "documents": "paragraph", "holdout_documents": 50, "seq_len": 32,
                 "store_dir": str(output_dir / "cache")},
        "optimizer": {"lr": 1e-2}, "schedule": {"warmup_steps": 1},
        "train": {"steps": 2, "global_batch": 4, "micro_batch": 4, "eval_batches": 1, "ema_decay": 0.0,
                  "device": "cpu"},
        "eval": {"batch": 4, "max_batches": 1},
        "sampling": {"steps": [2], "num_samples": 4, "batch": 4},
        "logging": {"progress": False},
    }
    for section, values in sections.items():
        table[section] = {**table.get(section, {}), **values}
    Trainer(recipe_from_dict(table), init_distributed("cpu")).fit()
    return output_dir / name
