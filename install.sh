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
  # Chromium (headless): the report test renders the HTML report offline and screenshots it
  pkgs="libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libosmesa6 libglfw3 chromium fonts-dejavu-core"
  missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
fi

python3 -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0

# llama.cpp (GGUF export, runtime "llama.cpp"): llama-cpp-python is an sdist only and compiles for
# ~8 minutes. Build its wheel once into a cache (portable: GGML_NATIVE=OFF, since a native build
# segfaults on quantized types on these AMX CPUs) and install from the cache afterwards.
# VLA_COMPRESS_NO_GGUF=1 skips it (the GGUF tests then skip, saying why).
LLAMA_CPP_VERSION=0.3.36
WHEELS="${VLA_COMPRESS_WHEELS:-$HOME/.cache/vla-compress/wheels}"
# OpenVINO (export format / runtime "openvino"): the openvino wheel (~60 MB) and nncf
EXTRAS="test,openvino"
if [ "${VLA_COMPRESS_NO_GGUF:-0}" != 1 ]; then
  EXTRAS="$EXTRAS,gguf"
  if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-python') != '$LLAMA_CPP_VERSION')" 2>/dev/null; then
    if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl >/dev/null 2>&1; then
      echo "building llama-cpp-python $LLAMA_CPP_VERSION (once, ~8 min) into $WHEELS"
      mkdir -p "$WHEELS"
      CMAKE_ARGS="-DGGML_NATIVE=OFF" python3 -m pip wheel -q --disable-pip-version-check --no-deps --no-cache-dir \
        -c constraints.txt -w "$WHEELS" "llama-cpp-python==$LLAMA_CPP_VERSION"
    fi
    python3 -m pip install -q --disable-pip-version-check -c constraints.txt --find-links "$WHEELS" \
      "llama-cpp-python==$LLAMA_CPP_VERSION"
  fi
fi
python3 -m pip install -q --disable-pip-version-check -c constraints.txt --find-links "$WHEELS" -e ".[$EXTRAS]"
echo "vla-compress installed: $(python3 -c 'import vla_compress; print(vla_compress.__version__)')"
