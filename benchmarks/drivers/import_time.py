"""Time `import <module>` in a fresh interpreter: prints seconds as JSON on stdout."""

from __future__ import annotations

import importlib
import json
import sys
import time

if __name__ == "__main__":
    name = sys.argv[1]
    started = time.perf_counter()
    importlib.import_module(name)
    elapsed = time.perf_counter() - started
    heavy = [
        m
        for m in ("openai", "anthropic", "httpx", "httpx2", "litellm", "pydantic")
        if m in sys.modules
    ]
    print(json.dumps({"module": name, "seconds": elapsed, "loaded": heavy}))
