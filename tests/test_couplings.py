"""Coupling generation for ReDi: 1 and 2 ranks write the same pairs, an interrupted generation
resumes with neither duplicates nor gaps (and training refuses the set until it is complete),
the teacher keeps the clean positions of z_t and fills every mask, and the all-mask start."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from imdm import rng
from imdm.couplings import FAIL_AFTER_ENV, generate_couplings
from imdm.data.coupling_store import coupling_path, read_manifest
from imdm.data.local_text import DataSourceError
from imdm.data.order import GlobalBatchOrder
from imdm.data.synthetic import SyntheticRepeat
from imdm.build import sampler_settings
from imdm.parallel.distributed import init_distributed
from imdm.algorithms.registry import recipe_from_dict
from imdm.recipe.writer import recipe_to_toml
from imdm.run_loading import load_run
from imdm.sampling.ancestral import generation_seeds
from imdm.train.trainer import Trainer

DATA = {"vocab_size": 16, "seq_len": 6, "num_sequences": 500}
MODEL = {"size": "custom", "d_model": 32, "n_blocks": 2, "n_heads": 2, "dropout": 0.0}
ARRAYS = ("z", "x0", "t", "seed", "length")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread (and do not fight over shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _recipe(out, name, **sections):
    table = {"run": {"output_dir": str(out), "name": name}, "model": MODEL, "algorithm": {"noise_dim": 8},
             "data": DATA, "train": {"steps": 4, "global_batch": 8, "micro_batch": 8, "eval_batches": 1},
             "logging": {"every_steps": 1, "progress": False}}
    for key, body in sections.items():
        table[key] = {**table.get(key, {}), **body}
    return recipe_from_dict(table)


def _pairs(out, name, **couplings):
    return _recipe(out, name, couplings={"teacher_run": "teacher", "num": 20, "chunk": 6, "steps": 8, **couplings})


def _arrays(out, name):
    folder = coupling_path(out, name)
    return {a: np.load(folder / f"{a}.npy") for a in ARRAYS}


def _cli(recipe, out, nproc=1, env=None):
    path = out / f"{recipe.run.name}.toml"
    path.write_text(recipe_to_toml(recipe))
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    return subprocess.run([sys.executable, *launcher, "-m", "imdm", "couplings", str(path)],
                          capture_output=True, text=True, env=env or ENV)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny trained IMDM teacher and the reference coupling set it completes in one process."""
    out = tmp_path_factory.mktemp("runs")
    Trainer(_recipe(out, "teacher"), init_distributed("cpu")).fit()
    generate_couplings(_pairs(out, "ref"), init_distributed("cpu"))
    return out


@pytest.mark.timeout(120)
def test_one_and_two_ranks_write_the_same_pairs(runs):
    result = _cli(_pairs(runs, "two"), runs, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_manifest(coupling_path(runs, "two"))["complete"]
    ref, two = _arrays(runs, "ref"), _arrays(runs, "two")
    assert all(np.array_equal(ref[a], two[a]) for a in ARRAYS)
    writers = {json.loads(p.read_text())["rank"] for p in (coupling_path(runs, "two") / "done").iterdir()}
    assert writers == {0, 1}                                 # sharded, not gathered on rank 0


@pytest.mark.timeout(120)
def test_interrupted_generation_resumes_without_duplicates_or_gaps(runs):
    recipe = _pairs(runs, "cut")
    result = _cli(recipe, runs, env={**ENV, FAIL_AFTER_ENV: "2"})
    assert result.returncode == 17, result.stderr[-3000:]
    folder = coupling_path(runs, "cut")
    first = {p.name: p.read_text() for p in (folder / "done").iterdir()}
    assert len(first) == 2 and not read_manifest(folder)["complete"]
    student = _recipe(runs, "student", algorithm={"objective": "redi"},
                      data={"source": "couplings", "couplings": "cut"})
    with pytest.raises(DataSourceError, match=r"is incomplete \(2 of 4 chunks done\); rerun"):
        Trainer(student, init_distributed("cpu"))
    with pytest.raises(DataSourceError, match="started with other settings .*generation"):
        generate_couplings(_pairs(runs, "cut", steps=4), init_distributed("cpu"))
    generate_couplings(recipe, init_distributed("cpu"))
    after = {p.name: p.read_text() for p in (folder / "done").iterdir()}
    assert sorted(after) == ["000000", "000001", "000002", "000003"]
    assert all(after[name] == text for name, text in first.items())      # done chunks were not redone
    assert {json.loads(after[n])["pid"] for n in set(after) - set(first)} == {os.getpid()}
    assert read_manifest(folder)["complete"]
    ref, cut = _arrays(runs, "ref"), _arrays(runs, "cut")
    assert all(np.array_equal(ref[a], cut[a]) for a in ARRAYS)


def test_teacher_completion_keeps_clean_positions_and_fills_every_mask(runs):
    pairs, mask = _arrays(runs, "ref"), DATA["vocab_size"]
    z, x0, t = pairs["z"].astype(np.int64), pairs["x0"].astype(np.int64), pairs["t"]
    masked = z == mask
    assert 0 < masked.sum() < masked.size and (x0 != mask).all()
    assert (x0[~masked] == z[~masked]).all()
    assert ((t >= 1e-3) & (t <= 1)).all() and len(np.unique(t)) == len(t)
    assert np.array_equal(pairs["seed"], generation_seeds(42, 0, 20, rng.STREAM_COUPLING_SEED).numpy())
    assert (pairs["length"] == DATA["seq_len"]).all()
    order = GlobalBatchOrder(DATA["num_sequences"], 1, 0)
    real = SyntheticRepeat(**DATA).rows(torch.cat([order.global_rows(i) for i in range(20)]))[0].numpy()
    assert (z[~masked] == real[~masked]).all()                # z_t = q(z_t | x) of the ordered training rows
    teacher = load_run(runs / "teacher", torch.device("cpu"))
    settings = sampler_settings(teacher.recipe, 8)
    i = int(np.argmax(masked.sum(1)))
    again = teacher.process.sample(teacher.model, settings, torch.from_numpy(pairs["seed"][i:i + 1]), 6,
                                     start=torch.from_numpy(z[i:i + 1]), t_start=float(t[i])).tokens
    assert again[0].tolist() == x0[i].tolist()               # the stored seed reproduces the completion


def test_all_mask_start(runs):
    generate_couplings(_pairs(runs, "allmask", start="all_mask", num=4, chunk=4), init_distributed("cpu"))
    pairs = _arrays(runs, "allmask")
    assert (pairs["z"] == DATA["vocab_size"]).all() and (pairs["t"] == 1.0).all()
    assert (pairs["x0"] != DATA["vocab_size"]).all()
