"""The bundled mini world: determinism, disjoint name pools, and teacher trajectories backed by the real tools."""
import json
import re
from pathlib import Path

import pytest

from litere.env import EnvSettings, open_env
from litere.tokenizer import SYSTEM_PROMPT, USER_PREFIX
from litere.world import BuildConfig, World, WorldSize, build, load_manifest, train_world_seed, training_texts
from litere.world.names import name_pool

SMALL = BuildConfig(seed=3, worlds=3, trajectories=30, eval_questions=30, workers=1)
TEXT_FILES = ["train_corpus.jsonl", "train_questions.jsonl", "train_sft.jsonl", "eval_corpus.jsonl",
              "eval_questions.jsonl", "eval_sft.jsonl", "manifest.json"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    build(SMALL, out, log=None)
    return out


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_same_seed_same_bytes(built, tmp_path):
    build(SMALL, tmp_path, log=None)
    for name in TEXT_FILES:
        assert (tmp_path / name).read_bytes() == (built / name).read_bytes(), name
    other = World(SMALL.seed + 1).pages()
    assert other != World(SMALL.seed).pages()
    assert World(SMALL.seed).pages() == World(SMALL.seed).pages()


def title_words(rows):
    return {w for r in rows for w in r["title"].split()}


def test_name_pools_are_disjoint(built):
    train_one, train_two = name_pool("train")
    eval_one, eval_two = name_pool("eval")
    assert not set(train_one + train_two) & set(eval_one + eval_two)
    assert len(eval_one + eval_two) > 2000
    train_words = title_words(read_jsonl(built / "train_corpus.jsonl"))
    eval_words = title_words(read_jsonl(built / "eval_corpus.jsonl"))
    # titles share only the template words of company and work names (Foods, Garden, ...)
    assert train_words & eval_words <= set(w.capitalize() for w in "foods motors press bank media energy games "
                                           "mining airlines labs textiles shipping road song tide garden winter "
                                           "glass crown mirror lantern harvest island storm feather bell shadow "
                                           "orchard".split())


def test_world_pages_state_their_facts():
    world = World(0, size=WorldSize(people=20, companies=6, cities=5, countries=2, works=4))
    person = world.of_kind("person")[0]
    text = dict((t, x) for _, t, x in world.pages())[person.name]
    assert f"{person.name} was born in {person.facts['birth_city']} in {person.facts['birth_year']}." in text
    for hops in (1, 2, 3):
        for q in world.questions(hops):
            assert q.answer == world.follow(q.start, q.chain)[-1] and q.text.endswith("?")


def test_questions_files_and_mix(built):
    manifest = load_manifest(built)
    train = read_jsonl(built / "train_questions.jsonl")
    assert len(train) == 3 * 30 and manifest["counts"]["train_questions"] == 90
    sources = [q["data_source"] for q in train[:30]]
    assert (sources.count("world-direct"), sources.count("world-2hop"), sources.count("world-3hop")) == (18, 9, 3)
    assert all(q["mask_url"] is None and (built / q["env"]).is_file() for q in train)
    evals = read_jsonl(built / "eval_questions.jsonl")
    assert len(evals) == 30 and all(q["env"] == "eval.db" for q in evals)
    env = open_env(built / "eval.db")
    assert env.settings == EnvSettings.compact() == EnvSettings.from_dict(manifest["env_settings"])
    env.close()


TOOL_CALL = re.compile(r"^<think>\n(.+)\n</think>\n\n<tool_call>\n(.+)\n</tool_call>$", re.DOTALL)
ANSWER = re.compile(r"^<think>\n(.+)\n</think>\n\n<answer>(.+)</answer>$", re.DOTALL)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_teacher_trajectory_is_correct_and_replays_exactly(built, split):
    questions = {q["id"]: q for q in read_jsonl(built / f"{split}_questions.jsonl")}
    truth = {}
    for seed, pool in ([(train_world_seed(SMALL.seed, i), "train") for i in range(SMALL.worlds)] if split == "train"
                       else [(SMALL.seed, "eval")]):
        world = World(seed, pool, SMALL.size, SMALL.url_prefix)
        for hops in (1, 2, 3):
            for q in world.questions(hops):
                truth[(seed, q.text)] = q.answer
    envs = {}
    for row in read_jsonl(built / f"{split}_sft.jsonl"):
        q = questions[row["id"]]
        msgs = row["messages"]
        assert msgs[0] == {"role": "system", "content": SYSTEM_PROMPT}
        assert msgs[1] == {"role": "user", "content": USER_PREFIX + q["question"]}
        assert [m["role"] for m in msgs[2:]] == ["assistant", "user"] * ((len(msgs) - 3) // 2) + ["assistant"]
        hops = 1 if q["data_source"] == "world-direct" else int(q["data_source"][6])
        assert len(msgs) == 4 * hops + 3           # search, visit per hop, then the answer
        env = envs.setdefault(q["env"], open_env(built / q["env"]))
        for call_msg, response in zip(msgs[2:-1:2], msgs[3::2]):
            thought, call = TOOL_CALL.match(call_msg["content"]).groups()
            call = json.loads(call)
            assert call_msg["content"].endswith(json.dumps(call, ensure_ascii=False) + "\n</tool_call>")
            args = call["arguments"]
            out = env.search(args["query"]) if call["name"] == "search" else env.visit(args["url"], args["goal"])
            assert response["content"] == f"<tool_response>\n{out}\n</tool_response>"
        thought, answer = ANSWER.match(msgs[-1]["content"]).groups()
        seed = train_world_seed(SMALL.seed, int(row["world"][1:])) if split == "train" else SMALL.seed
        assert answer == q["answers"][0] == row["answers"][0] == truth[(seed, q["question"])]
        assert answer in msgs[-2]["content"]          # read from the last tool response, not guessed
    for env in envs.values():
        env.close()


def test_training_texts(built):
    texts = list(training_texts(built))
    assert texts[0] == SYSTEM_PROMPT and SYSTEM_PROMPT not in texts[1:]
    assert len(texts) > 90 * 5
    seen = {w for t in texts for w in re.findall(r"[A-Z][a-z]+", t)}
    eval_people = [r for r in read_jsonl(built / "eval_corpus.jsonl") if " was born in " in r["doc"]]
    assert eval_people and not title_words(eval_people) & seen
