"""The trajectory viewer (litere/viewer.py): every source format loads, the page carries what its filters need,
bad input is named by file and line, and untrusted trajectory text stays text — in the file and in a browser."""
import gzip
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from litere import viewer
from litere.agent.trajectory import ToolCallRecord, Trajectory, write_trajectories

CHROMIUM = "/usr/bin/chromium"
HOSTILE = {
    "script": "<script>alert(1)</script>",
    "close": "</script>",
    "textarea": "</textarea>",
    "img": "<img src=x onerror=alert(1)>",
    "attr": "\"><img src=x onerror=\"document.body.setAttribute('pwned','1')\">",
    "js_url": "javascript:alert(1)",
    "quotes": "'single' \"double\" `back` &amp; &lt;",
    "comment": "<!-- </script><script>document.body.setAttribute('pwned','1')</script>",
    "separators": "line\u2028para\u2029end",
}


def make_traj(i: int, data_source="world-direct", correct=True, hostile=False, policy_version=None) -> Trajectory:
    text = " ".join(HOSTILE.values()) if hostile else ""
    target = f"Answer {i}"
    answer = target if correct else f"Wrong {i}"
    url = HOSTILE["js_url"] if hostile else f"https://w/page-{i}"
    call = json.dumps({"name": "visit", "arguments": {"url": [url], "goal": "Find it " + text}})
    turns = [
        {"role": "assistant", "content": f"I should search {text}.\n</think>\n\n<tool_call>\n{call}\n</tool_call>"},
        {"role": "tool", "content": f"Page {i} says {target}. {text}"},
        {"role": "assistant", "content": f"It says {answer}. {text}\n</think>\n\n<answer>{answer}{text}</answer>"},
    ]
    return Trajectory(
        question_id=f"q{i}", sample_index=0, question=f"What is {i}? {text}", answers=[target + text],
        data_source=(HOSTILE["script"] if hostile else data_source), prompt_ids=[1, 2, 3], response_ids=[4] * 10,
        response_mask=[1] * 6 + [0] * 4, rollout_logprobs=[-0.5] * 6 + [0.0] * 4, turns=turns,
        tool_calls=[ToolCallRecord(turn=1, name="visit", arguments={"url": [url]}, latency_s=0.01, success=True,
                                   error=HOSTILE["img"] if hostile else None, response_tokens=4)],
        num_turns=2, answer=answer + text, termination=HOSTILE["textarea"] if hostile else "answer",
        reward=1.0 if correct else 0.0,
        judge={"method": "exact_match", "correct": correct, "replies": [], "reasoning": "normalised exact match"},
        sampling={"temperature": 1.0, "top_p": 1.0, "seed": i}, policy_version=policy_version)


def page_data(html_text: str) -> dict:
    block = re.search(r'<script type="application/json" id="viewer-data">(.*?)</script>', html_text, re.S).group(1)
    return json.loads(block)


def write_sources(root: Path) -> dict:
    """The three formats: rollout.py --out, an eval run's trajectories.jsonl, an RL run's rollouts/step_N.jsonl.gz."""
    rollout = root / "rollout.jsonl"  # rollout.py: one to_dict() per line
    with rollout.open("w", encoding="utf-8") as f:
        for i in range(3):
            f.write(json.dumps(make_traj(i, correct=i != 1).to_dict(), ensure_ascii=False) + "\n")
    eval_dir = root / "run" / "eval" / "held_out"  # evaluation.write_run writes trajectories.jsonl so
    eval_dir.mkdir(parents=True)
    write_trajectories([make_traj(10 + i, data_source="world-2hop", correct=i == 0) for i in range(2)],
                       eval_dir / "trajectories.jsonl")
    rollouts = root / "run" / "rollouts"  # rl/loop.py _dump: gzip JSON lines, each with its advantage
    rollouts.mkdir()
    for step in (2, 10):
        with gzip.open(rollouts / f"step_{step}.jsonl.gz", "wt", encoding="utf-8") as f:
            for i in range(4):
                record = make_traj(100 * step + i, correct=i % 2 == 0, policy_version=step - 1).to_dict()
                record["advantage"] = 0.5 if i % 2 == 0 else -0.5
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {"rollout": rollout, "eval": eval_dir / "trajectories.jsonl", "rl_dir": root / "run"}


def test_every_source_format_loads(tmp_path):
    paths = write_sources(tmp_path)
    records = viewer.load([paths["rollout"], paths["rl_dir"]])
    sources = [r["_source"] for r in records]
    assert sources == ([str(paths["rollout"])] * 3 + ["run/eval/held_out/trajectories.jsonl"] * 2
                       + ["run/rollouts/step_2.jsonl.gz"] * 4 + ["run/rollouts/step_10.jsonl.gz"] * 4)  # steps in order
    assert [r["_line"] for r in records[:3]] == [1, 2, 3]
    assert [r["_step"] for r in records] == [None] * 5 + [2] * 4 + [10] * 4
    assert [r.get("advantage") for r in records[5:9]] == [0.5, -0.5, 0.5, -0.5]
    assert len(viewer.load([paths["eval"]])) == 2  # a single eval file, and the same file twice counts once
    assert len(viewer.load([paths["rollout"], paths["rollout"]])) == 3


def test_page_carries_what_the_filters_need(tmp_path):
    paths = write_sources(tmp_path)
    out = viewer.write_viewer(viewer.load([paths["rollout"], paths["rl_dir"]]), tmp_path / "v" / "out.html",
                              title="t")
    data = page_data(out.read_text(encoding="utf-8"))
    rows = data["records"]
    assert len(rows) == 13 and len(data["sources"]) == 4
    assert [r["ds"] for r in rows[3:5]] == ["world-2hop"] * 2
    assert [r["ok"] for r in rows[:3]] == [1, 0, 1] and [r["r"] for r in rows[:3]] == [1.0, 0.0, 1.0]
    assert [r["step"] for r in rows] == [None] * 5 + [2] * 4 + [10] * 4  # the file's step, not the policy version
    assert [r["pv"] for r in rows[5:]] == [1] * 4 + [9] * 4
    assert [r["adv"] for r in rows[5:7]] == [0.5, -0.5]
    assert [data["sources"][r["src"]] for r in rows[-1:]] == ["run/rollouts/step_10.jsonl.gz"]
    assert rows[0]["tok"] == [3, 10, 6, 4] and rows[0]["t"] == ["Answer 0"] and rows[0]["a"] == "Answer 0"
    assert "response_ids" not in out.read_text(encoding="utf-8")  # token ids stay out of the page
    # Trajectory objects and a {label: records} mapping are accepted too; a step_N label gives the step
    data = page_data(viewer.write_viewer({"rollouts/step_7.jsonl": [make_traj(0)], "eval": [make_traj(1).to_dict()]},
                                         tmp_path / "m.html").read_text(encoding="utf-8"))
    assert data["sources"] == ["rollouts/step_7.jsonl", "eval"] and [r["step"] for r in data["records"]] == [7, None]


def test_bad_input_names_the_file_and_line(tmp_path, capsys):
    good = json.dumps(make_traj(0).to_dict())
    cases = {"notjson.jsonl": (good + "\nthis is not json\n", r"notjson\.jsonl:2: not a JSON line"),
             "other.jsonl": (good + "\n\n" + json.dumps({"step": 1, "loss": 0.5}) + "\n",
                             r"other\.jsonl:3: not a trajectory record \(lacks question, turns\)"),
             "list.jsonl": ("[1, 2]\n", r"list\.jsonl:1: not a trajectory record \(a JSON list"),
             "turns.jsonl": (json.dumps({"question": "q", "turns": ["hi"]}) + "\n", r"turns\.jsonl:1: .*turns"),
             "fake.jsonl.gz": ("plain text\n", r"fake\.jsonl\.gz:1: cannot be read as gzip")}
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            viewer.load([tmp_path / name])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no trajectories.jsonl"):
        viewer.load([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        viewer.load([tmp_path / "missing.jsonl"])
    with pytest.raises(SystemExit) as e:  # the command line says it in one line, exit status 2
        viewer.main([str(tmp_path / "other.jsonl"), "-o", str(tmp_path / "x.html")])
    assert e.value.code == 2 and "other.jsonl:3: not a trajectory record" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_odd_values_still_make_a_valid_page(tmp_path):
    record = make_traj(0).to_dict() | {"reward": float("nan"), "answer": {"not": "text"}, "data_source": 3,
                                       "question": "lone \ud800 surrogate", "judge": None, "advantage": float("inf")}
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(record) + "\n")  # json writes NaN / Infinity; json.loads reads them back
    text = viewer.write_viewer(viewer.load([path]), tmp_path / "odd.html").read_text(encoding="utf-8")
    row = page_data(text)["records"][0]
    assert row["r"] is None and row["ok"] is None and row["adv"] is None and row["ds"] == "3"
    assert row["a"] == '{"not": "text"}' and row["q"] == "lone \ud800 surrogate"


def test_command_line_writes_one_offline_page(tmp_path, capsys):
    paths = write_sources(tmp_path)
    viewer.main([str(paths["rl_dir"]), str(paths["rollout"]), "-o", str(tmp_path / "out.html")])
    assert "13 trajectories from 4 file(s)" in capsys.readouterr().out
    text = (tmp_path / "out.html").read_text(encoding="utf-8")
    outside = text.replace(re.search(r'id="viewer-data">(.*?)</script>', text, re.S).group(1), "")
    assert not re.search(r"\b(src|href)\s*=", outside, re.I)  # the page loads nothing and links nowhere
    assert "default-src 'none'" in outside and "http" not in outside.replace('http-equiv', '')


def hostile_page(tmp_path, n_plain=0) -> tuple[Path, list[dict]]:
    records = [make_traj(0, hostile=True).to_dict()] + [make_traj(i + 1).to_dict() for i in range(n_plain)]
    out = viewer.write_viewer({HOSTILE["attr"]: records}, tmp_path / "hostile.html", title=HOSTILE["script"],
                              extra_html="<p id='extra-marker'>plots {data} {script}</p>")
    return out, records


def test_hostile_text_cannot_escape_the_data_block(tmp_path):
    out, records = hostile_page(tmp_path)
    text = out.read_text(encoding="utf-8")
    assert text.count("<script") == 2 and text.count("</script") == 2  # the data block and the page's script
    for s in ("<script>alert", "</textarea", "<img", "<!--", "\u2028", "\u2029", "pwned','1')\">"):
        assert s not in text, s
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in text  # the JSON-escaped form
    assert "<title>&lt;script&gt;alert(1)&lt;/script&gt;</title>" in text
    assert "<p id='extra-marker'>plots {data} {script}</p>" in text  # trusted extra HTML as given, not re-read
    data = page_data(text)  # and the escaped JSON reads back to exactly the record's text
    assert data["sources"] == [HOSTILE["attr"]]
    assert data["records"][0]["q"] == records[0]["question"] and data["records"][0]["ds"] == HOSTILE["script"]
    assert [t[1] for t in data["records"][0]["turns"]] == [t["content"] for t in records[0]["turns"]]
    assert viewer.script_json("</script>\u2028&") == '"\\u003c/script\\u003e\\u2028\\u0026"'


def chromium(*args, url: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="litere-viewer-chromium-")
    try:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               "--no-first-run", f"--user-data-dir={profile}", *args, url],
                              capture_output=True, text=True, timeout=120, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_hostile_text_shows_as_text_in_a_browser(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    out, _ = hostile_page(tmp_path, n_plain=150)
    dom = chromium("--dump-dom", url=out.resolve().as_uri() + "#t=0").stdout  # #t=0 opens the hostile trajectory
    assert re.search(r'<body data-render-ms="\d+"', dom), "the page's script did not run (CSP hash?)"
    assert dom.count("<tr") == 1 + 100  # the header and one page of rows: the list is paginated
    assert dom.count('class="turn assistant"') == 2  # turns only of the opened trajectory
    # the hostile strings are on the page as text (serialised escaped), and none became an element
    for s in ("&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;/textarea&gt;", "&lt;img src=x onerror=alert(1)&gt;",
              "javascript:alert(1)", "'single' \"double\" `back` &amp;amp; &amp;lt;",
              "&lt;!-- &lt;/script&gt;&lt;script&gt;document.body.setAttribute('pwned','1')&lt;/script&gt;"):
        assert s in dom, s
    assert dom.lower().count("<script") == 2 and "<img" not in dom.lower() and "<a " not in dom.lower()
    assert not re.search(r"<(html|body)[^>]*pwned", dom)  # no injected handler or script ran
    assert "id=\"extra-marker\"" in dom


def test_filters_work_in_a_browser(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    types = ["world-direct", "world-2hop"]
    groups = {f"run/rollouts/step_{step}.jsonl.gz": [make_traj(10 * step + i, data_source=types[i % 2],
                                                               correct=i % 3 == 0) for i in range(12)]
              for step in (1, 2)}
    out = viewer.write_viewer(groups, tmp_path / "f.html")
    url = out.resolve().as_uri()
    # step 2, 2-hop (i = 1, 3, 5, 7, 9, 11), incorrect (i % 3 != 0): i = 1, 5, 7, 11
    dom = chromium("--dump-dom", url=url + "#outcome=incorrect&type=world-2hop&step=2&t=13").stdout
    assert dom.count("<tr") == 1 + 4 and "4 shown" in dom and "What is 21?" in dom  # record 13 is opened
    assert 'class="sel"' in dom
    dom = chromium("--dump-dom", url=url + "#q=what%20is%2015%3F").stdout  # the text search
    assert dom.count("<tr") == 1 + 1 and "1 shown" in dom


def test_ten_thousand_trajectories_open(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    base = make_traj(0).to_dict()
    out = viewer.write_viewer([{**base, "question_id": f"q{i}"} for i in range(10_000)], tmp_path / "big.html")
    dom = chromium("--dump-dom", url=out.resolve().as_uri()).stdout
    assert re.search(r'<body data-render-ms="\d+"', dom) and dom.count("<tr") == 101
    assert "page 1 / 100" in dom
