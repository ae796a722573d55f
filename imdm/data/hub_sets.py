"""Named corpora of the field on the Hugging Face hub, loaded with `datasets` (imported only
here, so runs on prepared token stores never need it). Offline, loading fails at once with a
message that says how to point the recipe at local files."""

from __future__ import annotations

from dataclasses import dataclass, field

from imdm.data.hub import hub_online
from imdm.data.local_text import DataSourceError


@dataclass(frozen=True)
class HubSet:
    path: str
    config: str | None
    splits: dict = field(default_factory=dict)     # our split name -> datasets split expression
    column: str = "text"
    detokenizer: str = "none"
    trust_remote_code: bool = False


HUB_SETS = {
    "openwebtext": HubSet("openwebtext", None, {"train": "train[:-100000]", "validation": "train[-100000:]"},
                          trust_remote_code=True),
    "lm1b": HubSet("lm1b", None, {"train": "train", "validation": "test"}, detokenizer="lm1b"),
    "wikitext2": HubSet("wikitext", "wikitext-2-raw-v1",
                        {"train": "train", "validation": "validation", "test": "test"}, detokenizer="wikitext"),
    "wikitext103": HubSet("wikitext", "wikitext-103-raw-v1",
                          {"train": "train", "validation": "validation", "test": "test"}, detokenizer="wikitext"),
    "ptb": HubSet("ptb_text_only", None, {"train": "train", "validation": "validation", "test": "test"},
                  column="sentence", detokenizer="ptb"),
    "lambada": HubSet("EleutherAI/lambada_openai", "default", {"validation": "test", "test": "test"},
                      detokenizer="lambada"),
    "ag_news": HubSet("ag_news", None, {"train": "train", "validation": "test", "test": "test"}),
    "scientific_papers_arxiv": HubSet("scientific_papers", "arxiv",
                                      {"train": "train", "validation": "validation", "test": "test"},
                                      column="article", detokenizer="scientific_papers", trust_remote_code=True),
    "scientific_papers_pubmed": HubSet("scientific_papers", "pubmed",
                                       {"train": "train", "validation": "validation", "test": "test"},
                                       column="article", detokenizer="scientific_papers", trust_remote_code=True),
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
            dataset = datasets.load_dataset(spec.path, spec.config, split=expression,
                                            trust_remote_code=spec.trust_remote_code or None)
    except Exception as err:
        raise DataSourceError(
            f"cannot load dataset '{name}' ({spec.path}{'/' + spec.config if spec.config else ''}, split "
            f"{expression}) {'from ' + location if location else 'from the Hugging Face hub or its cache'}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Offline, use "
            f"data.source = \"local\" with data.paths pointing at text files (.txt/.xz/.gz/.zip/.jsonl), or "
            f"data.hub_location pointing at a saved copy of the dataset") from None
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
