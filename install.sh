#!/usr/bin/env bash
# Install vla-compress and everything it needs on a fresh Debian/Ubuntu machine (CPU).
#   ./install.sh            core + simulator + tests
# torch is pinned to the 2.13.0 CPU wheel by constraints.txt for every pip call: any other
# torch spec pulls gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")"

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  # Mesa EGL/OSMesa: MuJoCo renders MetaWorld frames on the CPU (MUJOCO_GL=egl or osmesa)
  pkgs="libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libosmesa6 libglfw3"
  missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
fi

python3 -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
python3 -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
echo "vla-compress installed: $(python3 -c 'import vla_compress; print(vla_compress.__version__)')"
