"""Runs many `imdm` command lines in one process, as `python -m imdm` would run each (the same
`imdm.cli.main`, argparse's exits included), so that a table of bad inputs costs one interpreter
start. Reads [{"argv": [...], "cwd": DIR}, ...] as JSON on stdin; writes one JSON result per case:
exit status, stdout, stderr (an escaped exception's traceback included) and the paths under DIR
that the case added or removed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback


def listing(folder: str) -> set[str]:
    found = set()
    for root, dirs, files in os.walk(folder):
        found.update(os.path.relpath(os.path.join(root, name), folder) for name in dirs + files)
    return found


def run_case(argv: list[str], cwd: str) -> dict:
    from imdm.cli import main
    os.chdir(cwd)
    before = listing(cwd)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            traceback.print_exc()
            status = 1
    after = listing(cwd)
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue(),
            "added": sorted(after - before), "removed": sorted(before - after)}


if __name__ == "__main__":
    cases = json.load(sys.stdin)
    json.dump([run_case(c["argv"], c["cwd"]) for c in cases], sys.stdout)
