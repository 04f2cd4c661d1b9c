#!/usr/bin/env bash
# The Python side of `cargo run --release --example bench`: diffusers 0.42.1 on PyTorch 2.15.0
# (CPU), from PyPI only, in a virtual environment (default `.venv-bench` at the repository root,
# where the harness looks for it; `bench --python PATH` takes another interpreter).
#
# About 3 minutes and 5.6 GB of disk: PyPI's Linux torch wheels are CUDA builds and pull the
# nvidia-* wheels even to `import torch` on a machine without a GPU. No model is downloaded: every
# benchmark model is built from its config with seeded weights.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv-bench}
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet torch==2.15.0 diffusers==0.42.1 safetensors==0.8.0 numpy==2.4.6 \
    transformers==5.25.0
"$VENV/bin/python" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
