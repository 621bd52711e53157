"""Every span name, attribute name and attribute value rlm's telemetry uses, in one place.

The OpenTelemetry GenAI semantic conventions (`gen_ai.*`) are still experimental and their
names move between releases; keeping them here means a rename is a one-line change. The
`rlm.*` names are this library's own.

Span names:

- a run:         `invoke_agent rlm`   (`gen_ai.operation.name = "invoke_agent"`, INTERNAL)
- a model call:  `chat {model}`       (`gen_ai.operation.name = "chat"`, CLIENT)
- a code block:  `execute_tool repl`  (`gen_ai.operation.name = "execute_tool"`, INTERNAL)
- a user tool:   `execute_tool {name}` (under its code block's span, INTERNAL)
"""

from __future__ import annotations

from typing import Final

# -- instrumentation scope --------------------------------------------------------------

INSTRUMENTATION_NAME: Final = "rlm"

# -- GenAI semantic conventions ------------------------------------------------------------

GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
# Opt-in (content capture): a user tool call's JSON arguments and result.
GEN_AI_TOOL_CALL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT: Final = "gen_ai.tool.call.result"
# Content (only with capture_content on).
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"

ERROR_TYPE: Final = "error.type"
# error.type of a user tool that raised (the exception's class is in the message only).
ERROR_TYPE_TOOL: Final = "ToolError"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"

# Values of gen_ai.operation.name.
OPERATION_INVOKE_AGENT: Final = "invoke_agent"
OPERATION_CHAT: Final = "chat"
OPERATION_EXECUTE_TOOL: Final = "execute_tool"

# Values of gen_ai.token.type.
TOKEN_TYPE_INPUT: Final = "input"
TOKEN_TYPE_OUTPUT: Final = "output"

AGENT_NAME: Final = "rlm"
TOOL_NAME: Final = "repl"
# The host runs the code the model wrote: a client-side ("function") tool.
TOOL_TYPE: Final = "function"

# The environment variable of the GenAI instrumentations that turns content capture on.
CAPTURE_CONTENT_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

# -- rlm attributes -----------------------------------------------------------------------

RLM_RUN_ID: Final = "rlm.run.id"
RLM_PARENT_RUN_ID: Final = "rlm.run.parent_id"
RLM_DEPTH: Final = "rlm.depth"
RLM_MAX_DEPTH: Final = "rlm.max_depth"
RLM_MAX_ITERATIONS: Final = "rlm.max_iterations"
RLM_SUB_MODEL: Final = "rlm.sub_model"
RLM_CONTEXT_TYPE: Final = "rlm.context.type"
RLM_CONTEXT_CHARS: Final = "rlm.context.chars"
RLM_ITERATION: Final = "rlm.iteration"
RLM_ITERATIONS: Final = "rlm.iterations"
RLM_STOP_REASON: Final = "rlm.stop_reason"
RLM_LIMIT: Final = "rlm.limit"
RLM_SUB_CALLS: Final = "rlm.sub_calls"
RLM_CODE_EXECUTIONS: Final = "rlm.code_executions"
RLM_HAS_ANSWER: Final = "rlm.has_answer"
RLM_DURATION_S: Final = "rlm.duration_s"
# Totals of a run's whole subtree. Kept apart from gen_ai.usage.* (which only model-call
# spans carry) so backends that sum gen_ai.usage.* over a trace do not count tokens twice.
RLM_USAGE_INPUT_TOKENS: Final = "rlm.usage.input_tokens"
RLM_USAGE_OUTPUT_TOKENS: Final = "rlm.usage.output_tokens"
RLM_COST_USD: Final = "rlm.cost_usd"

RLM_CALL_ID: Final = "rlm.model_call.id"
RLM_PURPOSE: Final = "rlm.model_call.purpose"
RLM_MESSAGE_COUNT: Final = "rlm.model_call.message_count"
RLM_PROMPT_CHARS: Final = "rlm.model_call.prompt_chars"
RLM_RESPONSE_CHARS: Final = "rlm.model_call.response_chars"

RLM_EXEC_ID: Final = "rlm.code.id"
RLM_CODE_INDEX: Final = "rlm.code.index"
RLM_CODE_RESTARTED: Final = "rlm.code.restarted"

RLM_SUBCALL_ID: Final = "rlm.subcall.id"
RLM_SUBCALL_RECURSIVE: Final = "rlm.subcall.recursive"
RLM_BATCH_INDEX: Final = "rlm.subcall.batch_index"
RLM_BATCH_SIZE: Final = "rlm.subcall.batch_size"

RLM_COMPACTION_TOKENS_BEFORE: Final = "rlm.compaction.tokens_before"
RLM_COMPACTION_TOKENS_AFTER: Final = "rlm.compaction.tokens_after"
RLM_COMPACTION_WINDOW_TOKENS: Final = "rlm.compaction.window_tokens"

RLM_RETRY_ATTEMPT: Final = "rlm.retry.attempt"
RLM_RETRY_WAIT_S: Final = "rlm.retry.wait_s"
RLM_FINAL_SOURCE: Final = "rlm.final.source"
RLM_ERROR_MESSAGE: Final = "rlm.error.message"

# Content attributes (only with capture_content on).
RLM_QUERY: Final = "rlm.query"
RLM_ANSWER: Final = "rlm.answer"
RLM_LAST_MESSAGE: Final = "rlm.model_call.last_message"
RLM_CODE: Final = "rlm.code"
RLM_CODE_STDOUT: Final = "rlm.code.stdout"
RLM_CODE_STDERR: Final = "rlm.code.stderr"
RLM_CODE_ERROR: Final = "rlm.code.error"
RLM_SUBCALL_PROMPT: Final = "rlm.subcall.prompt"

# -- metrics (instrument name, unit) ----------------------------------------------------

# GenAI client metrics, with the conventions' advisory histogram buckets.
METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
TOKEN_USAGE_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
# rlm's own.
METRIC_RUNS: Final = "rlm.runs"
METRIC_RUN_ITERATIONS: Final = "rlm.run.iterations"
METRIC_SUB_CALLS: Final = "rlm.sub_calls"
METRIC_TOOL_CALLS: Final = "rlm.tool_calls"
METRIC_CODE_DURATION: Final = "rlm.code.duration"
METRIC_SANDBOX_RESTARTS: Final = "rlm.sandbox.restarts"
METRIC_COST: Final = "rlm.cost"
ITERATION_BUCKETS: Final = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89)
CODE_DURATION_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)  # fmt: skip

# -- span event names -------------------------------------------------------------------

EVENT_ITERATION: Final = "rlm.iteration.started"
EVENT_RETRY: Final = "rlm.model_call.retry"
EVENT_REPL_VIOLATION: Final = "rlm.repl.violation"
RLM_REPL_LIMIT: Final = "rlm.repl.limit"
EVENT_FINAL_ANSWER: Final = "rlm.final_answer"
EVENT_SUBCALL_FAILED: Final = "rlm.subcall.failed"
EVENT_HISTORY_COMPACTED: Final = "rlm.history.compacted"

# -- span names --------------------------------------------------------------------------

SPAN_RUN: Final = f"{OPERATION_INVOKE_AGENT} {AGENT_NAME}"
SPAN_CODE: Final = f"{OPERATION_EXECUTE_TOOL} {TOOL_NAME}"


def tool_span_name(name: str) -> str:
    """The name of a user tool call's span: `execute_tool {name}`."""
    return f"{OPERATION_EXECUTE_TOOL} {name}"


def chat_span_name(model: str) -> str:
    """The name of a model call's span: `chat {model}`."""
    return f"{OPERATION_CHAT} {model}"


# -- log event names ---------------------------------------------------------------------

LOG_EVENT_NAMES: Final[dict[str, str]] = {
    "run_started": "rlm.run.started",
    "iteration_started": "rlm.iteration.started",
    "model_call_started": "rlm.model_call.started",
    "model_call_finished": "rlm.model_call.finished",
    "model_retry": "rlm.model_call.retry",
    "code_started": "rlm.code.started",
    "code_executed": "rlm.code.executed",
    "repl_violation": "rlm.repl.violation",
    "subcall_started": "rlm.subcall.started",
    "subcall_finished": "rlm.subcall.finished",
    "tool_call_started": "rlm.tool_call.started",
    "tool_call_finished": "rlm.tool_call.finished",
    "final_answer": "rlm.final_answer",
    "history_compacted": "rlm.history.compacted",
    "run_finished": "rlm.run.finished",
    "run_failed": "rlm.run.failed",
}
