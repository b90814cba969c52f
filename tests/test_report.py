"""The main job's plots and report page (litere/report.py): every plot is a PNG matplotlib reads back, from full,
partial, single-record and missing metrics; the report's markdown links its plots, and its HTML page is one offline
file with the body rendered, the plots inline and hostile trajectory text kept as text."""
import json
import math
import re
from pathlib import Path

import pytest
from matplotlib import image
from matplotlib.figure import Figure

from litere import report
from test_viewer import CHROMIUM, HOSTILE, chromium, make_traj, page_data

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def sft_records(steps: int = 60) -> list[dict]:
    out = []
    for step in range(1, steps + 1):
        record = {"step": step, "loss": 4.0 * math.exp(-step / 20) + 0.5, "lr": 1e-3 * min(1.0, step / 10),
                  "decay_start": 40}
        if step % 10 == 0:
            record.update(eval_loss=record["loss"] + 0.1, eval_copy_loss=record["loss"] / 2 if step > 10 else None)
        out.append(record)
    return out


def rl_records(steps: int = 20) -> list[dict]:
    out = [{"step": 0, "probe": {"world-direct": 0.5, "world-2hop": 0.3, "world-3hop": 0.1}}]
    for step in range(1, steps + 1):
        record = {"step": step, "reward_mean": 0.3 + step / 50, "accuracy": 0.35 + step / 50,
                  "response_tokens_mean": 200.0 + step, "response_tokens_max": 400, "tool_calls_mean": 1.5,
                  "assistant_turns_mean": 2.5, "termination": {"answer": 30, "budget": 2}}
        if step % 5 == 0:
            record["probe"] = {"world-direct": 0.5 + step / 100, "world-2hop": 0.3 + step / 100,
                               "world-3hop": 0.1 + step / 100}
        out.append(record)
    return out


def assert_png(path: Path):
    assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 700  # ~9x4 inches at ~110 dpi
    assert pixels.std() > 0  # something was drawn


PLOTS = {"sft": report.plot_sft, "rl": report.plot_rl, "behaviour": report.plot_rl_behaviour}


def test_each_plot_writes_a_png(tmp_path):
    sft = write_jsonl(tmp_path / "sft.jsonl", sft_records())
    rl = write_jsonl(tmp_path / "rl.jsonl", rl_records())
    for name, metrics in (("sft", sft), ("rl", rl), ("behaviour", rl)):
        out = PLOTS[name](metrics, tmp_path / "plots" / f"{name}.png")
        assert out == tmp_path / "plots" / f"{name}.png"
        assert_png(out)
    out = report.plot_accuracy({"direct": 0.5, "2-hop": 0.3, "3-hop": 0.1, "all": 0.35},
                               {"direct": 0.8, "2-hop": 0.6, "3-hop": 1.0, "all": 0.75}, tmp_path / "acc.png",
                               labels=("before", "after"))
    assert_png(out)


def test_the_sft_plot_shows_the_digits_loss_and_marks_each_decay(tmp_path, monkeypatch):
    records = sft_records()
    for r in records:
        if r["step"] > 50:
            r["decay_start"] = 52  # a rewarm at step 50: the second decay starts at 52
        if "eval_loss" in r:
            r["eval_number_loss"] = r["loss"] * 3
    figures, save = [], report._save
    monkeypatch.setattr(report, "_save", lambda fig, out: figures.append(fig) or save(fig, out))
    assert_png(report.plot_sft(write_jsonl(tmp_path / "sft.jsonl", records), tmp_path / "sft.png"))
    labels = [line.get_label() for line in figures[0].axes[0].get_lines()]
    assert {"lr decay starts (step 40)", "lr decays again (step 52)", "held-out loss, digits"} <= set(labels)


@pytest.mark.parametrize("records", [
    [{"step": 1, "loss": 2.0}],                                       # a single record, one key
    [{"step": 0, "probe": {"world-direct": 0.5}}],                    # RL step 0: only the probe
    [{"step": 1, "lr": 1e-3}, {"step": 2, "eval_loss": None, "reward_mean": None, "probe": None}],
    [{"step": 1, "loss": 0.0, "eval_loss": -1.0, "decay_start": 1}],  # nothing a log scale can show
    [{"step": 1, "accuracy": 1.0, "tool_calls_mean": 2}, {"step": 3, "response_tokens_mean": 10}],
    ['{"step": 1, "loss": 1.5, "lr"', {"no_step": 1}, [1, 2], {"step": "x"}],  # a cut line, odd records
    [],
])
def test_plots_survive_missing_keys_and_short_files(tmp_path, records):
    metrics = write_jsonl(tmp_path / "metrics.jsonl", records)
    for name, plot in PLOTS.items():
        assert_png(plot(metrics, tmp_path / f"{name}.png"))


def test_plots_of_a_missing_file_and_empty_accuracies_say_no_data(tmp_path):
    for name, plot in PLOTS.items():
        assert_png(plot(tmp_path / "absent.jsonl", tmp_path / f"{name}.png"))
    assert_png(report.plot_accuracy({}, {}, tmp_path / "empty.png"))
    assert_png(report.plot_accuracy({"direct": 0.5}, {"direct": float("nan"), "2-hop": 0.2}, tmp_path / "half.png"))


def test_read_metrics_keeps_the_last_record_of_a_step(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"step": 2, "loss": 1.0}, {"step": 1, "loss": 3.0},
                                              {"step": 2, "loss": 2.0}, '{"step": 3, "lo'])
    records = report.read_metrics(path)
    assert [(r["step"], r["loss"]) for r in records] == [(1, 3.0), (2, 2.0)]
    assert report.series(records + [{"step": 4, "loss": None}, {"step": 5, "loss": True}], "loss") == \
        ([1, 2], [3.0, 2.0])
    assert report.read_metrics(tmp_path / "absent.jsonl") == []


def test_moving_average_is_centred():
    assert report.moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 3) == [1.5, 2.0, 3.0, 4.0, 4.5]
    assert report.moving_average([2.0], 5) == [2.0]


def test_question_types():
    assert [report.question_type(s) for s in ("world-direct", "world-2hop", "world-3hop", "direct", "toy")] == \
        ["direct", "2-hop", "3-hop", "direct", "toy"]


def test_markdown_to_html():
    text = ("# Title <b>\n\nA paragraph with `a <code> span` and **bold** text,\ncontinued.\n"
            "## Results\n- one & two\n- `x`\n\n"
            "| kind | held-out |\n|---|---:|\n| direct | 91.1% (180) |\n| <script>alert(1)</script> | **x** |\n"
            "### End\n")
    out = report.markdown_to_html(text)
    assert "<h1>Title &lt;b&gt;</h1>" in out and "<h2>Results</h2>" in out and "<h3>End</h3>" in out
    assert ("<p>A paragraph with <code>a &lt;code&gt; span</code> and <strong>bold</strong> text, continued.</p>"
            in out)
    assert "<ul><li>one &amp; two</li><li><code>x</code></li></ul>" in out
    assert out.count("<table>") == 1 and "<thead><tr><th>kind</th><th" in out
    assert '<td style="text-align: right">91.1% (180)</td>' in out
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in out and "<script" not in out
    assert report.markdown_to_html("**`a`** `b") == "<p><strong><code>a</code></strong> `b</p>"


def test_an_exact_match_reward_is_drawn_once_as_the_accuracy():
    same = [{**r, "accuracy": r["reward_mean"]} if "reward_mean" in r else r for r in rl_records()]
    for records, labels in ((rl_records(), ["mean reward", "accuracy"]), (same, ["mean reward = accuracy"])):
        ax = Figure().add_subplot()
        report._rl_reward_panel(ax, records)
        assert ax.get_legend_handles_labels()[1] == labels


def write_example_report(tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    plots = [report.plot_sft(write_jsonl(tmp_path / "sft.jsonl", sft_records()), tmp_path / "out" / "plots" /
                             "sft.png"),
             report.plot_rl(write_jsonl(tmp_path / "rl.jsonl", rl_records()), tmp_path / "elsewhere" / "rl.png")]
    eval_dir = tmp_path / "eval" / "held_out"
    eval_dir.mkdir(parents=True)
    records = [make_traj(0, hostile=True).to_dict()] + [make_traj(i, correct=i % 2 == 0).to_dict()
                                                        for i in range(1, 4)]
    write_jsonl(eval_dir / "trajectories.jsonl", records)
    body = ("Accuracy by type, greedy:\n\n| kind | after SFT | after RL |\n|---|---:|---:|\n"
            "| direct | 52.0% | 83.0% |\n| 2-hop | 29.0% | 71.0% |\n\n- `runs/demo` holds **everything**\n"
            "- a <script>alert(2)</script> in the body stays text\n")
    md, page = report.write_report(tmp_path / "out", "report", "demo <report>", body,
                                   plots + [tmp_path / "never_drawn.png"], [tmp_path / "eval"])
    return md, page, plots


def test_write_report_writes_markdown_and_one_offline_page(tmp_path):
    md, page, plots = write_example_report(tmp_path)
    assert (md, page) == (tmp_path / "out" / "report.md", tmp_path / "out" / "report.html")
    text = md.read_text()
    assert text.startswith("# demo <report>\n\n") and "| direct | 52.0% | 83.0% |" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["plots/sft.png", "../elsewhere/rl.png"]  # relative to the report; a missing plot left out
    assert all((md.parent / link).resolve() == plot.resolve() for link, plot in zip(links, plots))

    html_text = page.read_text(encoding="utf-8")
    outside = html_text.replace(re.search(r'id="viewer-data">(.*?)</script>', html_text, re.S).group(1), "")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", outside, re.I)  # loads nothing from afar
    assert "http://" not in outside and "https://" not in outside
    assert outside.count('src="data:image/png;base64,') == 2 and "<table>" in outside
    assert "<td style=\"text-align: right\">83.0%</td>" in outside
    assert "<title>demo &lt;report&gt;</title>" in outside
    assert "a &lt;script&gt;alert(2)&lt;/script&gt; in the body" in outside


def test_hostile_trajectory_text_stays_out_of_the_markup(tmp_path):
    _, page, _ = write_example_report(tmp_path)
    html_text = page.read_text(encoding="utf-8")
    assert html_text.count("<script") == 2 and html_text.count("</script") == 2  # the data block, the page's script
    for s in ("<script>alert", "</textarea", "<img src=x", "<!--", "pwned','1')\">"):
        assert s not in html_text, s
    data = page_data(html_text)  # the escaped JSON reads back to exactly the trajectories' text
    assert len(data["records"]) == 4 and data["records"][0]["q"] == make_traj(0, hostile=True).question
    assert HOSTILE["js_url"] in json.dumps(data["records"][0]["turns"])  # present as data, never as an href


def test_report_page_in_a_browser(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium")
    _, page, _ = write_example_report(tmp_path)
    dom = chromium("--dump-dom", url=page.resolve().as_uri() + "#t=0").stdout
    assert re.search(r'<body data-render-ms="\d+"', dom), "the page's script did not run"
    assert dom.count("<tr") == 3 + 1 + 4  # the body's table (header, 2 rows), the list's header and 4 rows
    assert dom.count('src="data:image/png;base64,') == 2
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "javascript:alert(1)" in dom
    assert dom.lower().count("<script") == 2 and "<a " not in dom.lower()
    assert not re.search(r"<(html|body)[^>]*pwned", dom)
