"""The HTTP API's request and response schema, and the parsing of a request body: whatever a
client sends ends as a RecommendRequest or an InputError carrying a 4xx status (never an
exception that would become a 500)."""
from __future__ import annotations

import json
from typing import Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from prunerec.serve.model import InputError
from prunerec.serve.service import MAX_K

EXAMPLE = '{"history": [12, "Halo 2"], "k": 10}'
SHOWN_CHARS = 60  # of a key or a bad token quoted back in a message
MAX_PROBLEMS = 10  # validation problems named in a message


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"history": [12, "Halo 2", 40], "k": 5}]})

    history: list[StrictInt | StrictStr] = Field(
        min_length=1, description="Items the user interacted with, oldest first: catalog item ids or exact titles. "
                                  "Only the model's most recent max_history items are used.")
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="How many distinct catalog items to return.")
    free_generation: bool = Field(False, description="Also return the model's unconstrained (greedy) generation.")


class Item(BaseModel):
    id: int = Field(description="Catalog item id (the first id of items sharing this title).")
    title: str
    score: float = Field(description="trie: summed log-probability of the title's tokens; l2: minus the L2 distance "
                                     "between the free generation's and the title's embeddings.")
    method: Literal["trie", "l2"] = Field(description="trie: constrained beam search; l2: BIGRec L2 grounding.")
    generation: str = Field(description="The raw text the model wrote for this item.")


class FreeGeneration(BaseModel):
    text: str
    title: str = Field(description="The text parsed back to a title (quotes and later lines removed).")
    token_ids: list[int]
    in_catalog: bool


class RecommendResponse(BaseModel):
    items: list[Item]
    k: int
    num_beams: int
    methods: dict[str, int] = Field(description="How many items each method produced.")
    fallback: str | None = Field(description="null: the constrained search found k titles; 'l2': L2 grounding "
                                             "filled the rest; otherwise why no fallback was possible.")
    history_used: list[int] = Field(description="Item ids in the prompt (the most recent max_history).")
    history_truncated: bool
    free_generation: FreeGeneration | None
    engine: str
    timing: dict[str, float] = Field(description="Milliseconds: queue_ms, search_ms, fallback_ms, total_ms.")


class ErrorBody(BaseModel):
    detail: str


ERRORS = {400: {"model": ErrorBody, "description": "Not a JSON object in UTF-8 (malformed, NaN, duplicate keys, "
                                                   "too deep, too long a number), or no body"},
          401: {"model": ErrorBody, "description": "Missing or wrong bearer token (with --api-key)"},
          413: {"model": ErrorBody, "description": "Body larger than --max-body-bytes"},
          422: {"model": ErrorBody, "description": "Unknown ids/titles, empty history, k out of range, wrong types"},
          503: {"model": ErrorBody, "description": "Warming up, or full: --max-concurrency running and --max-queue "
                                                   "waiting, or no slot within --queue-timeout (Retry-After)"},
          504: {"model": ErrorBody, "description": "Not answered within --request-timeout"}}


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: an error message may quote text the client
    sent, and a lone surrogate (legal in a JSON escape, not in UTF-8) must not break the answer."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return AsciiJSONResponse({"detail": message, **extra}, status_code=status, headers=headers)


# ----------------------------------------------------------------------------- parsing
def _shown(text: str) -> str:
    quoted = json.dumps(text)
    return quoted if len(quoted) <= SHOWN_CHARS else quoted[:SHOWN_CHARS] + '..."'


def _refuse_constant(name: str):
    raise InputError(f"malformed JSON: {name} is not a JSON number", status=400)


def _unique_keys(pairs: list) -> dict:
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise InputError(f"malformed JSON: duplicate key {_shown(key)}", status=400)
        obj[key] = value
    return obj


def _lone_surrogate(data) -> str | None:
    """A string (key or value) holding half of a UTF-16 surrogate pair, if any (iterative: the
    data may be nested as deep as the parser allows)."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return value
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value)
            stack.extend(value.values())
    return None


def load_json(raw: bytes):
    """The JSON value of a body; InputError(400) for anything that is not strict JSON in UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"the body is not UTF-8 text (byte {err.start}): send JSON in UTF-8", status=400) from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise InputError(f"malformed JSON: {err}", status=400) from None
    except RecursionError:
        raise InputError("malformed JSON: nested deeper than the parser allows", status=400) from None
    except ValueError as err:  # Python's limit on the digits of an integer (int_max_str_digits)
        raise InputError(f"malformed JSON: a number too long to read ({str(err).split(':')[0]})",
                         status=400) from None
    bad = _lone_surrogate(data)
    if bad is not None:
        raise InputError(f"malformed JSON: {_shown(bad)} holds an unpaired UTF-16 surrogate (not a character)",
                         status=400)
    return data


def validation_message(errors) -> tuple[int, str]:
    parts: dict[str, None] = {}  # ordered, without repeats
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        kind = err.get("type", "")
        if kind == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", err.get("msg", ""))
            return 400, f"malformed JSON: {reason}"
        if not loc and kind == "missing":
            return 400, f"request body is missing: send JSON like {EXAMPLE}"
        if loc == ["history"] and kind == "too_short":
            message = "history is empty: send at least one item id or title"
        elif len(loc) == 3 and loc[0] == "history" and loc[2] in ("int", "str"):
            message = f"history[{loc[1]}]: must be an item id (integer) or an exact title (string)"
        else:
            message = f"{'.'.join(_shown(x) if len(x) > SHOWN_CHARS else x for x in loc) or 'body'}: " \
                      f"{err.get('msg', kind)}"
        parts[message] = None
    named = list(parts)[:MAX_PROBLEMS]  # a body may hold thousands of wrong entries
    if len(parts) > MAX_PROBLEMS:
        named.append(f"... and {len(parts) - MAX_PROBLEMS} more problems")
    return 422, "; ".join(named) or "invalid request"


def _check_history_entries(history) -> None:
    """The entries' types, checked before the schema: pydantic spends about 40 us on each wrong
    entry, so a body of 20,000 would hold the event loop for most of a second."""
    if not isinstance(history, list):
        return
    wrong = [i for i, entry in enumerate(history) if isinstance(entry, bool) or not isinstance(entry, (int, str))]
    if wrong:
        named = "; ".join(f"history[{i}]: must be an item id (integer) or an exact title (string)"
                          for i in wrong[:MAX_PROBLEMS])
        more = f"; ... and {len(wrong) - MAX_PROBLEMS} more problems" if len(wrong) > MAX_PROBLEMS else ""
        raise InputError(named + more)


def parse_request(raw: bytes) -> RecommendRequest:
    """The JSON body, whatever the Content-Type (curl -d sends a form type): 400 if it is not
    JSON, 422 if it does not fit the schema."""
    if not raw.strip():
        raise InputError(f"request body is missing: send JSON like {EXAMPLE}", status=400)
    data = load_json(raw)
    if not isinstance(data, dict):
        raise InputError(f"the body must be a JSON object like {EXAMPLE}, not {type(data).__name__}")
    _check_history_entries(data.get("history"))
    try:
        return RecommendRequest.model_validate(data)
    except ValidationError as err:
        status, message = validation_message(err.errors())
        raise InputError(message, status=status) from None
