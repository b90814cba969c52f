"""A trajectory viewer: one self-contained static HTML file to browse trajectories in (no network, no server).

    python -m litere.viewer DIR_OR_FILE... -o out.html [--title TITLE]

Files are JSON lines of trajectory records (docs/protocol.md section 8), optionally gzip-compressed: rollout.py's
--out, an eval run's trajectories.jsonl, the RL stage's rollouts/step_N.jsonl.gz (with "advantage"). A directory is
searched for trajectories.jsonl and rollouts/step_*.jsonl[.gz]. The page lists every trajectory as a compact row,
filtered by outcome, question type (data_source), RL step (from a step_N file name, else the policy version),
termination, source file and a text search; a trajectory's turns (thinking, tool call, tool response, answer) are
rendered only when it is opened.

Trajectory text is untrusted model output. It travels as JSON in a `<script type="application/json">` block whose
`<`, `>`, `&`, U+2028 and U+2029 are \\u-escaped (so it cannot close its tag), and the page's script puts it into
the document with textContent only: no data ever becomes markup, an attribute that loads something, or a link. A
Content-Security-Policy lets only the page's own script run (by its hash) and loads nothing from the network.

Size: token ids are left out, so a page is about the size of the records' text: 10,000 trajectories of ~7 turns and
~2.9 KB of text each make a 37.6 MB page (5.9 MB gzipped) that Chromium shows ready 1.2-1.8 s after opening it (2
cores). `write_viewer` is the function other code calls, with `extra_html` (trusted: plots as data: URIs, tables)
shown above the list; scripts in it do not run.
"""
from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import html
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

TOKEN_LISTS = ("prompt_ids", "response_ids", "response_mask", "rollout_logprobs")  # not shown; counts are
STEP_RE = re.compile(r"step_(\d+)\.jsonl(?:\.gz)?$")
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_JSON_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")
_PLACEHOLDER_RE = re.compile(r"\{(csp_hash|title|style|script|extra)\}")


# ----------------------------------------------------------------------------------------------- reading records
def find_files(inputs: Iterable) -> list[tuple[Path, str]]:
    """(path, label) of every trajectory file named or found under a named directory, each once, in order."""
    out, seen = [], set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.rglob("trajectories.jsonl")) + sorted(path.rglob("trajectories.jsonl.gz"))
            rollouts = [p for p in path.rglob("step_*.jsonl*")
                        if p.parent.name == "rollouts" and STEP_RE.search(p.name)]
            found += sorted(rollouts, key=lambda p: (p.parent, int(STEP_RE.search(p.name).group(1))))
            if not found:
                raise ValueError(f"{path}: no trajectories.jsonl or rollouts/step_*.jsonl.gz under this directory")
            pairs = [(p, f"{path.resolve().name}/{p.relative_to(path).as_posix()}") for p in found]
        elif path.is_file():
            pairs = [(path, str(item))]
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
        for p, label in pairs:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                out.append((p, label))
    return out


def _problem(record) -> str | None:
    """Why a parsed JSON line is not a trajectory record, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    missing = [k for k in ("question", "turns") if k not in record]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not isinstance(record["question"], str):
        return '"question" is not a string'
    turns = record["turns"]
    if not isinstance(turns, list) or not all(isinstance(t, dict) and isinstance(t.get("role"), str)
                                              and isinstance(t.get("content"), str) for t in turns):
        return '"turns" is not a list of {"role", "content"} objects'
    return None


def read_records(path) -> list[tuple[int, dict]]:
    """(line number, record) of a JSON lines file (.gz: gzip-compressed); a ValueError names the file and line of
    anything that is not a trajectory record."""
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    out, line_no = [], 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{line_no}: not a JSON line ({e.msg} at column {e.colno}); expected "
                                     "one trajectory record per line") from None
                problem = _problem(record)
                if problem:
                    raise ValueError(f"{path}:{line_no}: not a trajectory record ({problem})")
                out.append((line_no, record))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, OSError) as e:
        if isinstance(e, OSError) and not isinstance(e, gzip.BadGzipFile) and not path.exists():
            raise
        kind = "gzip-compressed UTF-8 JSON lines" if opener is gzip.open else "UTF-8 JSON lines"
        raise ValueError(f"{path}:{line_no + 1}: cannot be read as {kind} ({e})") from None
    return out


def load(inputs: Iterable) -> list[dict]:
    """Every record of the named files and directories, each with `_source` (its file's label), `_line` and
    `_step` (N of a step_N file name, else None) added, and its token-id lists replaced by `token_counts`."""
    records = []
    for path, label in find_files(inputs):
        match = STEP_RE.search(path.name)
        for line_no, record in read_records(path):
            record["token_counts"] = _token_counts(record)
            for key in TOKEN_LISTS:
                record.pop(key, None)
            records.append({**record, "_source": label, "_line": line_no,
                            "_step": int(match.group(1)) if match else None})
    return records


# ----------------------------------------------------------------------------------------------- page data
def _num(x):
    """A finite number, or None (JSON has no NaN, and a malformed record's field may be anything)."""
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _round(x, digits):
    x = _num(x)
    return None if x is None else round(x, digits)


def _int(x):
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def _str(x):
    if x is None or isinstance(x, str):
        return x
    return json.dumps(x, ensure_ascii=False, default=str)


def _token_counts(d: dict) -> dict:
    if isinstance(d.get("token_counts"), dict):
        return d["token_counts"]
    if isinstance(d.get("response_mask"), list):
        sampled = sum(1 for m in d["response_mask"] if m)
        return {"prompt": len(d.get("prompt_ids") or []), "response": len(d["response_mask"]),
                "sampled": sampled, "forced": len(d["response_mask"]) - sampled}
    return {}


def _compact(d: dict, source: int) -> dict:
    """The fields the page shows, with plain types; token ids are dropped."""
    counts = _token_counts(d)
    judge = d.get("judge") if isinstance(d.get("judge"), dict) else {}
    reward = _num(d.get("reward"))
    ok = judge.get("correct") if isinstance(judge.get("correct"), bool) else None
    if ok is None and reward is not None:
        ok = reward > 0
    step = _int(d.get("_step"))
    if step is None:
        step = _int(d.get("policy_version"))
    answers = d.get("answers")
    answers = [_str(a) for a in answers] if isinstance(answers, list) else ([] if answers is None else [_str(answers)])
    calls = [[_int(c.get("turn")), _str(c.get("name")), _round(c.get("latency_s"), 4),
              c.get("success") if isinstance(c.get("success"), bool) else None, _str(c.get("error")),
              _int(c.get("response_tokens"))]  # the arguments are in the turn's text
             for c in d.get("tool_calls") or [] if isinstance(c, dict)]
    sampling = d.get("sampling") if isinstance(d.get("sampling"), dict) else {}
    return {
        "qid": _str(d.get("question_id")), "si": _int(d.get("sample_index")), "q": d["question"], "t": answers,
        "ds": _str(d.get("data_source")), "a": _str(d.get("answer")), "r": reward,
        "ok": None if ok is None else int(ok),
        "adv": _round(d.get("advantage"), 6), "term": _str(d.get("termination")), "err": _str(d.get("error")),
        "step": step, "pv": _int(d.get("policy_version")), "src": source, "line": _int(d.get("_line")),
        "n": _int(d.get("num_turns")), "s": _round(d.get("elapsed_s"), 3),
        "tok": [_int(counts.get(k)) for k in ("prompt", "response", "sampled", "forced")],
        "judge": {k: _str(judge.get(k)) for k in ("method", "reasoning", "error") if judge.get(k) is not None}
        | ({"replies": _str(judge["replies"])} if judge.get("replies") else {}),
        "samp": ", ".join(f"{k} {v}" for k, v in sampling.items() if _num(v) is not None or isinstance(v, str)),
        "turns": [[t["role"], t["content"]] for t in d["turns"]],
        "calls": calls,
    }


def _records(trajectories_or_records) -> tuple[list[dict], list[str]]:
    """Compact page records and source labels from Trajectory objects or record dicts, or a mapping of source
    label -> either."""
    groups = (trajectories_or_records.items() if isinstance(trajectories_or_records, Mapping)
              else [(None, trajectories_or_records)])
    sources, out = [], []
    for label, items in groups:
        for item in items:
            d = item.to_dict() if hasattr(item, "to_dict") else item
            problem = _problem(d)
            if problem:
                where = f"record {len(out)}" + (f" of {label!r}" if label else "")
                raise ValueError(f"{where} is not a trajectory ({problem})")
            source = str(label if label is not None else d.get("_source", "(records)"))
            if "_step" not in d and (m := STEP_RE.search(source)):
                d = {**d, "_step": int(m.group(1))}
            if source not in sources:
                sources.append(source)
            out.append(_compact(d, sources.index(source)))
    return out, sources


def script_json(obj) -> str:
    """JSON that is safe inside a <script> element: it cannot close the element or start a comment."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _JSON_ESCAPE_RE.sub(lambda m: _JSON_ESCAPES[m.group(0)], text)


def write_viewer(trajectories_or_records, out_path, title: str = "Trajectories", extra_html: str = "") -> Path:
    """Write the viewer page for `trajectories_or_records`: Trajectory objects, record dicts (as `load` returns
    them, or plain), or a mapping {source label: those}. `extra_html` is trusted markup placed above the list
    (plots as data: URIs, tables); it may not load anything from the network or run scripts. Returns the path."""
    records, sources = _records(trajectories_or_records)
    data = script_json({"records": records, "sources": sources})
    values = {"csp_hash": base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode(),
              "title": html.escape(title), "style": STYLE, "script": SCRIPT,
              "extra": f'<section id="extra">{extra_html}</section>' if extra_html else ""}
    # one pass over the template's own text, so nothing inserted is read again as a placeholder
    head, tail = (_PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], part) for part in TEMPLATE.split("{data}"))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", errors="backslashreplace") as f:  # a lone surrogate stays a \\u escape
        f.write(head)
        f.write(data)
        f.write(tail)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m litere.viewer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="DIR_OR_FILE", help="trajectory files or run directories")
    parser.add_argument("-o", "--out", required=True, help="the HTML file to write")
    parser.add_argument("--title", help="page title (default: the inputs)")
    args = parser.parse_args(argv)
    try:
        records = load(args.inputs)
        out = write_viewer(records, args.out, title=args.title or " ".join(args.inputs))
    except (OSError, ValueError) as e:
        print(f"litere.viewer: {e}", file=sys.stderr)
        sys.exit(2)
    files = len({r["_source"] for r in records})
    print(f"{len(records)} trajectories from {files} file(s) -> {out} ({out.stat().st_size / 1e6:.1f} MB)")


# ----------------------------------------------------------------------------------------------- the page
TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'sha256-{csp_hash}'; \
style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header><h1>{title}</h1><div id="summary"></div></header>
{extra}
<section id="viewer">
<div id="filters">
<label>outcome <select id="f-outcome"></select></label>
<label>type <select id="f-ds"></select></label>
<label>step <select id="f-step"></select></label>
<label>termination <select id="f-term"></select></label>
<label>source <select id="f-src"></select></label>
<label>search <input id="f-text" type="search" placeholder="question, answer, target, id"></label>
<span id="stats"></span>
</div>
<div id="panes">
<div id="list">
<table><thead><tr><th></th><th>step</th><th>type</th><th>question</th><th>answer</th><th>target</th>\
<th title="tool calls">calls</th><th title="response tokens">tokens</th><th>end</th></tr></thead>
<tbody id="rows"></tbody></table>
<div id="pager"><button id="prev" type="button">&lsaquo; prev</button> <span id="page"></span> \
<button id="next" type="button">next &rsaquo;</button></div>
</div>
<div id="detail"><p class="hint">Select a trajectory (click a row; j / k or the arrow keys move).</p></div>
</div>
</section>
<noscript><p>This page needs JavaScript to show the trajectories.</p></noscript>
<script type="application/json" id="viewer-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""

STYLE = """
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
  background: #f5f6f8; }
header { padding: 10px 16px; background: #1d2330; color: #fff; }
header h1 { margin: 0; font-size: 18px; font-weight: 600; }
#summary { font-size: 13px; color: #c9cfdb; margin-top: 2px; }
#extra { padding: 8px 16px; background: #fff; border-bottom: 1px solid #dde1e8; overflow-x: auto; }
#extra img { max-width: 100%; }
#viewer { height: 100vh; display: flex; flex-direction: column; }
#filters { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; padding: 8px 16px;
  background: #fff; border-bottom: 1px solid #dde1e8; }
#filters label { font-size: 12px; color: #5a6275; }
#filters select, #filters input { font: inherit; font-size: 13px; max-width: 220px; }
#filters input { width: 220px; }
#stats { font-size: 12px; color: #5a6275; margin-left: auto; }
#panes { flex: 1; min-height: 0; display: grid; grid-template-columns: minmax(480px, 50%) 1fr; }
#list, #detail { min-height: 0; overflow: auto; }
#list { border-right: 1px solid #dde1e8; background: #fff; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; font-size: 12.5px; }
th { position: sticky; top: 0; background: #eef0f4; text-align: left; font-weight: 600; padding: 4px 6px;
  color: #5a6275; }
th:nth-child(1) { width: 24px; } th:nth-child(2) { width: 40px; } th:nth-child(3) { width: 88px; }
th:nth-child(5), th:nth-child(6) { width: 13%; } th:nth-child(7) { width: 42px; } th:nth-child(8) { width: 54px; }
th:nth-child(9) { width: 64px; }
td:first-child, th:first-child { padding: 3px 2px 3px 8px; text-overflow: clip; }
td { padding: 3px 6px; border-top: 1px solid #eef0f4; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
tbody tr { cursor: pointer; }
tbody tr:hover { background: #f0f4ff; }
tbody tr.sel { background: #dfe8ff; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #137333; font-weight: 700; } .bad { color: #b3261e; font-weight: 700; } .none { color: #8a90a0; }
#pager { padding: 8px; text-align: center; font-size: 13px; color: #5a6275; }
#pager button { font: inherit; }
#detail { padding: 12px 18px 40px; }
.hint { color: #8a90a0; }
.nav { float: right; }
.nav button { font: inherit; font-size: 12px; }
#detail h2 { font-size: 16px; margin: 0 0 8px; white-space: pre-wrap; overflow-wrap: anywhere; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0 0 12px;
  font-size: 12.5px; background: #fff; padding: 8px 10px; border: 1px solid #dde1e8; border-radius: 6px; }
dl.meta dt { color: #5a6275; } dl.meta dd { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.turn { margin: 8px 0; border-radius: 6px; border: 1px solid #dde1e8; background: #fff; }
.turn > .who { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; color: #5a6275;
  padding: 4px 10px; border-bottom: 1px solid #eef0f4; }
.part { padding: 6px 10px; }
.part .label { font-size: 11px; color: #5a6275; font-weight: 600; }
pre { margin: 2px 0 0; white-space: pre-wrap; overflow-wrap: anywhere; font: 12.5px/1.45 ui-monospace,
  SFMono-Regular, Menlo, Consolas, monospace; }
.thinking pre { color: #3c4356; font-style: italic; }
.call { background: #eef4ff; }
.call .meta { font-size: 11.5px; color: #5a6275; }
.answer { background: #eaf6ec; } .answer.wrong { background: #fcecea; }
.text { background: #fff8e6; }
details.tool { background: #fbfaf6; }
details.tool > summary { cursor: pointer; padding: 4px 10px; font-size: 12px; color: #5a6275; }
details.tool > pre { padding: 4px 10px 8px; max-height: 480px; overflow: auto; }
.turn.user { background: #fff8e6; }
.tools { margin: 6px 0; font-size: 12px; }
.tools button { font: inherit; }
@media (max-width: 900px) { #viewer { height: auto; } #panes { grid-template-columns: 1fr; } }
"""

SCRIPT = """
"use strict";
(function () {
  var started = performance.now();
  var DATA = JSON.parse(document.getElementById("viewer-data").textContent);
  var R = DATA.records, SOURCES = DATA.sources, PAGE = 100;
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, cls, text) {  // text is always a text node: data never becomes markup
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.appendChild(document.createTextNode(String(text)));
    return e;
  }
  function num(x) { return x === null || x === undefined ? "\\u2013" : x.toLocaleString(); }
  function pct(a, b) { return b ? (100 * a / b).toFixed(1) + "%" : "\\u2013"; }
  function outcome(r) { return r.ok === 1 ? "correct" : r.ok === 0 ? "incorrect" : "unscored"; }

  // filter dimensions: a key per record; options list the keys with their counts
  var DIMS = {
    outcome: { key: outcome, order: function (a, b) { return ["correct", "incorrect", "unscored"].indexOf(a)
      - ["correct", "incorrect", "unscored"].indexOf(b); } },
    ds: { key: function (r) { return r.ds === null ? "(none)" : r.ds; } },
    step: { key: function (r) { return r.step === null ? "(none)" : String(r.step); },
      order: function (a, b) { return (a === "(none)") - (b === "(none)") || Number(a) - Number(b); } },
    term: { key: function (r) { return r.term === null ? "(none)" : r.term; } },
    src: { key: function (r) { return SOURCES[r.src]; }, order: function (a, b) { return SOURCES.indexOf(a)
      - SOURCES.indexOf(b); } }
  };
  var keys = {}, state = { text: "", page: 0, sel: -1 }, shown = [];
  Object.keys(DIMS).forEach(function (dim) {
    var counts = new Map(), per = new Array(R.length);
    for (var i = 0; i < R.length; i++) {
      var k = DIMS[dim].key(R[i]);
      per[i] = k;
      counts.set(k, (counts.get(k) || 0) + 1);
    }
    var byName = function (a, b) { return a < b ? -1 : a > b ? 1 : 0; };
    var values = Array.from(counts.keys()).sort(DIMS[dim].order || byName);
    var select = $("f-" + dim);
    select.appendChild(el("option", null, "all (" + R.length.toLocaleString() + ")")).value = "";
    values.forEach(function (v, j) {
      select.appendChild(el("option", null, v + " (" + counts.get(v).toLocaleString() + ")")).value = String(j);
    });
    keys[dim] = { per: per, values: values };
    state[dim] = "";
    select.addEventListener("change", function () { state[dim] = select.value; state.page = 0; applyFilters(); });
  });

  function applyFilters() {
    var want = {}, text = state.text.toLowerCase();
    Object.keys(DIMS).forEach(function (dim) {
      if (state[dim] !== "") want[dim] = keys[dim].values[Number(state[dim])];
    });
    shown = [];
    for (var i = 0; i < R.length; i++) {
      var pass = true;
      for (var dim in want) { if (keys[dim].per[i] !== want[dim]) { pass = false; break; } }
      if (pass && text) {
        var r = R[i], hay = [r.q, r.a || "", r.t.join(" "), r.qid || ""].join(" ").toLowerCase();
        pass = hay.indexOf(text) >= 0;
      }
      if (pass) shown.push(i);
    }
    renderList();
    writeHash();
  }

  // the location's #fragment holds the filters and the open trajectory: #outcome=incorrect&type=world-2hop&t=12
  var HASH = { outcome: "outcome", ds: "type", step: "step", term: "end", src: "source" };
  function readHash() {
    var p = new URLSearchParams(location.hash.slice(1));
    Object.keys(HASH).forEach(function (dim) {
      var j = keys[dim].values.indexOf(p.get(HASH[dim]));
      if (j >= 0) { state[dim] = String(j); $("f-" + dim).value = String(j); }
    });
    if (p.get("q")) { state.text = p.get("q"); $("f-text").value = state.text; }
    var t = p.get("t");
    return t !== null && /^[0-9]+$/.test(t) && Number(t) < R.length ? Number(t) : -1;
  }
  function writeHash() {
    var p = new URLSearchParams();
    Object.keys(HASH).forEach(function (dim) {
      if (state[dim] !== "") p.set(HASH[dim], keys[dim].values[Number(state[dim])]);
    });
    if (state.text) p.set("q", state.text);
    if (state.sel >= 0) p.set("t", String(state.sel));
    try { history.replaceState(null, "", "#" + p.toString()); } catch (e) { /* file: URLs may refuse */ }
  }

  function renderStats() {
    var scored = 0, correct = 0, byType = new Map();
    shown.forEach(function (i) {
      var r = R[i];
      if (r.ok === null) return;
      scored++; correct += r.ok;
      var t = byType.get(keys.ds.per[i]) || [0, 0]; t[0] += r.ok; t[1]++; byType.set(keys.ds.per[i], t);
    });
    var parts = [shown.length.toLocaleString() + " shown", "correct " + pct(correct, scored) + " of " +
      scored.toLocaleString() + " scored"];
    if (byType.size > 1) byType.forEach(function (t, k) { parts.push(k + " " + pct(t[0], t[1]) + " (" + t[1] + ")"); });
    $("stats").textContent = parts.join(" \\u00b7 ");
  }

  function cell(tr, text, cls, title) {
    var td = tr.appendChild(el("td", cls || null, text));
    if (title !== undefined) td.title = String(title);  // a property, not markup
    return td;
  }

  function renderList() {
    var tbody = $("rows"), pages = Math.max(1, Math.ceil(shown.length / PAGE));
    state.page = Math.max(0, Math.min(state.page, pages - 1));
    tbody.textContent = "";
    var frag = document.createDocumentFragment(), start = state.page * PAGE;
    for (var k = start; k < Math.min(shown.length, start + PAGE); k++) {
      var i = shown[k], r = R[i], tr = el("tr", i === state.sel ? "sel" : null);
      tr.dataset.i = String(i);
      cell(tr, r.ok === 1 ? "\\u2713" : r.ok === 0 ? "\\u2717" : "\\u2013",
        r.ok === 1 ? "ok" : r.ok === 0 ? "bad" : "none", outcome(r) + (r.r === null ? "" : ", reward " + r.r));
      cell(tr, r.step === null ? "\\u2013" : r.step, "num");
      cell(tr, r.ds === null ? "\\u2013" : r.ds, null, r.ds);
      cell(tr, r.q, null, r.q);
      cell(tr, r.a === null ? "\\u2013" : r.a, null, r.a === null ? "no answer" : r.a);
      cell(tr, r.t.join(" | "), null, r.t.join(" | "));
      cell(tr, r.calls.length, "num");
      cell(tr, num(r.tok[1]), "num", "prompt " + num(r.tok[0]) + ", response " + num(r.tok[1]) + " (sampled " +
        num(r.tok[2]) + ", forced " + num(r.tok[3]) + ")");
      cell(tr, r.term === null ? "\\u2013" : r.term, null, r.term);
      frag.appendChild(tr);
    }
    tbody.appendChild(frag);
    $("page").textContent = "page " + (state.page + 1) + " / " + pages + "  (" + shown.length.toLocaleString() +
      " of " + R.length.toLocaleString() + ")";
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    renderStats();
  }

  function meta(dl, name, value) {
    if (value === null || value === undefined || value === "") return;
    dl.appendChild(el("dt", null, name));
    dl.appendChild(el("dd", null, value));
  }

  function part(parent, cls, label, text) {
    var div = parent.appendChild(el("div", "part " + cls));
    div.appendChild(el("div", "label", label));
    div.appendChild(el("pre", null, text));
    return div;
  }

  var TAG_RE = /<tool_call>([\\s\\S]*?)(?:<\\/tool_call>|$)|<answer>([\\s\\S]*?)(?:<\\/answer>|$)/g;

  function assistantTurn(box, content, call, r) {  // thinking, then tool call / answer / other text, in order
    var rest = content, end = content.indexOf("</think>");
    if (end >= 0) {
      var thinking = content.slice(0, end).replace(/^\\s*<think>/, "").trim();
      if (thinking) part(box, "thinking", "thinking", thinking);
      rest = content.slice(end + 8);
    }
    var last = 0, m, other = function (s) {
      s = s.trim();
      if (s) part(box, "text", end >= 0 ? "text" : "text (no </think>)", s);
    };
    TAG_RE.lastIndex = 0;
    while ((m = TAG_RE.exec(rest)) !== null) {
      other(rest.slice(last, m.index));
      last = TAG_RE.lastIndex;
      if (m[1] !== undefined) {
        var body = m[1].trim();
        try {  // name and compact arguments; as written when it is not JSON
          var obj = JSON.parse(body);
          body = obj && typeof obj.name === "string" && "arguments" in obj
            ? obj.name + " " + JSON.stringify(obj.arguments) : JSON.stringify(obj);
        } catch (e) { /* shown as written */ }
        var div = part(box, "call", "tool call", body);
        if (call) {
          var bits = [call[1], call[3] === true ? "ok" : call[3] === false ? "failed" : null,
            call[2] === null ? null : call[2].toFixed(3) + " s", call[5] === null ? null : call[5] + " response tokens",
            call[4]];
          bits = bits.filter(function (b) { return b !== null && b !== undefined; });
          div.appendChild(el("div", "meta", bits.join(" \\u00b7 ")));
          call = null;
        }
      } else {
        part(box, r.ok === 0 ? "answer wrong" : "answer", "answer", m[2].trim());
      }
      if (m[0].length === 0) TAG_RE.lastIndex++;
    }
    other(rest.slice(last));
  }

  function renderDetail(i) {
    var d = $("detail"), r = R[i];
    state.sel = i;
    d.textContent = "";
    var nav = d.appendChild(el("div", "nav"));
    [["\\u2190 prev", -1], ["next \\u2192", 1]].forEach(function (b) {
      var button = nav.appendChild(el("button", null, b[0]));
      button.type = "button";
      button.addEventListener("click", function () { move(b[1]); });
    });
    d.appendChild(el("h2", null, r.q));
    var dl = d.appendChild(el("dl", "meta"));
    meta(dl, "outcome", outcome(r) + (r.r === null ? "" : "  (reward " + r.r + ")"));
    meta(dl, "answer", r.a === null ? "(none)" : r.a);
    meta(dl, "target", r.t.join(" | "));
    meta(dl, "advantage", r.adv === null ? null : r.adv.toFixed(4));
    meta(dl, "type", r.ds);
    meta(dl, "step", r.step);
    meta(dl, "policy version", r.pv);
    meta(dl, "termination", r.term);
    meta(dl, "error", r.err);
    meta(dl, "turns", (r.n === null ? "?" : r.n) + " assistant, " + r.turns.length + " in all; " + r.calls.length +
      " tool calls");
    meta(dl, "tokens", "prompt " + num(r.tok[0]) + ", response " + num(r.tok[1]) + " (sampled " + num(r.tok[2]) +
      ", forced " + num(r.tok[3]) + ")");
    meta(dl, "time", r.s === null ? null : r.s.toFixed(2) + " s");
    Object.keys(r.judge).forEach(function (k) { meta(dl, "judge " + k, r.judge[k]); });
    meta(dl, "sampling", r.samp);
    meta(dl, "question id", (r.qid === null ? "?" : r.qid) + (r.si === null ? "" : ", sample " + r.si));
    meta(dl, "source", SOURCES[r.src] + (r.line === null ? "" : ":" + r.line));

    var tools = d.appendChild(el("div", "tools"));
    [["expand all tool responses", true], ["collapse all", false]].forEach(function (b) {
      var button = tools.appendChild(el("button", null, b[0]));
      button.type = "button";
      button.addEventListener("click", function () {
        d.querySelectorAll("details.tool").forEach(function (x) { x.open = b[1]; });
      });
    });
    var byTurn = new Map();  // a call: [turn, name, latency_s, success, error, response tokens]
    r.calls.forEach(function (c) { if (!byTurn.has(c[0])) byTurn.set(c[0], c); });
    var assistant = 0;
    r.turns.forEach(function (t) {
      var role = t[0], content = t[1];
      if (role === "assistant") {
        assistant++;
        var box = d.appendChild(el("div", "turn assistant"));
        box.appendChild(el("div", "who", "assistant turn " + assistant));
        assistantTurn(box, content, byTurn.get(assistant), r);
      } else if (role === "tool") {
        var det = d.appendChild(el("details", "turn tool"));
        det.appendChild(el("summary", null, "tool response to turn " + assistant + " \\u00b7 " +
          content.length.toLocaleString() + " characters"));
        det.appendChild(el("pre", null, content));
      } else {
        var u = d.appendChild(el("div", "turn user"));
        u.appendChild(el("div", "who", role));
        part(u, "text", "", content);
      }
    });
    d.scrollTop = 0;
    document.querySelectorAll("#rows tr.sel").forEach(function (x) { x.className = ""; });
    var row = document.querySelector('#rows tr[data-i="' + i + '"]');  // i is a number
    if (row) row.className = "sel";
    writeHash();
  }

  function move(delta) {
    var k = shown.indexOf(state.sel) + delta;
    if (k < 0 || k >= shown.length) return;
    var page = Math.floor(k / PAGE);
    if (page !== state.page) { state.page = page; renderList(); }
    renderDetail(shown[k]);
  }

  $("rows").addEventListener("click", function (e) {
    var tr = e.target.closest("tr");
    if (tr && tr.dataset.i !== undefined) renderDetail(Number(tr.dataset.i));
  });
  $("prev").addEventListener("click", function () { state.page--; renderList(); });
  $("next").addEventListener("click", function () { state.page++; renderList(); });
  var timer = null;
  $("f-text").addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () { state.text = $("f-text").value; state.page = 0; applyFilters(); }, 150);
  });
  document.addEventListener("keydown", function (e) {
    var tag = e.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "j" || e.key === "ArrowDown") { move(1); e.preventDefault(); }
    if (e.key === "k" || e.key === "ArrowUp") { move(-1); e.preventDefault(); }
  });

  var sources = SOURCES.length === 1 ? "1 file" : SOURCES.length + " files";
  $("summary").textContent = R.length.toLocaleString() + " trajectories from " + sources;
  var open = readHash();
  applyFilters();
  if (open >= 0) {
    var k = shown.indexOf(open);
    if (k >= 0) { state.page = Math.floor(k / PAGE); renderList(); }
    renderDetail(open);
  }
  // load timing, for whoever measures: parse + first render, and since the navigation started
  document.body.dataset.renderMs = String(Math.round(performance.now() - started));
  document.body.dataset.readyMs = String(Math.round(performance.now()));
})();
"""


if __name__ == "__main__":
    main()
