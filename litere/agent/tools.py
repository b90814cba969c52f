"""Tool calls (docs/protocol.md section 3): parsing the first valid `<tool_call>` of a turn and running it."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from ..env.formats import as_list

TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")
TOOL_ERROR = "Error when executing tool: {}"
MALFORMED_CALL = "(malformed)"  # the record's tool name for a call that could not be parsed (evaluation mode)


@dataclass
class ToolCall:
    name: str
    arguments: dict


def _loads(text: str):
    """(the JSON value of text, None), or (None, why) for anything the JSON reader refuses: broken syntax, nesting
    deeper than the interpreter's recursion limit, integers past its digit limit."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"tool call is not valid JSON ({e})"
    except RecursionError:
        return None, "tool call is not valid JSON (nested too deeply)"
    except ValueError:   # an integer literal past sys.get_int_max_str_digits()
        return None, "tool call is not valid JSON (a number has too many digits)"


def valid_unicode(value):
    """value with every lone surrogate (which a JSON escape like \\ud800 can carry) replaced by U+FFFD, so that
    it can be encoded, tokenized and written; strings in lists and dicts (keys too) included."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [valid_unicode(v) for v in value]
    if isinstance(value, dict):
        return {valid_unicode(k): valid_unicode(v) for k, v in value.items()}
    return value


def parse_tool_call(text: str) -> tuple[ToolCall | None, str | None]:
    """The first valid `<tool_call>` of a turn, as (call, None); (None, why) when there are calls but none is
    valid; (None, None) when the turn makes no call. Never raises; lone surrogates in the call become U+FFFD."""
    bodies = TOOL_CALL_RE.findall(text)
    if not bodies:
        return None, ("<tool_call> is not closed by </tool_call>" if "<tool_call>" in text else None)
    problem = None
    for body in bodies:
        obj, why = _loads(body)
        if why is not None:
            problem = problem or why
            continue
        arguments = obj.get("arguments") if isinstance(obj, dict) else None
        if isinstance(arguments, str):  # some models double-encode the arguments
            decoded, why = _loads(arguments)
            if why is None:
                arguments = decoded
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not isinstance(arguments, dict):
            problem = problem or 'tool call must be a JSON object with a string "name" and an object "arguments"'
            continue
        try:
            return ToolCall(valid_unicode(obj["name"]), valid_unicode(arguments)), None
        except RecursionError:   # as deep as the reader allows, but deeper than the copy can go
            problem = problem or "tool call is not valid JSON (nested too deeply)"
    return None, problem


def execute_tool(env, call: ToolCall, mask_url: str | None) -> tuple[str, bool, str | None, float]:
    """Run one call against the environment: (text for the model, success, error, latency in seconds).
    Every failure becomes the protocol's error text, so the episode can go on. The texts are valid Unicode (lone
    surrogates, from the call or from a service, become U+FFFD), so they can be tokenized and written."""
    start = time.perf_counter()
    try:
        if call.name == "search":
            text = env.search(as_list(call.arguments.get("query"), "query"), mask_url=mask_url)
        elif call.name == "visit":
            goal = call.arguments.get("goal")
            if not isinstance(goal, str):
                raise ValueError(f"'goal' must be a string, got {goal!r:.200}")
            text = env.visit(as_list(call.arguments.get("url"), "url"), goal)
        else:
            raise ValueError(f"unknown tool {call.name!r}; the tools are search and visit")
        return valid_unicode(text), True, None, time.perf_counter() - start
    except Exception as e:  # the model sees the error and may try again
        return (valid_unicode(TOOL_ERROR.format(e)), False, valid_unicode(f"{type(e).__name__}: {e}"),
                time.perf_counter() - start)
