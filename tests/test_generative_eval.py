"""Generative perplexity and entropy (imdm.eval.generative) by hand with a judge whose token
probabilities are known, the first-EOS count, retokenisation between GPT-2 and BERT ids, clear
errors for empty or too-short sets, and `imdm eval` of a tiny text run writing eval.json and
eval.md with the human-text row."""

import json
import math

import pytest
import torch

from imdm.eval.generative import (counted_targets, generative_perplexity, retokenize, score_sequences,
                                  unigram_entropy)
from imdm.eval.judge import Judge
from imdm.recipe import RecipeError
from judge_fixtures import SHARED, needs_shared, tiny_hf_judge, tiny_text_run

P = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)   # the stand-in judge's p(token), whatever came before


class UnigramJudge(Judge):
    """A judge whose text is space-separated ids and whose NLL of token t is -log P[t]."""

    def __init__(self, context=3, eos_id=None, batch=2):
        super().__init__("unigram", context, eos_id, torch.device("cpu"), batch)

    def encode(self, texts):
        return [[int(t) for t in text.split()] for text in texts]

    def decode(self, ids):
        return " ".join(str(i) for i in ids)

    def _window_nll(self, tokens, lengths):
        return [-P[tokens[b, 1:n]].log() for b, n in enumerate(lengths)]


def _nll(*tokens):
    return sum(-math.log(float(P[t])) for t in tokens)


def test_gen_ppl_is_the_token_weighted_exp_mean_nll():
    judge = UnigramJudge(context=3)
    seqs = [[0, 1, 2, 3, 3, 1], [2, 0], [3]]        # windows of 3 cover the first one in three pieces
    nll = judge.token_nll(seqs)
    assert [len(n) for n in nll] == [5, 1, 0]
    ppl, count = generative_perplexity(judge, seqs)
    assert count == 6
    assert ppl == pytest.approx(math.exp((_nll(1, 2, 3, 3, 1) + _nll(0)) / 6), rel=1e-12)
    per_sample_mean = (math.exp(_nll(1, 2, 3, 3, 1) / 5) + math.exp(_nll(0))) / 2
    assert abs(ppl - per_sample_mean) > 1.0           # token-weighted, not a mean over samples


def test_every_non_eos_token_and_the_first_eos_count():
    eos = 0
    assert counted_targets([2, 1, 0, 3, 0, 0], eos).tolist() == [True, True, True, False, False]
    # an EOS at position 0 is the first one but no target: no later EOS counts
    assert counted_targets([0, 1, 0, 2, 3], eos).tolist() == [True, False, True, True]
    assert counted_targets([1, 2, 3], None).tolist() == [True, True]
    judge = UnigramJudge(context=8, eos_id=eos)
    ppl, count = generative_perplexity(judge, [[2, 1, 0, 3, 0, 0], [0, 1, 0, 2, 3]])
    assert count == 3 + 3
    assert ppl == pytest.approx(math.exp((_nll(1, 0, 3) + _nll(1, 2, 3)) / 6), rel=1e-12)


def test_entropy_is_the_mean_of_each_samples_unigram_entropy():
    assert unigram_entropy([[7, 7, 9, 9], [5, 5, 5, 5], [1, 2, 3, 4]]) == pytest.approx(
        (math.log(2) + 0.0 + math.log(4)) / 3, rel=1e-12)
    score = score_sequences(UnigramJudge(), [[0, 0, 1, 1]], lambda ids: " ".join(map(str, ids)))
    assert score == {"gen_ppl": pytest.approx(math.exp(_nll(0, 1, 1) / 3)), "entropy": pytest.approx(math.log(2)),
                     "num_samples": 1, "tokens": 3}


def test_empty_and_too_short_sets_are_clear_errors():
    judge = UnigramJudge()
    with pytest.raises(RecipeError, match="no sequences to score"):
        generative_perplexity(judge, [])
    with pytest.raises(RecipeError, match="no sequences to score"):
        score_sequences(judge, [], str)
    with pytest.raises(RecipeError, match="too short"):
        generative_perplexity(judge, [[1], [2]])
    with pytest.raises(RecipeError, match="no empty one"):
        unigram_entropy([[1, 2], []])


class TokenizerJudge(UnigramJudge):
    """The stand-in judge reading text with one of the project's tokenizers."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def encode(self, texts):
        return self.tokenizer.encode_batch(texts)


def test_retokenisation_between_gpt2_and_bert_wordpiece():
    needs_shared()
    from imdm.data.tokenizer import load_tokenizer
    gpt2 = load_tokenizer("gpt2", str(SHARED / "tokenizers" / "gpt2"))
    bert = load_tokenizer("bert", str(SHARED / "tokenizers" / "bert-base-uncased"))
    text = "The quick brown fox jumps over the lazy dog. It was 1984, in Paris."
    gpt2_ids = gpt2.encode(text)
    bert_ids = retokenize([gpt2_ids], gpt2.decode, TokenizerJudge(bert))[0]
    assert bert_ids == bert.encode(text) and bert_ids != gpt2_ids
    back = retokenize([[bert.bos_id, *bert_ids, bert.eos_id]], bert.decode, TokenizerJudge(gpt2))[0]
    assert back == gpt2.encode(text.lower())       # WordPiece is uncased; [CLS] and [SEP] decode to nothing


def test_imdm_eval_of_a_text_run_writes_the_report_with_the_human_row(tmp_path, capsys):
    from imdm.cli import main as cli_main
    run_dir = tiny_text_run(tmp_path, "gen-imdm", "imdm", sampling={"steps": [1, 4]})
    judge = tiny_hf_judge(tmp_path / "judge", context=16)
    assert cli_main(["eval", str(run_dir), f"eval.judge={judge}", "eval.judge_batch=3"]) == 0
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["judge"] == str(judge) and report["method"] == "imdm" and report["step"] == 2
    assert [r["steps"] for r in report["rows"]] == [1, 4]
    for row in report["rows"]:
        assert row["num_samples"] == 4 and row["nfe"] <= row["steps"] and row["temperature"] == 1.0
        assert row["tokens"] > 4 * 15 and 1.0 < row["gen_ppl"] and 0.0 < row["entropy"] <= math.log(32)
        assert row["tc_nats"] is None
    human = report["human"]
    assert human["num_samples"] == 4 and 1.0 < human["gen_ppl"] and 0.0 < human["entropy"] <= math.log(32)
    assert [z["set"] for z in report["zero_shot"]] == ["validation"] and report["mauve"] is None
    markdown = (run_dir / "eval.md").read_text()
    assert "| human (validation) |" in markdown and f"{human['gen_ppl']:.2f}" in markdown
    assert markdown.count("\n| 1 |") + markdown.count("\n| 4 |") == 2

    assert cli_main(["eval", str(run_dir), f"eval.judge={judge}", "sampling.duplicate=3", "conditional.enabled=true",
                     "eval.frontier_temperatures=[0.5, 2.0]",
                     "conditional.documents=2", "conditional.min_doc_tokens=12", "conditional.prefix_tokens=4",
                     "conditional.length=6", "conditional.continuations=3", "conditional.mauve_seeds=2"]) == 0
    both = json.loads((run_dir / "eval.json").read_text())
    assert [(r["steps"], r["temperature"]) for r in both["rows"]] == [(1, 1.0), (4, 1.0), (4, 0.5), (4, 2.0)]
    assert len({r["gen_ppl"] for r in both["rows"][1:]}) == 3      # the temperature reached the sampler
    for row in both["rows"]:        # groups of 3 sharing mask states: the plug-in bound is (L - 1) ln 3
        assert 0.0 <= row["tc_nats"] <= 31 * math.log(3) + 1e-9
    assert [m["steps"] for m in both["mauve"]] == [1, 4]
    for m in both["mauve"]:
        assert len(m["mauve_seeds"]) == 2 and 0.0 < m["mauve"] <= 1.0 and (m["documents"], m["continuations"]) == (2, 3)
    assert "## MAUVE of prompted continuations" in (run_dir / "eval.md").read_text()
    capsys.readouterr()
    assert cli_main(["eval", str(run_dir), "eval.frontier_temperatures=[0.0]"]) == 2
    assert "eval.frontier_temperatures: temperatures must be > 0" in capsys.readouterr().err
    assert cli_main(["eval", str(run_dir), "eval.judge=", "conditional.enabled=true", "conditional.prefix_tokens=4",
                     "conditional.length=6"]) == 2
    assert "MAUVE embeds text with the judge" in capsys.readouterr().err

    assert cli_main(["eval", str(run_dir), "eval.judge=", "sampling.num_samples=8", "sampling.batch=8"]) == 0
    off = json.loads((run_dir / "eval.json").read_text())
    assert off["rows"] == [] and off["human"] is None and off["judge"] == ""
    capsys.readouterr()
    assert cli_main(["eval", str(run_dir), f"eval.judge={judge}", "sampling.num_samples=100000",
                     "sampling.batch=100000"]) == 2
    assert "the human reference row needs 100000 validation sequences" in capsys.readouterr().err
