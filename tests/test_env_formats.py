"""The search and visit texts, byte for byte against docs/protocol.md section 3."""
from pathlib import Path

import pytest

from litere.env import EnvSettings, LocalEnv, PageStore, SearchHit, format_search, format_visit, visit_miss

PAGES = [
    ("https://ex.org/kalo", "Kalo Ven", "Kalo Ven is a painter. Kalo Ven was born in Brell in 1962. "
                                        "Kalo Ven works for Tarn Foods. Kalo Ven enjoys chess."),
    ("https://ex.org/brell", "Brell", "Brell is a city in the country of Osk. Brell has a population of 52000. "
                                      "The mayor of Brell is Kalo Ven."),
    ("https://ex.org/tarn", "Tarn Foods", "Tarn Foods is a food company. Tarn Foods was founded in 1987 by Kalo Ven."),
    ("https://ex.org/osk", "Osk", "Osk is a country with 1 cities. The capital of Osk is Brell."),
]


@pytest.fixture()
def env():
    store = PageStore(":memory:")
    store.add_pages(PAGES)
    env = LocalEnv(store, EnvSettings(results_per_query=3, snippet_words=6, visit_sentences=2, summary_sentences=1))
    yield env
    env.close()


def hit(n):
    return SearchHit(f"https://x/{n}", f"T{n}", f"snippet {n}", 1.0)


def test_search_block_layout_is_exact():
    text = format_search(["q one"], [[hit(1), hit(2)]])
    assert text == ("A Google search for 'q one' found 2 results:\n\n## Web Results\n"
                    "1. [T1](https://x/1)\nsnippet 1\n\n"
                    "2. [T2](https://x/2)\nsnippet 2")


def test_queries_are_joined_deduplicated_and_renumbered():
    text = format_search(["a", "b"], [[hit(1), hit(2)], [hit(2), hit(3), hit(1), hit(4)]])
    assert text == ("A Google search for 'a' found 2 results:\n\n## Web Results\n"
                    "1. [T1](https://x/1)\nsnippet 1\n\n2. [T2](https://x/2)\nsnippet 2"
                    "\n\n=======\n\n"
                    "A Google search for 'b' found 2 results:\n\n## Web Results\n"
                    "1. [T3](https://x/3)\nsnippet 3\n\n2. [T4](https://x/4)\nsnippet 4")


def test_mask_url_removes_links_containing_it():
    hits = [hit(1), SearchHit("https://x/masked/page?a=1", "M", "m", 1.0), hit(2)]
    text = format_search(["q"], [hits], mask_url="x/masked/page")
    assert "masked" not in text
    assert text.startswith("A Google search for 'q' found 2 results:")
    assert "1. [T1](https://x/1)" in text and "2. [T2](https://x/2)" in text


def test_no_results_block():
    assert format_search(["zzz"], [[]]) == "A Google search for 'zzz' found 0 results:\n\n## Web Results"


def test_visit_texts_are_exact():
    assert format_visit("u", "g", "E1\nE2", "S") == (
        "The useful information in u for user goal g as follows: \n\nEvidence in page: \nE1\nE2\n\nSummary: \nS")
    assert visit_miss("https://no/where", "find x") == (
        "The useful information in https://no/where for user goal find x as follows: \n\n"
        "Evidence in page: \n"
        "The provided webpage content could not be accessed. Please check the URL or file format.\n\n"
        "Summary: \n"
        "The webpage content could not be processed, and therefore, no information is available.\n\n")


def test_local_search_end_to_end(env):
    text = env.search("Kalo Ven")
    assert text == ("A Google search for 'Kalo Ven' found 3 results:\n\n## Web Results\n"
                    "1. [Kalo Ven](https://ex.org/kalo)\nKalo Ven is a painter. Kalo...\n\n"
                    "2. [Tarn Foods](https://ex.org/tarn)\nTarn Foods is a food company.\n\n"
                    "3. [Brell](https://ex.org/brell)\nBrell is a city in the...")
    assert env.search(["Kalo Ven"]) == text   # a bare string is a one-query list


def test_local_search_masks_and_deduplicates(env):
    text = env.search(["Kalo Ven", "Brell"], mask_url="ex.org/kalo")
    first, second = text.split("\n\n=======\n\n")
    assert "ex.org/kalo" not in text
    assert first.startswith("A Google search for 'Kalo Ven' found 2 results:")
    # Brell and Tarn Foods were shown for the first query; Osk is new and numbered 1
    assert second == ("A Google search for 'Brell' found 1 results:\n\n## Web Results\n"
                      "1. [Osk](https://ex.org/osk)\nOsk is a country with 1...")


def test_local_visit_hit_miss_and_join(env):
    goal = "Find the city where Kalo Ven was born"
    text = env.visit(["https://ex.org/kalo", "https://ex.org/none"], goal)
    hit_text, miss_text = text.split("\n\n=======\n\n")
    assert hit_text == (f"The useful information in https://ex.org/kalo for user goal {goal} as follows: \n\n"
                        "Evidence in page: \nKalo Ven is a painter.\nKalo Ven was born in Brell in 1962.\n\n"
                        "Summary: \nKalo Ven was born in Brell in 1962.")
    assert miss_text == visit_miss("https://ex.org/none", goal)
    assert env.visit("https://ex.org/none", goal) == visit_miss("https://ex.org/none", goal)


@pytest.mark.parametrize("bad", [[], [1], None, {"q": 1}])
def test_bad_arguments_raise_value_error(env, bad):
    with pytest.raises(ValueError):
        env.search(bad)
    with pytest.raises(ValueError):
        env.visit(bad, "goal")


def test_settings_change_sizes_only(env):
    small = LocalEnv(env.store, EnvSettings(results_per_query=1, snippet_words=2))
    assert small.search("Brell") == ("A Google search for 'Brell' found 1 results:\n\n## Web Results\n"
                                     "1. [Brell](https://ex.org/brell)\nBrell is...")
    with pytest.raises(TypeError, match="unknown env setting"):
        EnvSettings().updated(results=3)
    with pytest.raises(ValueError, match="positive integer"):
        EnvSettings(snippet_words=0)


def test_the_agent_env_and_eval_code_cites_the_projects_own_protocol():
    """Citations name docs/protocol.md (a user has no PROTOCOL.md outside the repository)."""
    root = Path(__file__).resolve().parents[1]
    files = [*(root / "litere" / "agent").glob("*.py"), *(root / "litere" / "env").glob("*.py"),
             *(root / name for name in ("litere/reward.py", "litere/evaluation.py", "litere/questions.py",
                                        "litere/cli.py", "litere/tokenizer.py", "litere/world/teacher.py",
                                        "rollout.py", "eval.py"))]
    assert len(files) > 15 and not [f.name for f in files if "PROTOCOL.md" in f.read_text()]
