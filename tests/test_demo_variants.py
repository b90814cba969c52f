"""benchmarks/demo_variants.py's sort of held-out mistakes: which relation a question and a visit goal ask for."""
import json
import sys
from pathlib import Path

from litere.world.generate import GOAL, NOUN_PHRASE, QUESTION

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import demo_variants  # noqa: E402


def test_every_question_and_goal_template_is_read_back_as_its_relation():
    for relation, template in QUESTION.items():
        direct = template.format("Kuger Renin")
        assert demo_variants.relation_asked(direct, demo_variants.QUESTION_PATTERNS) == relation
        for phrase in NOUN_PHRASE.values():  # a 2-hop question: the outer relation is the one asked
            two_hop = template.format(phrase.format("Prazal Textiles"))
            assert demo_variants.relation_asked(two_hop, demo_variants.QUESTION_PATTERNS) == relation
    for relation, template in GOAL.items():
        goal = "Find " + template.format("Glanin")
        assert demo_variants.relation_asked(goal, demo_variants.GOAL_PATTERNS) == relation
    assert demo_variants.relation_asked("Find out more", demo_variants.GOAL_PATTERNS) is None


def test_mistakes_count_a_wrong_second_goal_only_on_wrong_2hop_answers(tmp_path):
    question = QUESTION["population"].format(NOUN_PHRASE["birth_city"].format("Sanar Kur"))

    def record(goal, reward, source="world-2hop"):
        visits = [{"name": "visit", "arguments": {"url": ["w/sanar-kur"], "goal": "Find the city where Sanar Kur "
                                                  "was born"}},
                  {"name": "visit", "arguments": {"url": ["w/thusk"], "goal": goal}}]
        return {"data_source": source, "question": question, "reward": reward, "answers": ["Kroba"],
                "tool_calls": visits}

    records = [record("Find the country Thusk is in", 0.0), record("Find the population of Thusk", 0.0),
               record("Find the country Thusk is in", 1.0), record("Find the country Thusk is in", 0.0, "world-3hop")]
    path = tmp_path / "trajectories.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    counts = demo_variants.mistakes(path)
    assert counts["wrong_relation"] == 1 and counts["copy"] == 2 and counts["correct"] == 1
