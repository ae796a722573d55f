"""Detokenizers that undo the tokenised spacing of evaluation corpora before GPT-2 encoding, as
the MDLM/SEDD/DUO zero-shot protocol does. Rules restated from MDLM's dataloader (facts, not
code). One reference rule is left out: its wikitext regex `/' [0-9]/` has literal slashes and
matches almost nothing."""

from __future__ import annotations

import re
from typing import Callable


def _brackets_tight(text: str) -> str:
    text = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", text)
    text = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", text)
    text = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", text)
    text = re.sub(r'"\s*([^"]*?)\s*"', r'"\1"', text)
    return re.sub(r"'\s*([^']*?)\s*'", r"'\1'", text)


def wikitext(text: str) -> str:
    text = text.replace("s '", "s'")
    for old, new in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "), (" ; ", "; "),
                     (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):
        text = text.replace(old, new)
    text = _brackets_tight(text)
    for old, new in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="), (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
                     (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s")):
        text = text.replace(old, new)
    return text


def ptb(text: str) -> str:
    for old, new in ((" 's", "'s"), ("s ' ", "s' "), (" n't", "n't"), (" \n ", "\n"), ("\\/", "/")):
        text = text.replace(old, new)
    for _ in range(10):
        text = text.replace(" N ", " 1 ")
    for old, new in (("$ 1", "$1"), ("# 1", "#1"), ("<unk>", "?")):
        text = text.replace(old, new)
    return text


def lm1b(text: str) -> str:
    text = text.replace("http : / / ", "http://").replace("https : / / ", "https://")
    text = re.sub(r" '(\w+)", r"'\1", text)
    text = re.sub(r" (\w+) \. ", r" \1. ", text)
    text = re.sub(r" (\w+) \.$", r" \1.", text)
    text = text.replace(" ? ", "? ")
    text = re.sub(r" \?$", "?", text)
    text = text.replace(" ! ", "! ")
    text = re.sub(r" \!$", "!", text)
    for old, new in ((" , ", ", "), (" : ", ": "), (" ; ", "; "), (" / ", "/")):
        text = text.replace(old, new)
    text = re.sub(r'" ([^"]+) "', r'"\1"', text)
    text = re.sub(r"' ([^']+) '", r"'\1'", text)
    text = re.sub(r"\( ([^\(\)]+) \)", r"(\1)", text)
    text = re.sub(r"\[ ([^\[\]]+) \]", r"[\1]", text)
    return text.replace("$ ", "$").replace("\N{POUND SIGN} ", "\N{POUND SIGN}")


def lambada(text: str) -> str:
    text = text.replace("\N{LEFT DOUBLE QUOTATION MARK}", '"').replace("\N{RIGHT DOUBLE QUOTATION MARK}", '"')
    return "\n" + text.strip()


def scientific_papers(text: str) -> str:
    return lm1b(wikitext(text))


DETOKENIZERS: dict[str, Callable[[str], str]] = {
    "none": lambda text: text, "wikitext": wikitext, "ptb": ptb, "lm1b": lm1b, "lambada": lambada,
    "scientific_papers": scientific_papers,
}
