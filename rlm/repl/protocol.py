"""The wire format between `SubprocessRepl` (the host) and its worker process.

Two pipes, on their own file descriptors (never the worker's stdin/stdout/stderr, so code
that prints or writes to fd 1/2 cannot corrupt them). Each message is a frame: a 4-byte
big-endian length, then the payload.

- Host -> worker payloads are `marshal` data (built-in types only; fast, and the worker
  needs no import for it): the worker trusts the host.
- Worker -> host payloads are UTF-8 JSON objects: the worker runs code the host does not
  trust, so the host never unpickles anything that comes from it, checks every field, and
  bounds what it holds (`ReplLimits`: bytes of frames in flight in all, pending calls,
  JSON nesting, answer size; every frame kind alike). A worker past a bound is killed.

Messages (`op` names the kind). A `load` named `context` makes the namespace; a session's
later contexts (`context_1`, ...) are `load`s with their own name, added beside it.

| direction | op | fields |
| --- | --- | --- |
| worker -> host | `spawned` | (imports done, ready for `load`) |
| host -> worker | `load` | `sys_path`, `limits`, `tools`, `context` (inline or streamed), `name` |
| worker -> host | `loaded` / `load_failed` | `error` |
| host -> worker | `exec` | `id`, `code` |
| worker -> host | `call` | `id`, `fn`, `prompt` or `prompts`, `model` (a sub-call) |
| worker -> host | `call` | `id`, `fn="tool"`, `name`, `args` (list), `kwargs` (object) |
| host -> worker | `reply` | `id`, `ok`, `value` or `error` |
| worker -> host | `cancel` | `id` (the code stopped waiting for that call's reply) |
| host -> worker | `interrupt` | `id` (the block hit its time limit) |
| worker -> host | `done` | `id`, `stdout`, `stderr`, `*_chars`, `error`, `final`, `final_json` |
| host -> worker | `lookup` | `name` |
| worker -> host | `lookup_result` | `value`, `error`, `json` |

`tools` lists each user tool's `name`, `signature` and `description` (the worker makes a
stub that sends a `tool` call); tool arguments and results are JSON values.

This module imports only the standard library: the worker loads it at start-up.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct(">I")
# The largest frame either side accepts: outputs are capped well below this in the worker.
MAX_FRAME = 256 * 1024 * 1024

# The worker's exit status when it can no longer write to the host (its pipe was closed).
EXIT_LOST_CONNECTION = 86

SUBCALL_FUNCTIONS = frozenset({"llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched"})
BATCHED_FUNCTIONS = frozenset({"llm_query_batched", "rlm_query_batched"})
# The `fn` of a tool call: the tool's name travels in `name`, its arguments as JSON.
TOOL_CALL = "tool"
