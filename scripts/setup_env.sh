# Sourced by quickstart.sh and test.sh: make sure .venv exists with PyTorch and the project.
# PyTorch comes as the CPU build on a machine without an NVIDIA GPU (no multi-GB CUDA download)
# and as PyPI's default CUDA build where `nvidia-smi -L` lists a GPU. PYTHON picks the
# interpreter (default python3, 3.10 or newer); IMDM_VENV the environment's folder.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${IMDM_VENV:-$root/.venv}"
py="$venv/bin/python"
CPU_TORCH="torch==2.13.0"
CPU_INDEX="https://download.pytorch.org/whl/cpu"

pip_install() { "$py" -m pip install --quiet --disable-pip-version-check "$@"; }

if [ ! -x "$py" ]; then
  echo "setup: creating $venv" >&2
  "${PYTHON:-python3}" -m venv "$venv"
fi
if ! "$py" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: installing PyTorch (CUDA build)" >&2
    pip_install "torch>=2.8"
  else
    echo "setup: installing PyTorch (CPU build)" >&2
    pip_install --retries 1 --extra-index-url "$CPU_INDEX" "$CPU_TORCH"
  fi
fi
if ! "$py" -c "import imdm, pytest" 2>/dev/null || [ "$root/pyproject.toml" -nt "$venv/.imdm-installed" ]; then
  echo "setup: installing the project into $venv" >&2
  pip_install -e "$root[dev]"
  touch "$venv/.imdm-installed"
fi
