"""Named corpora of the field on the Hugging Face hub, loaded with `datasets` (imported only
here, so runs on prepared token stores never need it). Every id is served as data files
(parquet or JSON lines): `datasets` 4 and later no longer run loading scripts. Offline, loading
fails at once with a message that says how to point the recipe at local files."""

from __future__ import annotations

from dataclasses import dataclass, field

from imdm.data.hub import hub_online
from imdm.data.local_text import DataSourceError

PARQUET_EXPORT = "refs/convert/parquet"   # the hub's own parquet copy of a script-based dataset


class HubUnavailable(DataSourceError):
    """A named set that could not be loaded from the hub (or the saved copy given instead);
    `reason` says why, without the advice the message ends with."""

    def __init__(self, reason: str, advice: str):
        self.reason = reason
        super().__init__(f"{reason}. {advice}")


@dataclass(frozen=True)
class HubSet:
    """Where a named set lives: `datasets.load_dataset(path, config, split=..., data_dir=...,
    revision=...)`, the column holding its text and the detokenizer the zero-shot protocol
    applies to it."""
    path: str
    config: str | None
    splits: dict = field(default_factory=dict)     # our split name -> datasets split expression
    column: str = "text"
    detokenizer: str = "none"
    data_dir: str | None = None    # a folder of the repository: one configuration of a parquet export
    revision: str | None = None


_SPLITS = {"train": "train", "validation": "validation", "test": "test"}

# Sources (from each repository's file listing on the hub):
# - openwebtext: Skylion007/openwebtext, the script replaced by data/train-*.parquet by its owner
#   (hub discussion #18, "convert-parquet-full"); one split, so validation is its last 100,000 rows.
# - lm1b: billion-word-benchmark/lm1b keeps only its loading script lm1b.py on main; the hub's
#   parquet export holds the same rows under plain_text/{train,test}/. Validation = test (MDLM).
# - wikitext2 / wikitext103: Salesforce/wikitext, converted to parquet on main (hub PR #8), one
#   folder per configuration; the raw configurations keep the text as published.
# - ptb: ptb-text-only/ptb_text_only keeps only ptb_text_only.py on main; the parquet export holds
#   penn_treebank/{train,validation,test}/, column "sentence" (GPTQ-style evaluators load it so).
# - lambada: EleutherAI/lambada_openai, converted to parquet on main; configuration "default" is
#   OpenAI's English test file (5,153 passages), the one MDLM scores.
# - ag_news: fancyzhx/ag_news (where the canonical "ag_news" moved), parquet on main.
# - scientific_papers_*: armanc/scientific_papers keeps only its script on main; the parquet export
#   has arxiv/ and pubmed/ folders with the script's columns (article, abstract, section_names).
#   The export's arxiv train split is partial (its converter stops at 5 GB); zero-shot reads test.
HUB_SETS = {
    "openwebtext": HubSet("Skylion007/openwebtext", None,
                          {"train": "train[:-100000]", "validation": "train[-100000:]"}),
    "lm1b": HubSet("billion-word-benchmark/lm1b", None, {"train": "train", "validation": "test", "test": "test"},
                   detokenizer="lm1b", data_dir="plain_text", revision=PARQUET_EXPORT),
    "wikitext2": HubSet("Salesforce/wikitext", "wikitext-2-raw-v1", _SPLITS, detokenizer="wikitext"),
    "wikitext103": HubSet("Salesforce/wikitext", "wikitext-103-raw-v1", _SPLITS, detokenizer="wikitext"),
    "ptb": HubSet("ptb-text-only/ptb_text_only", None, _SPLITS, column="sentence", detokenizer="ptb",
                  data_dir="penn_treebank", revision=PARQUET_EXPORT),
    "lambada": HubSet("EleutherAI/lambada_openai", "default", {"validation": "test", "test": "test"},
                      detokenizer="lambada"),
    "ag_news": HubSet("fancyzhx/ag_news", None, {"train": "train", "validation": "test", "test": "test"}),
    "scientific_papers_arxiv": HubSet("armanc/scientific_papers", None, _SPLITS, column="article",
                                      detokenizer="scientific_papers", data_dir="arxiv", revision=PARQUET_EXPORT),
    "scientific_papers_pubmed": HubSet("armanc/scientific_papers", None, _SPLITS, column="article",
                                       detokenizer="scientific_papers", data_dir="pubmed", revision=PARQUET_EXPORT),
}


def load_hub_documents(name: str, split: str, location: str = ""):
    """(a function iterating the split's documents, a content fingerprint) of the named set. `location` replaces the hub
    path: a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, or any path
    `datasets.load_dataset` accepts (the same code then runs without the hub)."""
    spec = HUB_SETS[name]
    if split not in spec.splits:
        raise DataSourceError(f"data.split: '{name}' has splits {sorted(spec.splits)}, not '{split}'")
    try:
        import datasets
    except ImportError as err:
        raise DataSourceError("hub sources need the `datasets` package (pip install datasets)") from err
    expression = spec.splits[split]
    try:
        if location:
            dataset = _load_local(datasets, location, expression)
        else:
            if not hub_online():
                datasets.config.HF_HUB_OFFLINE = True
            dataset = datasets.load_dataset(spec.path, spec.config, split=expression, data_dir=spec.data_dir,
                                            revision=spec.revision)
    except Exception as err:
        where = "/".join(p for p in (spec.path, spec.config, spec.data_dir) if p)
        raise HubUnavailable(
            f"cannot load dataset '{name}' ({where}, split {expression}) "
            f"{'from ' + location if location else 'from the Hugging Face hub or its cache'}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
            "Offline, use data.source = \"local\" with data.paths pointing at text files (.txt/.xz/.gz/.zip/.jsonl), "
            "or data.hub_location pointing at a saved copy of the dataset") from None
    if spec.column not in dataset.column_names:
        raise DataSourceError(f"dataset '{name}' has no column '{spec.column}' (has {dataset.column_names})")

    def documents():
        for batch in dataset.iter(batch_size=1000):
            yield from batch[spec.column]

    return documents, f"{name}:{split}:{dataset._fingerprint}"


def _load_local(datasets, location: str, expression: str):
    import os
    if os.path.isdir(location) and (os.path.exists(os.path.join(location, "dataset_dict.json"))
                                    or os.path.exists(os.path.join(location, "dataset_info.json"))):
        loaded = datasets.load_from_disk(location)
        if isinstance(loaded, datasets.DatasetDict):
            base = expression.split("[")[0]
            if base not in loaded:
                raise KeyError(f"no split '{base}' in {location} (has {list(loaded)})")
            loaded = loaded[base]
            if "[" in expression:
                start, _, stop = expression[expression.index("[") + 1: -1].partition(":")
                loaded = loaded.select(range(len(loaded))[slice(int(start) if start else None,
                                                                 int(stop) if stop else None)])
        return loaded
    return datasets.load_dataset(location, split=expression)
