#!/usr/bin/env bash
# Build the reference implementations' virtual environments under benchmarks/.venvs/
# (git-ignored), never in the project's environment: `rlms` imports as `rlm` like us.
#
#   bash benchmarks/setup_refs.sh          # create what is missing
#   bash benchmarks/setup_refs.sh --force  # rebuild both
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venvs="$here/.venvs"
python_version="${RLM_BENCH_PYTHON:-3.11}"
force="${1:-}"

RLMS_SPEC="${RLMS_SPEC:-rlms==0.1.3}"
DSPY_SPEC="${DSPY_SPEC:-dspy}"

make_env() {
    local name="$1"
    shift
    local dir="$venvs/$name"
    if [[ "$force" == "--force" ]]; then
        rm -rf "$dir"
    fi
    if [[ -x "$dir/bin/python" && -f "$dir/.ready" ]]; then
        echo "[$name] ready: $dir"
        return
    fi
    echo "[$name] creating $dir"
    rm -rf "$dir"
    uv venv --quiet --python "$python_version" "$dir"
    # psutil: the drivers' memory monitor. The rest: the reference itself.
    uv pip install --quiet --python "$dir/bin/python" psutil "$@"
    touch "$dir/.ready"
    echo "[$name] installed: $*"
}

mkdir -p "$venvs"
make_env rlms "$RLMS_SPEC"
make_env dspy "$DSPY_SPEC"
