"""Run a pipeline's stages as separate processes, several at once: a stage starts as soon as the
stages it reads have finished (independent branches of a pipeline run side by side on one
machine), and at an optional deadline every running stage gets SIGTERM, which makes a training
stage save its checkpoint and stop. Each stage's output goes to LOG_DIR/NAME.log."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from imdm.pipeline import load_pipeline, stage_finished


def run_stages(pipeline: str, overrides: list[str], jobs: int, deadline_s: float, log_dir: Path,
               log=print) -> dict[str, str]:
    """{stage: 'finished' | 'failed' | 'stopped' | 'not run'} after running every unfinished
    stage whose inputs finish, at most `jobs` at a time, until done or `deadline_s` (0: none)."""
    _, stages = load_pipeline(pipeline, overrides)
    names = [s.name for s in stages]
    needs = {s.name: [n for n in s.inputs() if n in names] for s in stages}
    state = {s.name: "finished" if stage_finished(s) else "not run" for s in stages}
    running: dict[str, subprocess.Popen] = {}
    log_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    while True:
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                state[name] = "finished" if proc.returncode == 0 else "failed"
                log(f"{name}: {state[name]} after {time.monotonic() - start:.0f} s")
        if deadline_s and time.monotonic() - start > deadline_s:
            if running:
                log(f"deadline of {deadline_s:.0f} s: stopping {', '.join(running)}")
            _stop(running, state)
            return state
        ready = [n for n in names if state[n] == "not run" and n not in running
                 and all(state[d] == "finished" for d in needs[n])]
        for name in ready[: max(0, jobs - len(running))]:
            with open(log_dir / f"{name}.log", "w") as out:
                running[name] = subprocess.Popen([sys.executable, "-m", "imdm", "pipeline", "--only", name, pipeline,
                                                  *overrides], stdout=out, stderr=subprocess.STDOUT)
            log(f"{name}: started at {time.monotonic() - start:.0f} s")
        if not running:
            return state
        time.sleep(1)


def _stop(running: dict[str, subprocess.Popen], state: dict[str, str], grace_s: float = 120) -> None:
    """SIGTERM every running stage (a training stage saves, then exits), wait up to `grace_s`
    for each, kill what is left; a stage that exited 0 meanwhile counts as finished."""
    for proc in running.values():
        proc.send_signal(signal.SIGTERM)
    for name, proc in running.items():
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        state[name] = "finished" if proc.returncode == 0 else "stopped"
