# Sourced by quickstart.sh and test.sh: make sure .venv exists with PyTorch and the project.
# PyTorch comes as the CPU build on a machine without an NVIDIA GPU (no multi-GB CUDA download:
# if the CPU build cannot be had, the install fails rather than fetch the CUDA one) and as PyPI's
# default CUDA build where `nvidia-smi -L` lists a GPU. PYTHON picks the interpreter (default
# python3, 3.10 or newer); IMDM_VENV the environment's folder (default .venv in the checkout).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${IMDM_VENV:-$root/.venv}"
mkdir -p "$(dirname "$venv")"
venv="$(cd "$(dirname "$venv")" && pwd)/$(basename "$venv")"
py="$venv/bin/python"
MIN_TORCH="2.8"
CPU_TORCH_VERSION="2.13.0"
CPU_INDEX="https://download.pytorch.org/whl/cpu"

pip_install() { "$py" -m pip install --quiet --disable-pip-version-check "$@"; }

if ! "$py" -m pip --version >/dev/null 2>&1; then
  python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "setup: $python is missing or older than Python 3.10; set PYTHON to a newer interpreter" >&2
    exit 1
  fi
  echo "setup: creating $venv" >&2
  rm -rf "$venv"
  if ! "$python" -m venv "$venv"; then
    rm -rf "$venv"
    echo "setup: '$python -m venv' failed (on Debian/Ubuntu: install python3-venv)" >&2
    exit 1
  fi
fi
if ! "$py" -c "import sys, torch; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]);
sys.exit(v < tuple(int(x) for x in '$MIN_TORCH'.split('.')))" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: installing PyTorch >= $MIN_TORCH (CUDA build)" >&2
    pip_install "torch>=$MIN_TORCH"
    "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
      || echo "setup: warning: this PyTorch sees no GPU (check the NVIDIA driver)" >&2
  else
    cpu_torch="torch==$CPU_TORCH_VERSION"
    [ "$(uname -s)" = "Linux" ] && cpu_torch="$cpu_torch+cpu"   # Linux wheels on PyPI are CUDA builds
    echo "setup: installing PyTorch $CPU_TORCH_VERSION (CPU build)" >&2
    pip_install --retries 1 --extra-index-url "$CPU_INDEX" "$cpu_torch"
  fi
fi
if ! "$py" -c "import imdm, pytest" 2>/dev/null || [ "$root/pyproject.toml" -nt "$venv/.imdm-installed" ]; then
  echo "setup: installing the project into $venv" >&2
  pip_install -e "$root[dev]"
  touch "$venv/.imdm-installed"
fi
