"""The zero-shot sets: each one's hub id, configuration, folder, revision, split, text column and
detokenizer, the exact `datasets.load_dataset` call made from them (through a stand-in module),
the local copies under eval.local_root, and the error an offline machine without a copy gets."""

import sys
import tomllib
import types
from pathlib import Path

import pytest
import torch

from imdm.algorithms.registry import recipe_from_dict
from imdm.data import hub
from imdm.data.detokenizers import DETOKENIZERS
from imdm.data.hub_sets import HUB_SETS, PARQUET_EXPORT, load_hub_documents
from imdm.data.local_text import DataSourceError
from imdm.eval.perplexity import ZERO_SHOT_SETS, eval_set_recipe, open_eval_set
from imdm.recipe.schema import HUB_SET_NAMES

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GPT2 = str(SHARED / "tokenizers" / "gpt2")
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data beside the checkout")

# name -> (hub id, configuration, folder, revision, test split expression, text column, detokenizer)
EXPECTED = {
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", None, None, "test", "text", "wikitext"),
    "wikitext103": ("Salesforce/wikitext", "wikitext-103-raw-v1", None, None, "test", "text", "wikitext"),
    "ptb": ("ptb-text-only/ptb_text_only", None, "penn_treebank", PARQUET_EXPORT, "test", "sentence", "ptb"),
    "lambada": ("EleutherAI/lambada_openai", "default", None, None, "test", "text", "lambada"),
    "lm1b": ("billion-word-benchmark/lm1b", None, "plain_text", PARQUET_EXPORT, "test", "text", "lm1b"),
    "ag_news": ("fancyzhx/ag_news", None, None, None, "test", "text", "none"),
    "scientific_papers_pubmed": ("armanc/scientific_papers", None, "pubmed", PARQUET_EXPORT, "test", "article",
                                 "scientific_papers"),
    "scientific_papers_arxiv": ("armanc/scientific_papers", None, "arxiv", PARQUET_EXPORT, "test", "article",
                                "scientific_papers"),
}


class _Rows:
    """What the stand-in `load_dataset` returns: one column of three documents."""

    def __init__(self, column):
        self.column_names = [column, "label"]
        self._fingerprint = "f00d"
        self.texts = [f"document {i} of the stand-in" for i in range(3)]

    def iter(self, batch_size):
        yield {self.column_names[0]: self.texts, "label": [0, 1, 2]}


def _stand_in_datasets(monkeypatch, fail=None):
    """Install a `datasets` module that records load_dataset calls (or raises `fail`), offline."""
    module = types.ModuleType("datasets")
    module.config = types.SimpleNamespace(HF_HUB_OFFLINE=False)
    module.calls = []

    def load_dataset(*args, **kwargs):
        module.calls.append((args, kwargs))
        if fail is not None:
            raise fail
        return _Rows(HUB_SETS[module.current].column)

    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_online.cache_clear()
    return module


@pytest.fixture(autouse=True)
def _fresh_hub_check():
    hub.hub_online.cache_clear()
    yield
    hub.hub_online.cache_clear()


def test_the_suite_is_every_named_set_but_the_training_corpus(repo_root):
    assert set(ZERO_SHOT_SETS) == set(HUB_SET_NAMES) - {"openwebtext"} == set(EXPECTED)
    owt = tomllib.loads(Path(repo_root, "recipes", "owt.toml").read_text())
    assert owt["eval"]["sets"] == list(ZERO_SHOT_SETS)


def test_usage_guide_lists_each_set_as_the_table_does(repo_root):
    rows = {line.split("|")[1].strip(" `"): [cell.strip(" `/") for cell in line.split("|")[2:-1]]
            for line in Path(repo_root, "docs", "usage.md").read_text().splitlines() if line.startswith("| `")}
    for name in ZERO_SHOT_SETS:
        spec = HUB_SETS[name]
        path, folder, revision, column, detokenizer, _ = rows[name]
        assert (path, folder, column, detokenizer) == (spec.path, spec.config or spec.data_dir or "", spec.column,
                                                       spec.detokenizer), name
        assert revision == ("parquet export" if spec.revision == PARQUET_EXPORT else "main"), name


@pytest.mark.parametrize("name", ZERO_SHOT_SETS)
def test_id_table_entry(name):
    spec = HUB_SETS[name]
    path, config, data_dir, revision, test_split, column, detokenizer = EXPECTED[name]
    assert (spec.path, spec.config, spec.data_dir, spec.revision) == (path, config, data_dir, revision)
    assert spec.splits["test"] == test_split and spec.column == column and spec.detokenizer == detokenizer
    assert spec.detokenizer in DETOKENIZERS and spec.path.count("/") == 1   # namespaced ids: no legacy script names


@pytest.mark.parametrize("name", ZERO_SHOT_SETS)
def test_loader_calls_load_dataset_with_exactly_the_table(monkeypatch, name):
    datasets = _stand_in_datasets(monkeypatch)
    datasets.current = name
    documents, fingerprint = load_hub_documents(name, "test")
    path, config, data_dir, revision, test_split, _, _ = EXPECTED[name]
    assert datasets.calls == [((path, config), {"split": test_split, "data_dir": data_dir, "revision": revision})]
    assert list(documents()) == [f"document {i} of the stand-in" for i in range(3)]
    assert fingerprint == f"{name}:test:f00d" and datasets.config.HF_HUB_OFFLINE is True


@pytest.mark.parametrize("name", ZERO_SHOT_SETS)
def test_zero_shot_sets_read_the_test_split_from_the_hub_without_a_local_copy(tmp_path, name):
    recipe = recipe_from_dict({"data": {"source": "local", "paths": ["x.txt"], "seq_len": 64},
                               "eval": {"local_root": str(tmp_path)}})
    sub, split = eval_set_recipe(recipe, name)
    assert (sub.data.source, sub.data.dataset, sub.data.hub_location, split) == ("hub", name, "", "test")
    assert (sub.data.packing, sub.data.seq_len) == ("wrap", 64)


@needs_shared
def test_offline_without_a_local_copy_names_the_set_and_local_root(monkeypatch, tmp_path):
    _stand_in_datasets(monkeypatch, fail=ConnectionError("Couldn't reach 'fancyzhx/ag_news' on the Hub"))
    recipe = recipe_from_dict({"data": {"source": "local", "paths": ["x.txt"], "seq_len": 64,
                                        "store_dir": str(tmp_path / "cache")},
                               "tokenizer": {"kind": "gpt2", "path": GPT2}, "eval": {"local_root": str(tmp_path)}})
    with pytest.raises(DataSourceError) as err:
        open_eval_set(recipe, "ag_news")
    message = str(err.value)
    assert "zero-shot set 'ag_news'" in message and f"eval.local_root = '{tmp_path}'" in message
    assert "eval/ag_news/" in message and "ConnectionError" in message and "data.source" not in message
    with pytest.raises(DataSourceError, match=r"looked for eval/ptb/ptb.test.txt or eval/ptb/"):
        open_eval_set(recipe, "ptb")


@needs_shared
def test_local_copies_keep_working_without_datasets(monkeypatch, tmp_path):
    """WikiText-103 shares WikiText-2's test set, so both read the same local file; no hub call
    is made (importing `datasets` would fail)."""
    monkeypatch.setitem(sys.modules, "datasets", None)
    recipe = recipe_from_dict({"data": {"source": "local", "paths": ["x.txt"], "seq_len": 256,
                                        "store_dir": str(tmp_path / "cache")},
                               "tokenizer": {"kind": "gpt2", "path": GPT2}, "eval": {"local_root": str(SHARED)}})
    wiki2, wiki103 = open_eval_set(recipe, "wikitext2"), open_eval_set(recipe, "wikitext103")
    assert wiki2.store.path == wiki103.store.path and wiki2.store.manifest["detokenizer"] == "wikitext"
    ptb = open_eval_set(recipe, "ptb")
    text = ptb.tokenizer.decode(ptb.rows(torch.arange(4))[0].flatten().tolist())
    assert ptb.store.manifest["detokenizer"] == "ptb" and "n't" in text and " n't" not in text


@needs_shared
def test_a_saved_copy_under_local_root_serves_any_set_offline(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [f"Story {i}: markets rose as traders bought shares of the company ." for i in range(40)]
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": texts, "label": [0] * 40})}).save_to_disk(
        str(tmp_path / "eval" / "ag_news"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = recipe_from_dict({"data": {"source": "local", "paths": ["x.txt"], "seq_len": 32,
                                        "store_dir": str(tmp_path / "cache")},
                               "tokenizer": {"kind": "gpt2", "path": GPT2}, "eval": {"local_root": str(tmp_path)}})
    sub, _ = eval_set_recipe(recipe, "ag_news")
    assert sub.data.hub_location == str(tmp_path / "eval" / "ag_news")
    dataset = open_eval_set(recipe, "ag_news")
    encoded = sum(len(ids) + 1 for ids in dataset.tokenizer.encode_batch(texts))   # + EOS per document
    assert len(dataset) == encoded // 30      # wrap: BOS + 30-token chunk + EOS, remainder dropped
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts})}).save_to_disk(
        str(tmp_path / "eval" / "lm1b"))
    with pytest.raises(DataSourceError, match=rf"set 'lm1b': cannot load .* from {tmp_path}.*no split 'test'"):
        open_eval_set(recipe, "lm1b")
