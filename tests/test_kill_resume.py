"""benchmarks/kill_resume.py: reading a restarted run's loss curve, comparing two curves, the checks."""

import json

from benchmarks.kill_resume import compare, curve, failed_checks, resumed_step


def _write(run_dir, records):
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_curve_keeps_the_resumed_attempt_of_a_relogged_step(tmp_path):
    _write(tmp_path / "run", [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 3, "loss": 9.0},
                              {"step": 2, "event": "resumed from step_00000002"}, {"step": 3, "loss": 2.25},
                              {"step": 3, "event": "checkpoint", "stall_s": 0.1}])
    losses, resumes = curve(tmp_path / "run")
    assert losses == {1: 3.0, 2: 2.5, 3: 2.25}
    assert resumes == ["resumed from step_00000002"]


def test_compare_reports_differences_and_missing_steps():
    same = compare({1: 3.0, 2: 2.5}, {1: 3.0, 2: 2.5})
    assert same["bit_equal"] and same["max_abs_loss_diff"] == 0.0 and same["steps_missing"] == []
    off = compare({1: 3.0, 2: 2.5, 3: 2.0}, {1: 3.0, 2: 2.5 + 1e-6})
    assert not off["bit_equal"]
    assert abs(off["max_abs_loss_diff"] - 1e-6) < 1e-9
    assert off["steps_compared"] == 2 and off["steps_missing"] == [3]


def test_compare_counts_steps_only_the_killed_run_logged():
    extra = compare({1: 3.0}, {1: 3.0, 2: 2.5})
    assert extra["steps_missing"] == [2] and extra["bit_equal"]


def test_failed_checks_name_each_problem():
    def metrics(resumes, diff=0.0, missing=()):
        return {"resumes": resumes, "max_abs_loss_diff": diff, "steps_missing": list(missing)}

    good = metrics(["resumed from step_00000006"])
    assert failed_checks(good, [], fail_step=7, max_loss_diff=0.0) == []
    assert resumed_step("resumed from step_00000006; world size 2 -> 1") == 6
    assert "straight run resumed" in failed_checks(good, ["resumed from step_00000002"], 7, None)[0]
    assert "resumed 0 times" in failed_checks(metrics([]), [], 7, None)[0]
    assert "resumed 2 times" in failed_checks(metrics(["resumed from step_00000003"] * 2), [], 7, None)[0]
    assert "after the kill" in failed_checks(metrics(["resumed from step_00000009"]), [], 7, None)[0]
    assert "one run only: [8]" in failed_checks(metrics(["resumed from step_00000006"], missing=[8]), [], 7, None)[0]
    assert "differ by 0.002" in failed_checks(metrics(["resumed from step_00000006"], diff=2e-3), [], 7, 1e-3)[0]
    assert failed_checks(metrics(["resumed from step_00000006"], diff=2e-3), [], 7, None) == []
