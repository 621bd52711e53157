"""Suite-wide settings. No test reaches the network beyond 127.0.0.1."""

from __future__ import annotations

import os

from hypothesis import settings

# Ray reads this when it is imported (by the batch and pickling tests): under `uv run` it
# would otherwise copy the project to each worker and rebuild its environment there with
# uv, which slows every new worker down.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

# Timing-based health checks flake on a loaded 2-core CI machine; correctness is what the
# properties check. With CI=true hypothesis also derandomises (its "ci" profile).
settings.register_profile("ci", settings.get_profile("ci"), deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# The default REPL refuses to start where its sandbox cannot be built. Tests that need
# the sandbox are marked `needs_bwrap` and skipped there; everything else that runs the
# default REPL accepts the plain subprocess, chosen here explicitly.
if os.environ.get("RLM_SANDBOX") is None:
    from rlm.repl import bwrap

    if not bwrap.works()[0]:
        os.environ["RLM_SANDBOX"] = "none"
