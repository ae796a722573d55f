"""Without Triton (macOS, or a CPU-only install) the package imports, trains and samples on the
eager references, and asking for a kernel fails with a message that says what is missing."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["triton"] = None        # `import triton` now raises ImportError
    import torch
    from imdm.cli import main
    from imdm.kernels import masking
    assert main(["train", "builtin:quickstart", "train.steps=2", "train.device=cpu", "logging.progress=false",
                 "run.output_dir=" + sys.argv[1], "sampling.steps=[1]", "sampling.num_samples=4",
                 "sampling.batch=4"]) == 0
    assert main(["sample", sys.argv[1] + "/quickstart", "--device", "cpu"]) == 0
    try:
        masking.mask_noise_rows(torch.arange(2), torch.arange(2), 4, "uniform", backend="triton")
    except RuntimeError as err:
        print("ERROR:", err)
""")


def test_trains_and_samples_without_triton(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ERROR: kernel backend 'triton' on cpu tensors needs Triton, which is not installed" in out.stdout
    assert (tmp_path / "quickstart" / "checkpoints").is_dir()
