"""The text data pipeline: tokenizers, local documents, detokenizers, packing, token stores,
hub loading through a local copy, offline errors, resumable per-rank loading."""

import json
import lzma
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from imdm.data.detokenizers import ptb, wikitext
from imdm.data.hub_sets import load_hub_documents
from imdm.data.loader import make_loader
from imdm.data.local_text import DataSourceError, local_documents, resolve_paths
from imdm.data.order import GlobalBatchOrder
from imdm.data.packing import WrapPacker, pad_pack
from imdm.data.text_dataset import open_text_dataset
from imdm.data.tokenizer import TokenizerError, load_tokenizer
from imdm.algorithms.registry import recipe_from_dict

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GPT2 = str(SHARED / "tokenizers" / "gpt2")
BERT = str(SHARED / "tokenizers" / "bert-base-uncased")
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data beside the checkout")


@needs_shared
def test_tokenizer_ids_and_special_tokens():
    gpt2 = load_tokenizer("gpt2", GPT2)
    assert gpt2.encode("Hello world, this is a test.") == [15496, 995, 11, 428, 318, 257, 1332, 13]
    assert (gpt2.vocab_size, gpt2.mask_id, gpt2.bos_id, gpt2.eos_id) == (50258, 50257, 50256, 50256)
    assert gpt2.decode([15496, 995]) == "Hello world"
    bert = load_tokenizer("bert", BERT)
    assert bert.encode("Hello world, this is a test.") == [7592, 2088, 1010, 2023, 2003, 1037, 3231, 1012]
    assert (bert.vocab_size, bert.mask_id, bert.bos_id, bert.eos_id, bert.pad_id) == (30522, 103, 101, 102, 0)
    assert gpt2.content_hash != bert.content_hash


def test_tokenizer_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from imdm.data import hub
    hub.hub_online.cache_clear()
    with pytest.raises(TokenizerError, match="point tokenizer.path at a local folder"):
        load_tokenizer("gpt2", "some-org/some-tokenizer")
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(TokenizerError, match="lacks merges.txt"):
        load_tokenizer("gpt2", str(tmp_path))
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer("bert", str(tmp_path / "missing"))
    hub.hub_online.cache_clear()


@needs_shared
def test_sentencepiece_tool_trains_a_loadable_model(tmp_path):
    from imdm.tools.train_sentencepiece import train_sentencepiece
    model = train_sentencepiece(tmp_path / "sp", [str(SHARED / "corpus" / "tinyshakespeare" / "input.txt")], 500)
    tok = load_tokenizer("sentencepiece", str(model.parent))
    assert tok.vocab_size == 500 and tok.mask_id == 4 and (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
    assert tok.decode(tok.encode("To be, or not to be")) == "To be, or not to be"


def test_local_documents_from_every_format(tmp_path):
    (tmp_path / "a.txt").write_text("first para\nstill first\n\nsecond para\n")
    (tmp_path / "b.txt.xz").write_bytes(lzma.compress("caf\xe9".encode("latin-1")))
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as z:
        z.writestr("c/README", "skip me")
        z.writestr("c/one.txt", "zip one")
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "json one"}) + "\n\n" + json.dumps({"text": "json two"}) + "\n")
    files = resolve_paths(["*.txt", "*.xz", "c.zip", "d.jsonl"], tmp_path)
    assert local_documents(files, "paragraph") == ["first para\nstill first", "second para", "caf\xe9", "zip one",
                                                   "json one", "json two"]
    assert local_documents(files[:1], "line") == ["first para\n", "still first\n", "\n", "second para\n"]
    assert local_documents(files[:1], "stripped_line") == ["first para", "still first", "second para"]
    with pytest.raises(DataSourceError, match="'nothing-\\*.txt' matches no file"):
        resolve_paths(["nothing-*.txt"], tmp_path)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataSourceError, match="bad.jsonl:1: no field 'text'"):
        local_documents(resolve_paths(["bad.jsonl"], tmp_path), "file")


def test_detokenizers():
    assert wikitext(" = Title = \n A guest @-@ starring role ( in 2000 ) , 3 @.@ 5 m . \n") == \
        " = Title =\nA guest-starring role (in 2000), 3.5 m.\n"
    assert ptb("the dog 's bone was n't N dollars") == "the dog's bone wasn't 1 dollars"
    assert ptb("costs $ N a share \\/ N N") == "costs $1 a share / 1 N"


def test_wrap_packing_boundaries_exact():
    packer = WrapPacker(seq_len=6, bos=100, eos=99)
    block = packer.feed([[1, 2, 3], [4, 5], [6]])     # stream 1 2 3 E 4 5 E 6 E -> chunks of 4
    assert block.tolist() == [[100, 1, 2, 3, 99, 99], [100, 4, 5, 99, 6, 99]]
    assert packer.carry.tolist() == [99]
    block = packer.feed([[7, 8, 9, 10, 11]])           # carry E + 7 8 9 10 11 E
    assert block.tolist() == [[100, 99, 7, 8, 9, 99]]
    assert packer.carry.tolist() == [10, 11, 99]


def test_pad_packing_truncates_and_records_lengths():
    tokens, lengths = pad_pack([[1, 2], [3, 4, 5, 6, 7, 8]], seq_len=5, bos=100, eos=99, pad=0)
    assert tokens.tolist() == [[100, 1, 2, 99, 0], [100, 3, 4, 5, 99]]
    assert lengths.tolist() == [4, 5]


def _text_recipe(tmp_path, corpus, **data):
    table = {"data": {"source": "local", "paths": [str(corpus)], "seq_len": 16, "store_dir": str(tmp_path / "cache"),
                      "documents": "paragraph", **data},
             "tokenizer": {"kind": "gpt2", "path": GPT2},
             "train": {"global_batch": 4, "micro_batch": 2}}
    return recipe_from_dict(table)


def _corpus(tmp_path, paragraphs=200):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"Paragraph number {i} says something about item {i * 7}." for i in range(paragraphs)))
    return path


@needs_shared
def test_store_roundtrip_rebuild_and_manifest_refusal(tmp_path):
    corpus = _corpus(tmp_path)
    ds = open_text_dataset(_text_recipe(tmp_path, corpus), "train")
    tok = load_tokenizer("gpt2", GPT2)
    expected = WrapPacker(16, tok.bos_id, tok.eos_id).feed(tok.encode_batch(corpus.read_text().split("\n\n")))
    tokens, valid = ds.rows(torch.arange(len(ds)))
    assert torch.equal(tokens, torch.from_numpy(expected)) and bool(valid.all())
    assert ds.store.manifest["dtype"] == "uint16"
    first = ds.store.path
    assert open_text_dataset(_text_recipe(tmp_path, corpus), "train").store.path == first       # reused
    padded = open_text_dataset(_text_recipe(tmp_path, corpus, packing="pad"), "train")
    assert padded.store.path != first and not bool(padded.rows(torch.arange(3))[1].all())
    assert open_text_dataset(_text_recipe(tmp_path, corpus, seq_len=32), "train").store.path != first
    bert = recipe_from_dict({"data": {"source": "local", "paths": [str(corpus)], "seq_len": 16,
                                      "store_dir": str(tmp_path / "cache"), "documents": "paragraph"},
                             "tokenizer": {"kind": "bert", "path": BERT}})
    assert open_text_dataset(bert, "train").store.path != first
    corpus.write_text(corpus.read_text() + "\n\nOne more paragraph.")
    assert open_text_dataset(_text_recipe(tmp_path, corpus), "train").store.path != first    # content changed
    wrong = recipe_from_dict({"data": {"source": "store", "store": str(first), "seq_len": 16, "packing": "pad"},
                              "tokenizer": {"kind": "gpt2", "path": GPT2}})
    with pytest.raises(DataSourceError, match="packing: store has 'wrap', recipe wants 'pad'"):
        open_text_dataset(wrong, "train")
    wrong_tok = recipe_from_dict({"data": {"source": "store", "store": str(first), "seq_len": 16},
                                  "tokenizer": {"kind": "bert", "path": BERT}})
    with pytest.raises(DataSourceError, match="tokenizer_kind: store has 'gpt2', recipe wants 'bert'"):
        open_text_dataset(wrong_tok, "train")


@needs_shared
def test_interrupted_preparation_leaves_no_complete_store(tmp_path, monkeypatch):
    corpus = _corpus(tmp_path)
    from imdm.data import token_store

    def dying_stream(*args, **kwargs):
        yield np.zeros((1, 16), dtype=np.int64), np.full(1, 16, dtype=np.int32)
        raise KeyboardInterrupt

    monkeypatch.setattr(token_store, "pack_stream", dying_stream)
    with pytest.raises(KeyboardInterrupt):
        open_text_dataset(_text_recipe(tmp_path, corpus), "train")
    monkeypatch.undo()
    cache = tmp_path / "cache"
    assert not [p for p in cache.iterdir() if not p.name.startswith(".partial-")]
    ds = open_text_dataset(_text_recipe(tmp_path, corpus), "train")
    assert len(ds) > 1 and (ds.store.path / "manifest.json").is_file()


@needs_shared
def test_empty_packed_set_and_too_short_set_are_clear_errors(tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Only a few words here.")
    with pytest.raises(DataSourceError, match="packs into 0 sequences of 1024 tokens: it has 6 tokens in 1 documents"):
        open_text_dataset(_text_recipe(tmp_path, tiny, seq_len=1024), "train")
    assert not any((tmp_path / "cache").iterdir())
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchOrder(3, 4, 0)


@needs_shared
def test_local_holdout_split(tmp_path):
    corpus = _corpus(tmp_path, 100)
    recipe = _text_recipe(tmp_path, corpus, holdout_documents=10)
    train, valid = open_text_dataset(recipe, "train"), open_text_dataset(recipe, "validation")
    tok = load_tokenizer("gpt2", GPT2)
    paragraphs = corpus.read_text().split("\n\n")
    assert train.store.manifest["num_documents"] == 90 and valid.store.manifest["num_documents"] == 10
    assert valid.store.manifest["num_document_tokens"] == sum(map(len, tok.encode_batch(paragraphs[90:])))


@needs_shared
def test_hub_path_runs_on_a_local_copy(tmp_path):
    datasets = pytest.importorskip("datasets")
    texts = [f"Line {i} of a tiny stand-in for PTB , it was n't long ." for i in range(60)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"sentence": texts}),
                          "test": datasets.Dataset.from_dict({"sentence": texts[:30]})}).save_to_disk(str(tmp_path / "ptb"))
    documents, fingerprint = load_hub_documents("ptb", "test", str(tmp_path / "ptb"))
    assert list(documents()) == texts[:30] and fingerprint.startswith("ptb:test:")
    recipe = recipe_from_dict({"data": {"source": "hub", "dataset": "ptb", "hub_location": str(tmp_path / "ptb"),
                                        "seq_len": 32, "store_dir": str(tmp_path / "cache"), "split": "test"},
                               "tokenizer": {"kind": "gpt2", "path": GPT2}})
    ds = open_text_dataset(recipe, "test")
    assert ds.store.manifest["detokenizer"] == "ptb"
    text = ds.tokenizer.decode(ds.rows(torch.tensor([0]))[0][0].tolist())
    assert "wasn't" in text and "was n't" not in text


def test_hub_source_offline_fails_at_once_with_guidance(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from imdm.data import hub
    hub.hub_online.cache_clear()
    import time
    start = time.perf_counter()
    with pytest.raises(DataSourceError, match="cannot load dataset 'lm1b'.*data.source = \"local\""):
        load_hub_documents("lm1b", "train")
    assert time.perf_counter() - start < 20
    hub.hub_online.cache_clear()


class _Rows:
    """A stand-in dataset: row r is [r, r, ...]."""
    seq_len = 3

    def __len__(self):
        return 50

    def rows(self, index):
        tokens = index[:, None].expand(-1, 3).clone()
        return tokens, torch.ones_like(tokens, dtype=torch.bool)


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_resume_yields_exactly_the_next_batches(world, workers):
    def loaders():
        return [make_loader(_Rows(), GlobalBatchOrder(50, 8, 5), r, world, 2, workers) for r in range(world)]

    straight = [[b["tokens"] for _, b in zip(range(24), iter(loader))] for loader in loaders()]
    first = loaders()
    iters = [iter(loader) for loader in first]
    head = [[next(it)["tokens"] for _ in range(10)] for it in iters]
    states = [loader.state_dict() for loader in first]
    resumed = loaders()
    for loader, state in zip(resumed, states):
        loader.load_state_dict(state)
    tail = [[b["tokens"] for _, b in zip(range(14), iter(loader))] for loader in resumed]
    for r in range(world):
        assert all(torch.equal(a, b) for a, b in zip(straight[r], head[r] + tail[r]))
    # ranks read disjoint parts of each global batch, together exactly the global batch
    order = GlobalBatchOrder(50, 8, 5)
    per_step = 4 // world
    for step in range(3):
        got = torch.cat([torch.cat(straight[r][step * per_step:(step + 1) * per_step])[:, 0] for r in range(world)])
        assert torch.equal(got, order.global_rows(step))


def test_eval_sets_of_a_coupling_run_use_the_sets_tokenizer(monkeypatch):
    """A run trained on couplings scores zero-shot sets with the tokenizer its coupling set was
    made with (its recipe's [tokenizer] is the default GPT-2 one), and a synthetic set is a
    clear error."""
    import imdm.build
    from imdm.eval.perplexity import eval_set_recipe
    recipe = recipe_from_dict({"algorithm": {"objective": "redi"},
                               "data": {"source": "couplings", "couplings": "lm1b-couplings", "seq_len": 128}})
    manifest = {"tokenizer": {"kind": "bert", "path": "bert-files"}}
    monkeypatch.setattr(imdm.build, "build_dataset", lambda r, *a, **k: type("Set", (), {"manifest": manifest}))
    sub, split = eval_set_recipe(recipe, "ptb")
    assert (sub.tokenizer.kind, sub.tokenizer.path) == ("bert", "bert-files") and sub.data.source in ("local", "hub")
    manifest["tokenizer"] = None
    with pytest.raises(ValueError, match="'lm1b-couplings' was made from synthetic data"):
        eval_set_recipe(recipe, "ptb")
