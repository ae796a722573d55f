"""Judges (imdm.eval.judge): a tiny random Hugging Face GPT-2 scores exactly as its own forward
pass does, window by window; an autoregressive run of this project scores with its start symbol
and without the mask's logit; a missing or unfit judge is a clear error."""

import pytest
import torch
import torch.nn.functional as F

from imdm.diffusion.subs import without_mask
from imdm.eval.judge import load_judge
from imdm.recipe import RecipeError
from judge_fixtures import tiny_hf_judge, tiny_text_run

CPU = torch.device("cpu")


def _direct_nll(model, ids):
    logits = model(torch.tensor([ids])).logits[0]
    return -F.log_softmax(logits[:-1].double(), dim=-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


@pytest.fixture(scope="module")
def hf_judge(tmp_path_factory):
    return load_judge(str(tiny_hf_judge(tmp_path_factory.mktemp("judge"), context=16)), CPU, batch=3)


def test_hf_judge_scores_like_a_direct_forward_in_windows(hf_judge):
    judge = hf_judge
    assert judge.context == 16 and judge.eos_id == judge.tokenizer.eos_token_id
    short = judge.encode(["the cat sat on the mat."])[0]
    long = judge.encode(["the dog ate the bone. a bird sang in the tree, and the cat watched it. " * 3])[0]
    assert 3 < len(short) <= 16 < 2 * 15 < len(long)
    assert judge.decode(short) == "the cat sat on the mat."
    nll_short, nll_long, nll_one = judge.token_nll([short, long, short[:1]])
    assert nll_short.dtype == torch.float64 and nll_short.shape == (len(short) - 1,)
    torch.testing.assert_close(nll_short, _direct_nll(judge.model, short), rtol=1e-5, atol=1e-5)
    # windows of 16 tokens starting at 0, 15, 30, ...: each read afresh from the previous one's last token
    expected = torch.cat([_direct_nll(judge.model, long[s: s + 16]) for s in range(0, len(long) - 1, 15)])
    assert nll_long.shape == (len(long) - 1,)
    torch.testing.assert_close(nll_long, expected, rtol=1e-5, atol=1e-5)
    assert nll_one.numel() == 0


def test_hf_judge_features_are_the_last_hidden_state_at_the_last_token(hf_judge):
    judge = hf_judge
    seqs = judge.encode(["the cat", "a bird sang in the tree", "then the rain came down " * 6])
    feats = judge.features(seqs)
    assert feats.shape == (3, 32) and feats.dtype == torch.float32
    for row, seq in zip(feats, seqs):
        cut = seq[:16]
        hidden = judge.model(torch.tensor([cut]), output_hidden_states=True).hidden_states[-1][0, -1]
        torch.testing.assert_close(row, hidden, rtol=1e-5, atol=1e-5)
    with pytest.raises(RecipeError, match="no empty one"):
        judge.features([seqs[0], []])


def test_missing_judges_are_clear_errors(tmp_path, monkeypatch):
    from imdm.data.hub import hub_online
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_online.cache_clear()
    try:
        with pytest.raises(RecipeError) as err:
            load_judge("no-such-org/no-such-judge", CPU)
        message = str(err.value)
        assert "eval.judge" in message and "'no-such-org/no-such-judge'" in message
        assert "save_pretrained" in message and "run:RUN_DIR" in message
        with pytest.raises(RecipeError, match="no such folder"):
            load_judge(str(tmp_path / "absent"), CPU)
        with pytest.raises(RecipeError, match="not a run directory"):
            load_judge(f"run:{tmp_path / 'absent'}", CPU)
        with pytest.raises(RecipeError, match="no judge named"):
            load_judge("", CPU)
    finally:
        hub_online.cache_clear()


def test_a_hugging_face_judge_without_transformers_says_what_to_install(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "transformers", None)     # import transformers raises ImportError
    with pytest.raises(RecipeError, match=r"pip install 'imdm\[eval\]'"):
        load_judge(str(tmp_path), CPU)


@pytest.fixture(scope="module")
def ar_text_run(tmp_path_factory):
    return tiny_text_run(tmp_path_factory.mktemp("runs"), "judge-ar", "ar")


def test_an_ar_run_judges_with_its_start_symbol_and_without_the_mask(ar_text_run):
    judge = load_judge(f"run:{ar_text_run}", CPU, batch=2)
    tok = judge.tokenizer
    assert judge.context == 32 and judge.eos_id == tok.eos_id == 50256
    ids = judge.encode(["To be, or not to be<|endoftext|>that is the question."])[0]
    assert ids == tok.encode("To be, or not to be") + [50256] + tok.encode("that is the question.")
    long = tok.encode("Now is the winter of our discontent made glorious summer by this sun of York; " * 4)
    assert len(long) > 2 * 31
    nll_ids, nll_long = judge.token_nll([ids, long])

    def direct(seq):   # the network reads [start, x_0 .. x_{n-2}]; position i predicts x_i
        logits = judge.model(torch.tensor([[tok.mask_id] + seq[:-1]]))[0]
        logp = F.log_softmax(without_mask(logits, tok.mask_id).double(), dim=-1)
        return -logp[torch.arange(1, len(seq)), torch.tensor(seq[1:])]
    torch.testing.assert_close(nll_ids, direct(ids), rtol=1e-5, atol=1e-5)
    expected = torch.cat([direct(long[s: s + 32]) for s in range(0, len(long) - 1, 31)])
    torch.testing.assert_close(nll_long, expected, rtol=1e-5, atol=1e-5)

    feats = judge.features([ids, long])       # the head's input where the network reads the last token
    logits = judge.model(torch.tensor([[tok.mask_id] + ids]))[0, -1]
    torch.testing.assert_close(judge.model.head.linear(feats[0]), logits, rtol=1e-4, atol=1e-4)


def _synthetic_run(tmp_path, name, algorithm):
    from imdm.algorithms.registry import recipe_from_dict
    from imdm.parallel.distributed import init_distributed
    from imdm.train.trainer import Trainer
    recipe = recipe_from_dict({
        "run": {"output_dir": str(tmp_path), "name": name},
        "model": {"size": "custom", "d_model": 32, "n_blocks": 1, "n_heads": 2},
        "algorithm": {"name": algorithm}, "data": {"vocab_size": 8, "seq_len": 5, "num_sequences": 64},
        "train": {"steps": 1, "global_batch": 8, "micro_batch": 8, "eval_batches": 1, "device": "cpu"},
        "logging": {"progress": False}})
    Trainer(recipe, init_distributed("cpu")).fit()
    return tmp_path / name


def test_runs_that_cannot_judge_text_are_refused(tmp_path):
    with pytest.raises(RecipeError, match="algorithm.name 'mdlm' is not autoregressive"):
        load_judge(f"run:{_synthetic_run(tmp_path, 'mdlm', 'mdlm')}", CPU)
    with pytest.raises(RecipeError, match="no tokenizer"):
        load_judge(f"run:{_synthetic_run(tmp_path, 'ar', 'ar')}", CPU)
