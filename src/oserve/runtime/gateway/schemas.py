"""Request bodies of the OpenAI-compatible endpoints, validated strictly.

Types are strict (``"max_tokens": true`` or ``"stream": "yes"`` is a 400, not 1 or true). Fields oserve
does not act on are ignored only when they cannot change the answer (``user``, ``metadata``, ...); an
OpenAI field that would change it and that oserve cannot honour (``UNSUPPORTED_FIELDS``: log-probs,
tools, response formats, ``n > 1``, ...) is a 400 naming the field, never silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from oserve.runtime.errors import ClientRequestError

MAX_STOP_SEQUENCES = 4

# field -> the values that ask for nothing (sent by clients that fill in every default)
UNSUPPORTED_FIELDS: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False),
    "best_of": (None, 1), "suffix": (None, ""), "logit_bias": (None, {}),
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []),
    "function_call": (None, "none"), "response_format": (None, {"type": "text"}),
    "prediction": (None,), "audio": (None,), "modalities": (None, ["text"]),
}

_STRICT = ConfigDict(extra="ignore", strict=True)


class ContentPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class _Sampling(BaseModel):
    # extra fields are kept (``model_extra``) so that ``check_unsupported`` can see them
    model_config = ConfigDict(extra="allow", strict=True)
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return value

    def stop_tuple(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def check_unsupported(self) -> None:
        for name, value in (self.model_extra or {}).items():
            if name in UNSUPPORTED_FIELDS and value not in UNSUPPORTED_FIELDS[name]:
                raise ClientRequestError(f"'{name}' is not supported by this server; leave it out",
                                         name, "unsupported_parameter")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


TokenIds = list[int]


class CompletionRequest(_Sampling):
    # a text, a one-element list of texts, a list of token ids, or a one-element list of those
    prompt: str | list[str] | TokenIds | list[TokenIds]
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list) and value and isinstance(value[0], (str, list)):
            if len(value) != 1:
                raise ValueError("exactly one prompt per request is supported")
            value = value[0]
        if isinstance(value, list) and not value:
            raise ValueError("the prompt is empty; give at least one token or character")
        if isinstance(value, str) and not value:
            raise ValueError("the prompt is empty; give at least one character")
        if isinstance(value, list) and min(value) < 0:
            raise ValueError("token ids must be >= 0")
        return value

    def prompt_text(self) -> str | None:
        return self.prompt if isinstance(self.prompt, str) else None

    def prompt_token_ids(self) -> tuple[int, ...] | None:
        return tuple(cast(list[int], self.prompt)) if isinstance(self.prompt, list) else None

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


Body = TypeVar("Body", bound=_Sampling)


def parse_body(schema: type[Body], raw: bytes) -> Body:
    """Validate a JSON body against a schema; any problem becomes a ``ClientRequestError``."""
    if not raw:
        raise ClientRequestError("request body is empty; expected a JSON object")
    try:
        body = schema.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or None
        if first.get("type") == "json_invalid":
            raise ClientRequestError(f"request body is not valid JSON: {first.get('msg')}") from None
        message = first.get("msg", "invalid value")
        raise ClientRequestError(f"invalid field '{where}': {message}" if where
                                 else f"request body must be a JSON object: {message}", where) from None
    body.check_unsupported()
    return body


__all__ = ["ChatCompletionRequest", "ChatMessage", "CompletionRequest", "UNSUPPORTED_FIELDS",
           "parse_body"]
