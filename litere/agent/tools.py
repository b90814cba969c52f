"""Tool calls (docs/protocol.md section 3): parsing the first valid `<tool_call>` of a turn and running it."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from ..env.formats import as_list

TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
TOOL_ERROR = "Error when executing tool: {}"
MALFORMED_CALL = "(malformed)"  # the record's tool name for a call that could not be parsed (evaluation mode)


@dataclass
class ToolCall:
    name: str
    arguments: dict


def parse_tool_call(text: str) -> tuple[ToolCall | None, str | None]:
    """The first valid `<tool_call>` of a turn, as (call, None); (None, why) when there are calls but none is
    valid; (None, None) when the turn makes no call."""
    bodies = TOOL_CALL_RE.findall(text)
    if not bodies:
        return None, ("<tool_call> is not closed by </tool_call>" if "<tool_call>" in text else None)
    problem = None
    for body in bodies:
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as e:
            problem = problem or f"tool call is not valid JSON ({e})"
            continue
        arguments = obj.get("arguments") if isinstance(obj, dict) else None
        if isinstance(arguments, str):  # some models double-encode the arguments
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not isinstance(arguments, dict):
            problem = problem or 'tool call must be a JSON object with a string "name" and an object "arguments"'
            continue
        return ToolCall(obj["name"], arguments), None
    return None, problem


def execute_tool(env, call: ToolCall, mask_url: str | None) -> tuple[str, bool, str | None, float]:
    """Run one call against the environment: (text for the model, success, error, latency in seconds).
    Every failure becomes the protocol's error text, so the episode can go on."""
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
        return text, True, None, time.perf_counter() - start
    except Exception as e:  # the model sees the error and may try again
        return TOOL_ERROR.format(e), False, f"{type(e).__name__}: {e}", time.perf_counter() - start
