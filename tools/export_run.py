"""Export a run's weights for use outside this project: OUT/model.safetensors (the EMA weights of
the newest complete checkpoint, or with --raw the trained weights; this project's parameter
names, the head without its vocabulary padding) and OUT/config.json (the DiT's configuration,
the step, the source run) beside the run's recipe.toml. OUT must not exist; it appears whole
or not at all.

    python -m imdm.tools.export_run RUN_DIR OUT [--raw]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch

from imdm.run_loading import load_run
from imdm.tools.atomic_folder import atomic_folder
from imdm.parallel.checkpoint import CheckpointError, load_checkpoint


def exported_weights(run_dir: Path, raw: bool) -> tuple[dict[str, torch.Tensor], dict]:
    """(contiguous CPU tensors by name, config record) of the run's newest checkpoint."""
    run = load_run(run_dir, torch.device("cpu"))
    model = run.model
    if raw:
        load_checkpoint(run.checkpoint, {"model": model.state_dict()})
    cfg = model.cfg
    tensors = {}
    for name, value in model.state_dict().items():
        if name.startswith("head.linear.") and value.shape[0] != cfg.vocab_size:
            value = value[: cfg.vocab_size]
        tensors[name] = value.detach().contiguous().clone()
    config = {"dit": dataclasses.asdict(cfg), "step": run.step, "weights": "raw" if raw else "ema",
              "source_run": str(run_dir.resolve()), "checkpoint": run.checkpoint.name}
    return tensors, config


def export_run(run_dir: Path, out: Path, raw: bool = False) -> Path:
    from safetensors.torch import save_file
    if out.exists():
        raise CheckpointError(f"{out} exists already; choose another output folder")
    tensors, config = exported_weights(run_dir, raw)
    with atomic_folder(out) as staging:
        save_file(tensors, str(staging / "model.safetensors"))
        (staging / "config.json").write_text(json.dumps(config, indent=1))
        shutil.copy(run_dir / "recipe.toml", staging / "recipe.toml")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("out")
    parser.add_argument("--raw", action="store_true", help="the trained weights instead of their EMA")
    args = parser.parse_args(argv)
    try:
        print(export_run(Path(args.run_dir), Path(args.out), args.raw))
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
