#!/usr/bin/env bash
# Create a separate venv with pty-chi for `python -m benchmarks.recon_ptychi`
# (default /work/ptychi-venv; first argument: another folder).
# torch==2.13.0 (the CPU build) goes in first and pty-chi with --no-deps, then its
# dependencies one by one, so pip never resolves torch or torchvision by itself (that
# would pull several GB of CUDA packages). torchvision is left out: the wheels for
# torch 2.13 are CUDA builds that cannot load next to the CPU torch; the benchmark's
# driver (benchmarks/_ptychi_driver.py) runs pty-chi without it (pty-chi uses it only
# for random initial objects).
set -euo pipefail
VENV="${1:-/work/ptychi-venv}"
PYTHON="${PYTHON:-python3.11}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    "${PIP[@]}" --no-deps torch==2.13.0
fi
"${PIP[@]}" "setuptools>=77.0.3" filelock typing-extensions sympy networkx jinja2 fsspec
"${PIP[@]}" "numpy>=2.1" h5py pandas "pydantic>=2,<3" scikit-image scikit-learn scipy tqdm \
    "matplotlib>=3.10.6" tifffile
"${PIP[@]}" --no-deps ptychi==2.2.0
"$VENV/bin/python" "$(dirname "$0")/../benchmarks/_ptychi_driver.py" --check
