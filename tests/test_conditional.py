"""Conditional generation and MAUVE (docs/method.md section 9): prompt selection from validation
documents, clamped prompts for every process, seeds apart from the unconditional ones, the kept
continuation and human reference, MAUVE over k-means seeds, the [conditional] recipe checks and
`imdm sample --prefix`."""

import json
from pathlib import Path

import pytest
import torch

from imdm import rng
from imdm.algorithms.registry import recipe_from_dict
from imdm.build import build_model, build_process, build_vocabulary, sampler_settings
from imdm.cli import main as cli_main
from imdm.eval.conditional import (CONDITIONAL_SEED_OFFSET, conditional_mauve, conditional_seeds, conditional_texts,
                                   continue_prompts, select_prompts)
from imdm.eval.mauve_score import mauve_over_seeds
from imdm.parallel.distributed import init_distributed
from imdm.recipe import RecipeError
from imdm.sampling.ancestral import generation_seeds
from imdm.train.trainer import Trainer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GPT2 = str(SHARED / "tokenizers" / "gpt2")
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data beside the checkout")
CPU = torch.device("cpu")
FAST_MAUVE = {"num_buckets": 4, "kmeans_num_redo": 1, "kmeans_max_iter": 20}
TINY_MODEL = {"size": "custom", "d_model": 32, "n_blocks": 1, "n_heads": 2, "dropout": 0.0}


def test_prompts_are_the_first_long_documents_read_no_further_than_needed():
    docs = [list(range(3)), list(range(100, 110)), list(range(200, 212)), list(range(300, 305)),
            list(range(400, 411))]

    def documents():
        for i, doc in enumerate(docs):
            if i == 3:
                raise AssertionError("read past the documents it needed")
            yield doc

    prompts = select_prompts(documents(), count=2, min_tokens=10, prefix_tokens=4, length=5)
    assert prompts.prefixes.tolist() == [[100, 101, 102, 103], [200, 201, 202, 203]]
    assert prompts.references.tolist() == [[104, 105, 106, 107, 108], [204, 205, 206, 207, 208]]


def test_too_few_or_too_short_documents_are_clear_errors():
    docs = [[1] * 12, [2] * 3, [3] * 15]
    with pytest.raises(RecipeError, match="3 documents of >= 10 tokens wanted, but its 3 documents have only 2"):
        select_prompts(iter(docs), count=3, min_tokens=10, prefix_tokens=4, length=5)
    with pytest.raises(RecipeError, match="conditional.min_doc_tokens: 8 cannot hold 4 prompt and 5 reference"):
        select_prompts(iter(docs), count=1, min_tokens=8, prefix_tokens=4, length=5)


def test_conditional_seeds_never_coincide_with_unconditional_evaluation_seeds():
    conditional = conditional_seeds(42, 0, 4096)
    assert torch.equal(conditional[7:9], generation_seeds(42, CONDITIONAL_SEED_OFFSET + 7, 2, rng.STREAM_EVAL_SEED))
    unconditional = generation_seeds(42, 0, 1 << 17, rng.STREAM_EVAL_SEED)   # every sample and TC-group index
    assert len(set(conditional.tolist())) == 4096
    assert not set(conditional.tolist()) & set(unconditional.tolist())


def _synthetic(algorithm: dict, sampling: dict | None = None):
    recipe = recipe_from_dict({"model": TINY_MODEL, "algorithm": algorithm,
                               "data": {"vocab_size": 16, "seq_len": 12},
                               "sampling": {"steps": [4], "num_samples": 8, "batch": 8, **(sampling or {})}})
    vocab = build_vocabulary(recipe)
    return recipe, build_model(recipe, vocab.model_vocab, vocab.mask_id), build_process(recipe, vocab.mask_id)


@pytest.mark.parametrize("algorithm,sampling", [
    ({"name": "imdm"}, None), ({"name": "mdlm"}, None), ({"name": "ar"}, None),
    ({"name": "imdm"}, {"draws": "eps"}),
])
def test_continuations_keep_the_prompt_and_differ_across_seeds(algorithm, sampling):
    recipe, model, process = _synthetic(algorithm, sampling)
    settings = sampler_settings(recipe, 4)
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    samples, nfe = continue_prompts(process, model, settings, prompts, 4, seed=7, seq_len=12, batch=3, device=CPU)
    assert samples.shape == (2, 4, 12) and nfe >= 1
    assert torch.equal(samples[:, :, :3], prompts[:, None, :].expand(2, 4, 3))
    assert not (samples == process.mask_id).any()
    for d in range(2):
        assert len({tuple(s) for s in samples[d, :, 3:].tolist()}) > 1      # the seeds give different continuations
    alone = process.sample(model, settings, conditional_seeds(7, 5, 1), 12, prefix=prompts[1:2])
    assert torch.equal(alone.tokens[0], samples[1, 1])                    # sample d K + k has seed d K + k


def _long_doc(i: int) -> str:
    return " ".join(f"word{i}x{j}" for j in range(40))


def _text_recipe(tmp_path, documents=2, **conditional):
    corpus = tmp_path / "corpus.txt"
    training = [_long_doc(100 + i) for i in range(4)]
    paragraphs = training + ["Short one.", _long_doc(1), "Short two.", _long_doc(2), _long_doc(3), "Short three."]
    corpus.write_text("\n\n".join(paragraphs))
    table = {"model": TINY_MODEL, "algorithm": {"name": "imdm"},
             "data": {"source": "local", "paths": [str(corpus)], "documents": "paragraph", "holdout_documents": 6,
                      "seq_len": 24, "store_dir": str(tmp_path / "cache")},
             "tokenizer": {"kind": "gpt2", "path": GPT2},
             "train": {"global_batch": 4, "micro_batch": 2},
             "sampling": {"steps": [3], "num_samples": 8, "batch": 4, "seed": 5},
             "conditional": {"enabled": True, "documents": documents, "min_doc_tokens": 30, "prefix_tokens": 4,
                             "continuations": 3, "length": 6, "mauve_seeds": 2, **conditional}}
    return recipe_from_dict(table)


class _RecordingJudge:
    """A judge stand-in: its tokens are character codes, its features a histogram of them."""

    def __init__(self):
        self.texts = []

    def encode(self, texts):
        self.texts.append(list(texts))
        return [[ord(ch) for ch in text] for text in texts]

    def features(self, ids):
        return torch.stack([torch.bincount(torch.tensor(i) % 16, minlength=16).float() for i in ids])


@needs_shared
def test_kept_continuations_and_human_references_and_mauve_wiring(tmp_path):
    recipe = _text_recipe(tmp_path)
    vocab = build_vocabulary(recipe)
    model, process = build_model(recipe, vocab.model_vocab, vocab.mask_id), build_process(recipe, vocab.mask_id)
    texts = conditional_texts(recipe, model, process, CPU)
    tok = vocab.tokenizer
    long_docs = [tok.encode(_long_doc(i)) for i in (1, 2)]        # the first two long validation documents
    assert all(len(doc) >= 30 for doc in long_docs)
    assert texts.human == [tok.decode(doc[4:10]) for doc in long_docs]
    settings = sampler_settings(recipe, 3)
    for d, doc in enumerate(long_docs):
        for k in range(3):
            prompt = torch.tensor([[tok.bos_id, *doc[:4]]])
            full = process.sample(model, settings, conditional_seeds(5, 3 * d + k, 1), 24, prefix=prompt).tokens[0]
            assert texts.generated[3 * d + k] == tok.decode(full[5:11].tolist())   # the 6 tokens after BOS + prompt

    judge = _RecordingJudge()
    result = conditional_mauve(recipe, model, process, judge, CPU, num_buckets=2, kmeans_num_redo=1)
    assert judge.texts == [texts.human, texts.generated]
    assert len(result["mauve_seeds"]) == 2 and result["kmeans_seeds"] == [0, 1]
    assert result["mauve"] == pytest.approx(sum(result["mauve_seeds"]) / 2)
    assert (result["documents"], result["continuations"], result["length"], result["steps"]) == (2, 3, 6, 3)

    with pytest.raises(RecipeError, match="4 documents of >= 30 tokens wanted, but its 6 documents have only 3"):
        conditional_texts(_text_recipe(tmp_path, documents=4), model, process, CPU)


def test_mauve_of_one_distribution_is_near_1_and_of_separated_ones_near_0():
    import mauve
    g = torch.Generator().manual_seed(0)
    human = torch.randn(200, 8, generator=g)
    same = torch.randn(200, 8, generator=g)
    far = torch.randn(200, 8, generator=g) + 20.0
    near = mauve_over_seeds(human, same, [0, 1, 2], **FAST_MAUVE)
    apart = mauve_over_seeds(human, far, [0, 1, 2], **FAST_MAUVE)
    assert near["mauve"] > 0.9 and apart["mauve"] < 0.1
    assert near["mauve"] == pytest.approx(sum(near["mauve_seeds"]) / 3)
    by_hand = mauve.compute_mauve(p_features=human.numpy(), q_features=far.numpy(), seed=1, **FAST_MAUVE).mauve
    assert apart["mauve_seeds"][1] == pytest.approx(by_hand)


def test_missing_mauve_package_says_how_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "mauve", None)
    with pytest.raises(RecipeError, match=r"pip install 'imdm\[eval\]'"):
        mauve_over_seeds(torch.zeros(4, 2), torch.ones(4, 2), [0])


@pytest.mark.parametrize("table,needle", [
    ({"conditional": {"enabled": True}}, "data.source 'synthetic' does not have"),
    ({"data": {"source": "local", "paths": ["x.txt"], "seq_len": 1024}, "conditional": {"enabled": True}},
     "set data.holdout_documents"),
    ({"data": {"source": "hub", "seq_len": 128}, "conditional": {"enabled": True}},
     "BOS \\+ 50 prompt tokens \\+ 100 generated tokens do not fit in data.seq_len 128"),
    ({"data": {"source": "hub", "seq_len": 1024}, "conditional": {"enabled": True, "min_doc_tokens": 120}},
     "conditional.min_doc_tokens: 120 is shorter"),
    ({"sampling": {"prefix_len": 4}}, "sampling.prefix_len: removed"),
])
def test_conditional_recipes_are_checked(table, needle):
    with pytest.raises(RecipeError, match=needle):
        recipe_from_dict(table)


def test_recipes_of_runs_written_with_the_retired_prefix_len_still_load():
    assert recipe_from_dict({"sampling": {"prefix_len": 0}}).conditional.enabled is False
    assert recipe_from_dict({"data": {"source": "hub", "seq_len": 128}}).conditional.documents == 256


def _train(recipe_table) -> Path:
    recipe = recipe_from_dict(recipe_table)
    Trainer(recipe, init_distributed("cpu")).fit()
    return Path(recipe.run.output_dir) / recipe.run.name


def test_imdm_sample_prefix_ids_on_a_synthetic_run(tmp_path, capsys):
    run_dir = _train({"run": {"output_dir": str(tmp_path), "name": "syn"}, "model": TINY_MODEL,
                      "data": {"vocab_size": 16, "seq_len": 8, "num_sequences": 64},
                      "train": {"steps": 2, "global_batch": 8, "micro_batch": 8, "eval_batches": 1},
                      "logging": {"progress": False}})
    capsys.readouterr()
    assert cli_main(["sample", str(run_dir), "--prefix-ids", "3,1,4", "--num-samples", "5", "--steps", "4",
                     "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prefix"] == [3, 1, 4] and len(out["samples"]) == 5
    assert all(s[:3] == [3, 1, 4] and len(s) == 8 for s in out["samples"])
    for args, needle in ((["--prefix", "hello"], "no tokenizer"),
                         (["--prefix-ids", "1,2,3,4,5,6,7,8"], "takes 8 positions; data.seq_len 8"),
                         (["--prefix-ids", "1,x"], "not a comma-separated list"),
                         (["--prefix-ids", "1,16"], "ids [16] are not tokens of the run (0 .. 16 except the mask")):
        assert cli_main(["sample", str(run_dir), *args]) == 2
        assert needle in capsys.readouterr().err
    assert cli_main(["eval", str(run_dir), "conditional.enabled=true"]) == 2     # a loaded run takes the override
    assert "conditional.enabled: prompts come from validation documents" in capsys.readouterr().err


@needs_shared
def test_imdm_sample_prefix_text_on_a_text_run(tmp_path, capsys):
    recipe = _text_recipe(tmp_path)
    table = {"run": {"output_dir": str(tmp_path), "name": "txt"}, "model": TINY_MODEL,
             "data": {"source": "local", "paths": recipe.data.paths, "documents": "paragraph",
                      "holdout_documents": 6, "seq_len": 24, "store_dir": str(tmp_path / "cache")},
             "tokenizer": {"kind": "gpt2", "path": GPT2},
             "train": {"steps": 2, "global_batch": 4, "micro_batch": 4, "eval_batches": 1},
             "logging": {"progress": False}}
    run_dir = _train(table)
    capsys.readouterr()
    assert cli_main(["sample", str(run_dir), "--prefix", "Short paragraph", "--num-samples", "2", "--steps", "3",
                     "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    tok = build_vocabulary(recipe).tokenizer
    prompt = [tok.bos_id, *tok.encode("Short paragraph")]
    assert out["prefix"] == prompt and all(s[:len(prompt)] == prompt for s in out["samples"])
    assert all(text.startswith(tok.decode(prompt)) for text in out["text"])
    assert cli_main(["sample", str(run_dir), "--prefix", "word " * 30]) == 2
    assert "data.seq_len 24 leaves nothing to generate" in capsys.readouterr().err
