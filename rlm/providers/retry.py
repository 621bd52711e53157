"""Retries and error mapping shared by the SDK adapters (one mechanism for every provider).

rlm owns retries: the adapters build SDK clients with `max_retries=0` (a client you pass
is used through `client.with_options(max_retries=0)`), so exactly one layer retries and
every retry is visible as a `ModelRetry` event.

What is retried: rate limits (429), connection errors, timeouts, and HTTP 408, 409, 5xx
and 529 (overloaded). A streamed reply that broke off (`IncompleteReplyError`) is retried
like a connection error if no output had arrived; once output began it was generated and
billed, so it is retried only `RetryPolicy.max_interrupted_retries` times (default 0)
and the error says what arrived. A `retry-after-ms` or `retry-after` header sets the wait; without
one the wait grows exponentially with random jitter (`RetryPolicy`). Never retried:
400, 401, 403, 404, 422 and other client errors, an exhausted quota
(`insufficient_quota`), a `retry-after` longer than `RetryPolicy.max_retry_after_s`, and
a connection refused by a loopback or private address (a wrong `base_url` or a local
server that is not running: nothing there will start listening in the next seconds).
The refusal is recognised by the OS error in the exception's cause chain and the host of
the request's URL, so it holds whatever HTTP client the SDK runs on.

Final failures become `rlm.errors` exceptions whose messages say what to do next:
`AuthenticationError`, `RateLimitError`, `ContextTooLongError`, `BadRequestError`,
`ProviderUnavailableError`, `MalformedResponseError`.

The machinery knows no SDK: an adapter describes its SDK's exception classes in
`SDKErrors` and its endpoint in `ProviderSpec`, then calls `call_with_retries`.
"""

from __future__ import annotations

import email.utils
import errno
import ipaddress
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter

from rlm.errors import (
    AuthenticationError,
    BadRequestError,
    ContextTooLongError,
    IncompleteReplyError,
    MalformedResponseError,
    ProviderError,
    ProviderUnavailableError,
    RateLimitError,
)
from rlm.providers.base import RetryDetails, report_retry

T = TypeVar("T")

#: Statuses worth another attempt besides 429: request timeout, conflict, server errors.
RETRY_STATUSES = frozenset({408, 409})
#: Client errors that are never retried, whatever the server's headers say.
NEVER_RETRY_STATUSES = frozenset({400, 401, 403, 404, 422})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How model calls are retried.

    Args:
        max_attempts: attempts in all, the first included (1 disables retries).
        initial_wait_s: the first backoff wait; each later one doubles it.
        max_wait_s: the longest backoff wait.
        jitter_s: up to this much random time is added to each backoff wait.
        max_retry_after_s: the longest `retry-after` honoured; a provider asking for
            a longer wait gets no retry and the error is raised at once.
        max_interrupted_retries: how many times a streamed reply that broke off after
            its output began is asked for again (each time it is generated, and paid
            for, anew); within `max_attempts`.
    """

    max_attempts: int = 5
    initial_wait_s: float = 0.5
    max_wait_s: float = 30.0
    jitter_s: float = 0.5
    max_retry_after_s: float = 60.0
    max_interrupted_retries: int = 0

    def __post_init__(self) -> None:
        if (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or self.max_attempts < 1
        ):
            raise ValueError(f"RetryPolicy(max_attempts={self.max_attempts!r}): use an int >= 1")
        interrupted = self.max_interrupted_retries
        if not isinstance(interrupted, int) or isinstance(interrupted, bool) or interrupted < 0:
            raise ValueError(
                f"RetryPolicy(max_interrupted_retries={interrupted!r}): use an int >= 0"
            )
        for name in ("initial_wait_s", "max_wait_s", "jitter_s", "max_retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0 or math.isnan(value):
                raise ValueError(f"RetryPolicy({name}={value!r}): use a number >= 0")

    @classmethod
    def never(cls) -> RetryPolicy:
        """A policy that makes one attempt and never retries."""
        return cls(max_attempts=1)

    def backoff(self) -> wait_exponential_jitter:
        """The tenacity wait strategy used when the server gives no `retry-after`."""
        return wait_exponential_jitter(
            multiplier=self.initial_wait_s, max=self.max_wait_s, jitter=self.jitter_s
        )


@dataclass(frozen=True, slots=True)
class SDKErrors:
    """One SDK's exception classes, so the shared machinery imports no SDK."""

    base: type[BaseException]
    status: type[BaseException]
    connection: type[BaseException]
    timeout: type[BaseException]
    validation: type[BaseException]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """What error messages need to know about an adapter's endpoint."""

    label: str
    model: str
    base_url: str
    key_env: str
    base_url_env: str
    api_name: str
    timeout_s: float | None
    errors: SDKErrors


@dataclass(frozen=True, slots=True)
class Failure:
    """A classified failure: what it maps to, and whether to try again."""

    error_type: type[ProviderError]
    retryable: bool
    detail: str
    status: int | None = None
    retry_after_s: float | None = None
    quota: bool = False


_CONTEXT_PATTERNS = re.compile(
    r"context[ _-]?length|maximum context|context window|context size|prompt is too long|"
    r"too many (?:input )?tokens|input is too long|exceed_context|exceeds the available context|"
    r"reduce the length|request too large|too large for model|maximum prompt length",
    re.IGNORECASE,
)


def retry_after_s(headers: Mapping[str, str] | Any) -> float | None:
    """Seconds the server asked to wait (`retry-after-ms`, then `retry-after`), or None."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000
        except ValueError:
            pass
        else:
            if math.isfinite(value):
                return max(0.0, value)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return max(0.0, value) if math.isfinite(value) else None


def _api_message(exc: BaseException) -> str:
    """The provider's own error message, from the body when it has one."""
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    elif isinstance(body, str) and body.strip():
        return body.strip()[:300]
    message = getattr(exc, "message", None)
    return str(message if isinstance(message, str) else exc)


def _error_code(exc: BaseException) -> str:
    """The error's code and type words, lowercased (for quota and context checks)."""
    body = getattr(exc, "body", None)
    words: list[str] = []
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            words += [str(error.get(k)) for k in ("code", "type") if error.get(k)]
    words += [str(getattr(exc, k)) for k in ("code", "type") if getattr(exc, k, None)]
    return " ".join(words).lower()


def classify(exc: BaseException, spec: ProviderSpec) -> Failure | None:
    """How a failed attempt maps to rlm's errors, or None for a non-provider exception."""
    errors = spec.errors
    if isinstance(exc, IncompleteReplyError):
        return Failure(IncompleteReplyError, True, str(exc))
    if isinstance(exc, ProviderError):
        return Failure(type(exc), False, str(exc), getattr(exc, "status", None))
    if isinstance(exc, (errors.connection, errors.timeout)):
        refused = refused_local_url(exc, spec.base_url)
        if refused is not None:
            return Failure(
                ProviderUnavailableError,
                False,
                f"the connection to {refused} was refused (nothing listens there; a "
                "refusal from a local or private address is not retried)",
            )
    if isinstance(exc, errors.timeout):
        return Failure(ProviderUnavailableError, True, "the request timed out")
    if isinstance(exc, errors.connection):
        cause = exc.__cause__ or exc.__context__
        reason = f"{type(cause).__name__}: {cause}" if cause else str(exc)
        return Failure(ProviderUnavailableError, True, f"the connection failed ({reason})")
    if isinstance(exc, errors.validation):
        return Failure(MalformedResponseError, False, f"the reply did not match the schema: {exc}")
    if isinstance(exc, errors.status):
        return _classify_status(exc)
    if isinstance(exc, json.JSONDecodeError):
        return Failure(MalformedResponseError, False, f"the body is not valid JSON ({exc})")
    if isinstance(exc, errors.base):
        return Failure(ProviderError, False, f"{type(exc).__name__}: {exc}")
    return None


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and everything under it (`__cause__`, else `__context__`), once each."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_local_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False  # a name: resolving it here would block; it may be anywhere
    return address.is_loopback or address.is_private or address.is_link_local


def _request_url(exc: BaseException) -> str | None:
    try:  # httpx2's errors raise RuntimeError for a request that was never set
        url = getattr(getattr(exc, "request", None), "url", None)
    except RuntimeError:
        return None
    return str(url) if url is not None else None


def refused_local_url(exc: BaseException, base_url: str) -> str | None:
    """The URL of a request that a loopback or private address refused, or None.

    A refusal is an OS-level `ECONNREFUSED` anywhere in the cause chain (aiohttp's and
    httpcore's connection errors keep it there); the URL is the failed request's when
    the exception carries it, else `base_url`.
    """
    chain = _causes(exc)
    if not any(
        isinstance(c, ConnectionRefusedError)
        or (isinstance(c, OSError) and c.errno == errno.ECONNREFUSED)
        for c in chain
    ):
        return None
    url = next((u for u in map(_request_url, chain) if u is not None), base_url)
    host = urlsplit(url).hostname
    return url if host is not None and _is_local_host(host) else None


def _classify_status(exc: BaseException) -> Failure:
    status = int(getattr(exc, "status_code", 0) or 0)
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    wait = retry_after_s(headers)
    message = _api_message(exc)
    detail = f"HTTP {status}: {message}"
    code = _error_code(exc)
    failure: Failure
    if status == 429:
        quota = "insufficient_quota" in code or "billing" in code
        failure = Failure(RateLimitError, not quota, detail, status, wait, quota=quota)
    elif status in RETRY_STATUSES or status >= 500:
        failure = Failure(ProviderUnavailableError, True, detail, status, wait)
    elif status in (401, 403):
        failure = Failure(AuthenticationError, False, detail, status)
    elif _CONTEXT_PATTERNS.search(message) or "context_length" in code or status == 413:
        failure = Failure(ContextTooLongError, False, detail, status)
    else:
        failure = Failure(BadRequestError, False, detail, status)
    should_retry = headers.get("x-should-retry") if headers is not None else None
    if (
        status not in NEVER_RETRY_STATUSES
        and not failure.quota
        and should_retry in ("true", "false")
    ):
        failure = Failure(
            failure.error_type,
            should_retry == "true",
            failure.detail,
            status,
            failure.retry_after_s,
        )
    return failure


def interrupted_error(
    spec: ProviderSpec,
    policy: RetryPolicy,
    *,
    received: str,
    cause: BaseException | None,
    partial_text: str,
    output_began: bool,
) -> IncompleteReplyError:
    """The error for a streamed reply that broke off; `received` says what had arrived."""
    why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    if output_began:
        allowed = policy.max_interrupted_retries
        advice = (
            "What arrived is in error.partial_text. A reply cut short after its output "
            "began was generated and billed, so it is asked for again only as "
            f"RetryPolicy(max_interrupted_retries=...) allows (here {allowed})."
        )
    else:
        advice = "No output had arrived; it is retried like a connection error."
    return IncompleteReplyError(
        f"{spec.label} ({spec.base_url}) for model {spec.model!r}: the streamed reply broke "
        f"off after {received}{why}. {advice}",
        model=spec.model,
        partial_text=partial_text,
        output_began=output_began,
    )


def malformed_error(spec: ProviderSpec, detail: str) -> MalformedResponseError:
    """The error for a reply that arrived but cannot be read (the adapters' parsers)."""
    return MalformedResponseError(_malformed_message(spec, detail), model=spec.model)


def _malformed_message(spec: ProviderSpec, detail: str) -> str:
    return (
        f"{spec.label} ({spec.base_url}) for model {spec.model!r} sent a reply that could "
        f"not be read: {detail}. If this is a proxy or local server, check that it speaks "
        f"the {spec.api_name} API."
    )


def _advice(failure: Failure, spec: ProviderSpec, attempts: int, policy: RetryPolicy) -> str:
    """The final error message: what happened, and what to do about it."""
    who = f"{spec.label} ({spec.base_url}) for model {spec.model!r}"
    tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts > 1 else ""
    more = "raise RetryPolicy(max_attempts=...)"
    kind = failure.error_type
    if (
        failure.retry_after_s is not None
        and failure.retry_after_s > policy.max_retry_after_s
        and kind in (RateLimitError, ProviderUnavailableError)
    ):
        return (
            f"{who} failed{tries}: {failure.detail}. The provider asked to wait "
            f"{failure.retry_after_s:.0f} s, longer than RetryPolicy.max_retry_after_s="
            f"{policy.max_retry_after_s:g}, so it was not retried. Try again later, or raise "
            "max_retry_after_s."
        )
    if kind is AuthenticationError:
        if failure.status == 403:
            return (
                f"{who} refused access: {failure.detail}. The key works but may not "
                f"have access to this model or project; check the key behind {spec.key_env}, "
                "or choose another model."
            )
        return (
            f"{who} rejected the API key: {failure.detail}. Set {spec.key_env} to a valid "
            "key (or pass api_key=...)."
        )
    if kind is RateLimitError:
        if failure.quota:
            return (
                f"{who} refused the request: {failure.detail}. The account is out of "
                "quota or credit; check its billing and limits."
            )
        return (
            f"{who} kept rate-limiting{tries}: {failure.detail}. Lower RLM(max_concurrency=...), "
            f"wait and try again, or {more}."
        )
    if kind is ContextTooLongError:
        return (
            f"{who} said the request is too long for the model: {failure.detail}. Use a model "
            "with a larger context window, lower RLM(max_output_chars=...), or send less "
            "per call."
        )
    if kind is BadRequestError:
        hint = "Check the request's parameters for this model."
        if failure.status == 404:
            hint = (
                f"Check the model name ({spec.model!r}) and the base URL (set with base_url= "
                f"or {spec.base_url_env})."
            )
        return f"{who} refused the request: {failure.detail}. {hint}"
    if kind is ProviderUnavailableError:
        if failure.status is None and "timed out" in failure.detail:
            limit = f" of {spec.timeout_s:g} s" if spec.timeout_s else ""
            return (
                f"{who} did not answer within the timeout{limit}{tries}. Raise timeout=..., "
                f"check the server, or {more}."
            )
        if failure.status is None:
            return (
                f"could not reach {who}{tries}: {failure.detail}. Is the server running and "
                f"the URL right (base_url= or {spec.base_url_env})?"
            )
        return (
            f"{who} kept failing{tries}: {failure.detail}. The service may be down or "
            f"overloaded; try again later or {more}."
        )
    if kind is MalformedResponseError:
        return _malformed_message(spec, failure.detail)
    return f"{who} failed: {failure.detail}"


def to_rlm_error(
    exc: BaseException, spec: ProviderSpec, attempts: int = 1, policy: RetryPolicy | None = None
) -> ProviderError | None:
    """The `rlm.errors` exception for a final failure, or None for a non-provider one."""
    if isinstance(exc, ProviderError):
        return exc
    failure = classify(exc, spec)
    if failure is None:
        return None
    message = _advice(failure, spec, attempts, policy or RetryPolicy())
    return failure.error_type(message, model=spec.model, status=failure.status)


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    spec: ProviderSpec,
    policy: RetryPolicy,
) -> T:
    """Run `attempt` under `policy`, reporting each retry; raise `rlm.errors` at the end.

    `attempt` performs one request and reads its reply; an `rlm.errors.ProviderError` it
    raises (e.g. `MalformedResponseError`) is final and passes through unchanged.
    """
    # The first attempt runs outside tenacity, which costs as much as a small reply's
    # parsing; only a retryable failure enters it, where it is replayed as attempt 1 so
    # the waits and retry events are as if tenacity had run it.
    attempts = 1
    # Replies that broke off after output began, each counted once (tenacity asks
    # again about the replayed first failure).
    interrupted: list[BaseException] = []

    def retryable(exc: BaseException) -> bool:
        if isinstance(exc, IncompleteReplyError) and exc.output_began:
            if not any(seen is exc for seen in interrupted):
                interrupted.append(exc)
            if len(interrupted) > policy.max_interrupted_retries:
                return False
        return _retryable(exc, spec, policy)

    first_failure: Exception | None
    try:
        return await attempt()
    except Exception as exc:
        final = isinstance(exc, ProviderError) and not isinstance(exc, IncompleteReplyError)
        if final or policy.max_attempts <= 1 or not retryable(exc):
            mapped = to_rlm_error(exc, spec, attempts, policy)
            if mapped is None or mapped is exc:
                raise
            raise mapped from exc
        first_failure = exc

    async def one_attempt() -> T:
        nonlocal attempts, first_failure
        if first_failure is not None:
            replayed, first_failure = first_failure, None
            raise replayed
        attempts += 1
        return await attempt()

    def failure_of(state: RetryCallState) -> Failure | None:
        exc = state.outcome.exception() if state.outcome is not None else None
        return classify(exc, spec) if exc is not None else None

    backoff = policy.backoff()

    def wait(state: RetryCallState) -> float:
        failure = failure_of(state)
        if failure is not None and failure.retry_after_s is not None:
            return failure.retry_after_s
        return float(backoff(state))

    async def before_sleep(state: RetryCallState) -> None:
        failure = failure_of(state)
        if failure is None:
            return
        await report_retry(
            RetryDetails(
                model=spec.model,
                attempt=state.attempt_number,
                wait_s=state.upcoming_sleep,
                error_type=failure.error_type.__name__,
                error=failure.detail,
            )
        )

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        wait=wait,
        retry=retry_if_exception(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return await retrying(one_attempt)
    except ProviderError:
        raise
    except Exception as exc:
        mapped = to_rlm_error(exc, spec, attempts, policy)
        if mapped is None:
            raise
        raise mapped from exc


def _retryable(exc: BaseException, spec: ProviderSpec, policy: RetryPolicy) -> bool:
    failure = classify(exc, spec)
    if failure is None or not failure.retryable:
        return False
    wait = failure.retry_after_s
    return wait is None or wait <= policy.max_retry_after_s
