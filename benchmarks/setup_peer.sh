#!/usr/bin/env bash
# Build the peer's virtual environment for benchmarks/compare_peer.sh: CPU PyTorch and lucidrains'
# rin-pytorch (https://github.com/lucidrains/recurrent-interface-network-pytorch) from PyPI, every
# version pinned.
#
#   bash benchmarks/setup_peer.sh [VENV]        (default /tmp/peer; keep it out of the repository)
#
# torch: the CPU build, from PyTorch's CPU wheel index when that is reachable, else torch==2.13.0
# from the default index (a pip that finds a local +cpu wheel uses it; plain PyPI gives the larger
# CUDA build, which runs on CPU all the same). torch goes in first and rin-pytorch with --no-deps,
# so that rin-pytorch's unpinned "torch>=1.12.0" cannot pull another build.
# torchvision: rin-pytorch imports it at module level but only its Dataset and Trainer use it, and
# benchmarks/peer_rin_pytorch.py uses neither. The matching torchvision==0.28.0 goes in when it
# imports beside this torch (PyPI's CUDA build does not load beside a CPU torch: "operator
# torchvision::nms does not exist"); otherwise it is left out and the benchmark stands a placeholder
# module in for it.
set -euo pipefail

VENV="${1:-/tmp/peer}"
TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0
RIN_PYTORCH_VERSION=0.8.0
CPU_INDEX=https://download.pytorch.org/whl/cpu

python3 -m venv "$VENV"
PIP=("$VENV/bin/pip" install --disable-pip-version-check)

# numpy only silences torch's "Failed to initialize NumPy" warning; packaging is what rin-pytorch's
# attend.py imports without declaring it.
"${PIP[@]}" numpy==2.4.6 packaging==26.4

REACHABLE='import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)'
if "$VENV/bin/python" -c "$REACHABLE" "$CPU_INDEX/torch/" 2>/dev/null; then
  echo "setup_peer: torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION from $CPU_INDEX" >&2
  "${PIP[@]}" --index-url "$CPU_INDEX" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
else
  echo "setup_peer: $CPU_INDEX is not reachable; torch $TORCH_VERSION from the default index" >&2
  "${PIP[@]}" "torch==$TORCH_VERSION"
  "${PIP[@]}" --no-deps "torchvision==$TORCHVISION_VERSION"
fi
if ! "$VENV/bin/python" -c "import torchvision.transforms, torchvision.utils" 2>/dev/null; then
  echo "setup_peer: torchvision $TORCHVISION_VERSION does not load beside this torch; removed" \
       "(peer_rin_pytorch.py stands a placeholder in for it)" >&2
  "$VENV/bin/pip" uninstall --yes torchvision
fi

"${PIP[@]}" --no-deps "rin-pytorch==$RIN_PYTORCH_VERSION"
# rin-pytorch's other runtime requirements, pinned; the versions current when this was written.
"${PIP[@]}" einops==0.8.2 beartype==0.23.1 ema-pytorch==0.8.3 accelerate==1.16.0 pillow==13.0.0 \
    tqdm==4.70.1

"$VENV/bin/python" - "$TORCH_VERSION" "$RIN_PYTORCH_VERSION" <<'EOF'
import sys
from importlib.metadata import version

import torch

want_torch, want_rin = sys.argv[1:]
assert torch.__version__.split("+")[0] == want_torch, torch.__version__
assert version("rin-pytorch") == want_rin, version("rin-pytorch")
print(f"setup_peer: torch {torch.__version__}, rin-pytorch {want_rin}", file=sys.stderr)
EOF
echo "setup_peer: ready: $VENV/bin/python benchmarks/peer_rin_pytorch.py --help" >&2
