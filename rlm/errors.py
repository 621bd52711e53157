"""Every exception rlm raises, in one tree.

```
RLMError
├── ConfigurationError          bad arguments, unknown model string, missing API key
│   ├── UnknownModelError
│   └── MissingAPIKeyError
├── ProviderError               a model call failed (after retries)
│   ├── AuthenticationError     401/403: the key is wrong or lacks access
│   ├── RateLimitError          429 after every retry
│   ├── ContextTooLongError     the request does not fit the model's window
│   ├── BadRequestError         400/404/422: the request was refused
│   ├── ProviderUnavailableError  5xx/529, timeouts, connection errors after every retry
│   │   └── IncompleteReplyError  a streamed reply broke off (what arrived is kept)
│   └── MalformedResponseError  the reply could not be read
├── BudgetExceeded              a Budget limit was reached (the run stops with "budget"/"deadline")
├── ScriptError                 a ScriptedModel ran out of steps or has steps left over
├── ReplError                   the REPL could not start or talk to its worker
│   └── SandboxUnavailableError the default REPL's sandbox cannot be built here
├── SessionError                a Session was used while closed or busy with another turn
├── TrajectoryError             a trajectory file could not be read
└── ReplayError                 a replay was asked for what its recording does not hold
```

Every message says what to do next.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from rlm.result import RLMResult


class RLMError(Exception):
    """Base class of every error rlm raises.

    When an error ends a run, `result` holds what the run had done until then
    (`stop_reason="error"`, usage and history included), so nothing is lost.
    """

    result: RLMResult | None = None

    def with_result(self, result: RLMResult) -> Self:
        """A copy of this error carrying `result`. This one is left as it is: it may be
        shared (a child run's error re-raised by its parent, a scripted step raised twice)."""
        copy = type(self).__new__(type(self), *self.args)
        copy.__dict__.update(self.__dict__)
        copy.result = result
        copy.__traceback__ = self.__traceback__
        return copy


class ConfigurationError(RLMError, ValueError):
    """The library was called with arguments it cannot use."""


class UnknownModelError(ConfigurationError):
    """A model string names no registered provider."""


class MissingAPIKeyError(ConfigurationError):
    """A provider needs a key that was neither passed nor found in the environment."""


class ProviderError(RLMError):
    """A model call failed after every retry. `status` is the HTTP status when known."""

    def __init__(self, message: str, *, model: str | None = None, status: int | None = None):
        super().__init__(message)
        self.model = model
        self.status = status


class AuthenticationError(ProviderError):
    """The provider rejected the credentials."""


class RateLimitError(ProviderError):
    """The provider kept rate-limiting after every retry."""


class ContextTooLongError(ProviderError):
    """The request is larger than the model accepts."""


class BadRequestError(ProviderError):
    """The provider refused the request as invalid."""


class ProviderUnavailableError(ProviderError):
    """The provider could not be reached or kept failing (5xx, timeouts, connection)."""


class IncompleteReplyError(ProviderUnavailableError):
    """A streamed reply broke off before its end.

    `partial_text` is the text that had arrived; `output_began` says whether any output
    (text, thinking or a tool call) had, which means it was generated and billed. Such a
    reply is retried only as `RetryPolicy.max_interrupted_retries` allows; one that broke
    before any output is retried like a connection error.
    """

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        partial_text: str = "",
        output_began: bool = False,
    ):
        super().__init__(message, model=model)
        self.partial_text = partial_text
        self.output_began = output_began


class MalformedResponseError(ProviderError):
    """The provider answered with something that is not a usable reply."""


class BudgetExceeded(RLMError):
    """A `Budget` limit was reached; no new model call may start.

    `limit` names the limit ("max_tokens", "max_cost_usd", "max_subcalls",
    "max_seconds"); `stop_reason` is "deadline" for `max_seconds`, else "budget".
    """

    def __init__(self, limit: str, message: str):
        super().__init__(message)
        self.limit = limit

    @property
    def stop_reason(self) -> str:
        return "deadline" if self.limit == "max_seconds" else "budget"


class ScriptError(RLMError, AssertionError):
    """A scripted test model was used differently from its script."""


class ReplError(RLMError):
    """The REPL could not start, or lost its worker in a way it could not recover from."""


class SessionError(RLMError):
    """A `Session` was used in a way a conversation cannot be: after it was closed, for a
    second turn while one is running, or from an event loop it does not live on."""


class SandboxUnavailableError(ReplError):
    """The sandbox for model-written code cannot be built here (no bubblewrap, user
    namespaces not allowed, no libseccomp). The message names the reason and the ways on:
    install bubblewrap; accept a plain subprocess (`SubprocessRepl(isolation="none")` or
    `RLM_SANDBOX=none`) inside a container you trust; or `repl="inprocess"`."""


class TrajectoryError(RLMError):
    """A trajectory file is missing, truncated or not a trajectory."""


class ReplayError(RLMError):
    """A `ReplayModel` (or `Cassette`, or a resume) was asked for a request its recording
    does not hold, or for a run over a different context. The message names what differs."""
