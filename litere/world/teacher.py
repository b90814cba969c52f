"""The scripted expert of the bundled worlds: answers a question by calling the real tools, hop by hop.

For each fact on the question's chain it searches the current entity's name, visits that entity's page with a
goal worded like the page's sentence, reads the value and moves on; it gives up (returns None) if the page is
not among the search results or the visit text does not contain the fact, so every trajectory it writes is
backed by what the tools really returned. Messages follow the SFT layout of the project's contracts.
"""
from __future__ import annotations

import json
import random
import re

from litere.env import LocalEnv
from litere.tokenizer import SYSTEM_PROMPT, USER_PREFIX, tool_response_block
from litere.world.generate import FACT, GOAL, World, WorldQuestion

# a word the expert sometimes adds to the name it searches for
QUERY_HINT = {
    "birth_city": "born", "birth_year": "born", "employer": "company", "founder": "founded", "founded": "founded",
    "hq": "headquarters", "employees": "employees", "country": "country", "population": "population",
    "mayor": "mayor", "capital": "capital", "currency": "currency", "author": "created", "released": "released",
}
_SEARCH_SAYS = ["Let me search for {}.", "I will search for {}."]
_VISIT_SAYS = ["Result {rank} is the page of {name}. Let me visit it.",
               "The page {url} is about {name}. I will read it."]
_READ_SAYS = ["The page says {}.", "According to the page, {}."]
_RESULT = re.compile(r"^(\d+)\. \[.*\]\((.*)\)$", re.MULTILINE)


def tool_call(name: str, arguments: dict) -> str:
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def assistant_turn(thought: str, action: str) -> dict:
    return {"role": "assistant", "content": f"<think>\n{thought}\n</think>\n\n{action}"}


def tool_turn(name: str, arguments: dict, thought: str) -> dict:
    return assistant_turn(thought, f"<tool_call>\n{tool_call(name, arguments)}\n</tool_call>")


def tool_response(text: str) -> dict:
    return {"role": "user", "content": tool_response_block(text)}


def result_rank(search_text: str, url: str) -> int | None:
    for rank, link in _RESULT.findall(search_text):
        if link == url:
            return int(rank)
    return None


def teach(world: World, env: LocalEnv, question: WorldQuestion, rng: random.Random) -> list[dict] | None:
    """The teacher's conversation for one question, or None if the tools do not lead to the answer."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": USER_PREFIX + question.text}]
    values = world.follow(question.start, question.chain)
    subject = world.entities[question.start]
    first = GOAL[question.chain[0]].format(subject.name)
    thought = (f"I need to find {first}. " if len(question.chain) == 1 else f"First I need to find {first}. ")
    thought += rng.choice(_SEARCH_SAYS).format(subject.name)
    for hop, relation in enumerate(question.chain):
        queries = [subject.name, f"{subject.name} {QUERY_HINT[relation]}"]
        if rng.random() < 0.3:
            queries.reverse()
        for query in queries:
            search_text = env.search([query])
            rank = result_rank(search_text, subject.url)
            if rank is not None:
                break
        else:
            return None
        messages += [tool_turn("search", {"query": [query]}, thought), tool_response(search_text)]

        goal = "Find " + GOAL[relation].format(subject.name)
        visit_text = env.visit([subject.url], goal)
        if subject.fact_sentence[relation] not in visit_text:
            return None
        thought = rng.choice(_VISIT_SAYS).format(rank=rank, name=subject.name, url=subject.url)
        messages += [tool_turn("visit", {"url": [subject.url], "goal": goal}, thought), tool_response(visit_text)]

        value = values[hop]
        thought = rng.choice(_READ_SAYS).format(FACT[relation].format(subject.name, value))
        if hop + 1 == len(question.chain):
            messages.append(assistant_turn(f"{thought} So the answer is {value}.", f"<answer>{value}</answer>"))
            return messages
        subject = world.entities[value]
        thought += (f" Now I need to find {GOAL[question.chain[hop + 1]].format(value)}. "
                    + rng.choice(_SEARCH_SAYS).format(value))
    raise AssertionError("unreachable: the loop answers on its last hop")
