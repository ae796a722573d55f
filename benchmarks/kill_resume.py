"""Kill and resume: train a recipe twice under torchrun, once straight and once with one rank
killed at a step (IMDM_FAIL_AT_STEP) and restarted by torchrun (--max-restarts=1), then compare
the two loss curves step by step. The killed run must resume exactly once, from a complete
checkpoint at or before the kill, and the straight run never; with --max-loss-diff the curves
must also agree that closely (0: bit for bit, as on CPU). The result records the checks.

    python -m benchmarks.kill_resume --recipe recipes/owt_large.toml --nproc 8 --fail-step 5 \
        --fail-rank 3 train.steps=8 checkpoint.every_steps=2 [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.results_io import write_result


def launch(recipe: str, nproc: int, overrides: list[str], env: dict, log: Path) -> float:
    """One `imdm train` under torchrun (one restart allowed); returns its wall time in seconds."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--max-restarts=1",
           f"--nproc_per_node={nproc}", "-m", "imdm", "train", recipe, *overrides]
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise SystemExit(f"training exited with {code}; its output is in {log}")
    return time.perf_counter() - start


def curve(run_dir: Path) -> tuple[dict[int, float], list[str]]:
    """Loss per step (a step logged again after a restart keeps its last value) and the resume
    events, from the run's metrics.jsonl."""
    losses, resumes = {}, []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses[record["step"]] = record["loss"]
        elif str(record.get("event", "")).startswith("resumed from"):
            resumes.append(record["event"])
    return losses, resumes


def compare(straight: dict[int, float], killed: dict[int, float]) -> dict:
    """Steps both curves hold, whether they agree bit for bit, and the largest loss difference."""
    steps = sorted(set(straight) & set(killed))
    diffs = [abs(straight[s] - killed[s]) for s in steps]
    return {"steps_compared": len(steps), "steps_missing": sorted(set(straight) ^ set(killed)),
            "bit_equal": all(straight[s] == killed[s] for s in steps), "max_abs_loss_diff": max(diffs, default=0.0)}


def resumed_step(event: str) -> int:
    """The step of a 'resumed from step_XXXXXXXX...' event."""
    return int(event.split("step_")[1][:8])


def failed_checks(metrics: dict, straight_resumes: list[str], fail_step: int, max_loss_diff: float | None) -> list[str]:
    """What the two runs got wrong (empty: nothing)."""
    problems = []
    if straight_resumes:
        problems.append(f"the straight run resumed ({straight_resumes}): its run folder was not new")
    if len(metrics["resumes"]) != 1:
        problems.append(f"the killed run resumed {len(metrics['resumes'])} times, not once")
    elif resumed_step(metrics["resumes"][0]) > fail_step:
        problems.append(f"the killed run resumed from a checkpoint after the kill at step {fail_step}")
    if metrics["steps_missing"]:
        problems.append(f"steps logged by one run only: {metrics['steps_missing']}")
    if max_loss_diff is not None and metrics["max_abs_loss_diff"] > max_loss_diff:
        problems.append(f"loss curves differ by {metrics['max_abs_loss_diff']:.3g} > {max_loss_diff}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--fail-step", type=int, required=True, help="the step at whose start the rank is killed")
    parser.add_argument("--fail-rank", type=int, default=0)
    parser.add_argument("--max-loss-diff", type=float, default=None,
                        help="fail if any step's losses differ by more (0: bit for bit); default: only record it")
    parser.add_argument("--label", default="")
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--work-dir", default=None, help="where the two runs and their logs go (default: a new temporary folder)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="imdm-kill-resume-"))
    if (work / "straight").exists() or (work / "killed").exists():
        raise SystemExit(f"{work} already holds a straight/ or killed/ run: they would resume; give a new --work-dir")
    work.mkdir(parents=True, exist_ok=True)
    base = [*args.overrides, f"run.output_dir={work}", "logging.every_steps=1", "logging.progress=false"]
    env = {k: v for k, v in os.environ.items() if k != "IMDM_FAIL_AT_STEP"}
    straight_s = launch(args.recipe, args.nproc, [*base, "run.name=straight"], env, work / "straight.log")
    killed_env = {**env, "IMDM_FAIL_AT_STEP": f"{args.fail_step}:{args.fail_rank}"}
    killed_s = launch(args.recipe, args.nproc, [*base, "run.name=killed"], killed_env, work / "killed.log")
    straight, straight_resumes = curve(work / "straight")
    killed, resumes = curve(work / "killed")
    metrics = {**compare(straight, killed), "resumes": resumes, "straight_wall_s": straight_s, "killed_wall_s": killed_s,
               "losses_straight": [straight[s] for s in sorted(straight)], "losses_killed": [killed[s] for s in sorted(killed)]}
    problems = failed_checks(metrics, straight_resumes, args.fail_step, args.max_loss_diff)
    metrics["failed_checks"] = problems
    config = {"nproc": args.nproc, "fail_step": args.fail_step, "fail_rank": args.fail_rank, "label": args.label,
              "max_loss_diff": args.max_loss_diff, "overrides": args.overrides}
    path = write_result("kill_resume", args.recipe, config, metrics, world_size=args.nproc, out_dir=args.results_dir)
    print(f"{args.label or 'kill_resume'}: {resumes or 'NO RESUME'}; {metrics['steps_compared']} steps compared, "
          f"bit equal {metrics['bit_equal']}, max |loss diff| {metrics['max_abs_loss_diff']:.3g} -> {path}")
    if problems:
        raise SystemExit("kill and resume FAILED: " + "; ".join(problems))


if __name__ == "__main__":
    main()
