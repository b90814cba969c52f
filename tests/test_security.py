"""Security checks: services bind 127.0.0.1 unless told otherwise; `visit` answers from the page store only (no
file:// read, no fetch of a model-chosen URL); API keys of the judge and the summariser reach their endpoint and
nothing else (not logs, metrics, saved configs, trajectories, reports, checkpoints or the console)."""
import gzip
import json
import logging
import re
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from litere.agent.tools import ToolCall, execute_tool
from litere.env import JOIN, LLMSummarizer, LocalEnv, PageStore, make_server, open_env, visit_miss
from litere.env.__main__ import build_parser
from litere.env.formats import VISIT_MISS_EVIDENCE

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # eval.py is a top-level script


pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder(ThreadingHTTPServer):
    """A loopback HTTP server that records every request (path, headers, body) and answers like an
    OpenAI-compatible chat endpoint: "Correct" to a judge prompt, a JSON summary to a page-summary prompt, or
    `status` when that is set."""
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _RecorderHandler)
        self.hits: list[dict] = []
        self.status = 200
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.server_address[1]

    def stop(self):
        self.shutdown()
        self.server_close()


class _RecorderHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Recorder

    def log_message(self, format, *args):
        pass

    def _handle(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.hits.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                     "body": body.decode("utf-8", "replace")})
        if self.server.status != 200:
            reply = json.dumps({"error": "try later"}).encode()
            self.send_response(self.server.status)
        else:
            text = body.decode("utf-8", "replace")
            content = (json.dumps({"rational": "r", "evidence": "The word is yes.", "summary": "It says yes."})
                       if "You read one web page" in text else "Correct")
            reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = do_PUT = do_HEAD = _handle


@pytest.fixture
def recorder():
    server = Recorder()
    yield server
    server.stop()


# --- (a) services bind 127.0.0.1 unless told otherwise --------------------------------------------------------------
def test_env_serve_and_make_server_default_to_loopback(tmp_path):
    import inspect

    assert build_parser().parse_args(["serve", "--db", "w.db"]).host == "127.0.0.1"
    assert inspect.signature(make_server).parameters["host"].default == "127.0.0.1"
    with PageStore(tmp_path / "w.db") as store:
        store.add_pages([("p/1", "One", "Page one.")])
    store = PageStore(tmp_path / "w.db", readonly=True)
    server = make_server(LocalEnv(store))
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
        store.close()


def test_env_serve_command_binds_loopback(tmp_path):
    """`python -m litere.env serve` without --host: the address it reports (its bound socket's) is 127.0.0.1."""
    with PageStore(tmp_path / "w.db") as store:
        store.add_pages([("p/1", "One", "Page one.")])
    proc = subprocess.Popen([sys.executable, "-m", "litere.env", "serve", "--db", str(tmp_path / "w.db"),
                             "--port", "0"], stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stderr.readline()
        match = re.search(r"at http://([^:/]+):(\d+)", line)
        assert match, line
        assert match.group(1) == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{match.group(2)}/health", timeout=10) as r:
            assert json.loads(r.read())["pages"] == 1
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stderr.close()


def test_no_server_in_the_project_binds_all_interfaces():
    """The environment service is the project's only server; nothing defaults to 0.0.0.0 or "" as a host."""
    sources = [p for p in (REPO / "litere").rglob("*.py")] + [REPO / n for n in ("train.py", "rollout.py", "eval.py")]
    servers, wildcard = [], []
    for path in sources:
        text = path.read_text()
        if re.search(r"HTTPServer|TCPServer|UDPServer|socket\.socket\(|\.bind\(|\.listen\(|start_server\(|"
                     r"create_server\(", text):
            servers.append(path.relative_to(REPO).as_posix())
        if re.search(r"0\.0\.0\.0|host\s*(:\s*str\s*)?=\s*[\"']{2}|default=[\"']{2}.*host", text):
            wildcard.append(path.relative_to(REPO).as_posix())
    assert servers == ["litere/env/service.py"], f"{servers}: a new server must default to 127.0.0.1 (test it here)"
    assert wildcard == [], f"{wildcard} name 0.0.0.0 or an empty host"


# --- (b) visit looks up the page store only --------------------------------------------------------------------------
HOSTILE_URLS = ["file:///etc/passwd", "file://localhost/etc/hostname", "/etc/passwd", "../../etc/passwd",
                "ftp://127.0.0.1/x", "gopher://127.0.0.1:70/", "data:text/plain,hello", "http://[::1]:9/",
                "http://localhost:9/admin"]


def hostile_urls(recorder) -> list[str]:
    return HOSTILE_URLS + [recorder.url + "/", recorder.url + "/secret?x=1", recorder.url.replace("127.0.0.1",
                                                                                                 "localhost")]


@pytest.fixture
def store_path(tmp_path):
    with PageStore(tmp_path / "w.db") as store:
        store.add_pages([("p/yes", "Yes", "The word is yes. It was written in 1900.")])
    return tmp_path / "w.db"


def test_visit_of_files_and_network_urls_is_a_miss_and_fetches_nothing(store_path, recorder):
    """Embedded env, the agent's tool call and the HTTP service (+ its client, the user-configured backend): every
    URL that is not a page of the store gives the protocol's miss text, and the recording server sees no request.
    The summariser is an LLM at the recorder too: a miss must not reach it either."""
    goal = "what does it say"
    urls = hostile_urls(recorder)
    summarizer = LLMSummarizer(recorder.url + "/v1", "m", timeout=5, retries=0)
    store = PageStore(store_path, readonly=True)
    env = LocalEnv(store, summarizer=summarizer)
    server = make_server(env)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        expected = JOIN.join(visit_miss(u, goal) for u in urls)
        assert env.visit(urls, goal) == expected
        text, success, _, _ = execute_tool(env, ToolCall("visit", {"url": urls, "goal": goal}), None)
        assert success and text == expected
        client = open_env(server.url)
        assert client.visit(urls, goal) == expected
        for url in urls:
            request = urllib.request.Request(server.url + "/query", method="POST",
                                             data=json.dumps({"url": url, "goal": goal}).encode())
            with urllib.request.urlopen(request, timeout=10) as r:
                reply = json.loads(r.read())
            assert not reply["success"] and VISIT_MISS_EVIDENCE in reply["result"]
        assert "root:" not in expected
        assert recorder.hits == []
        # the recorder does see what is sent to it: a page of the store is summarised by the LLM there
        assert "It says yes." in env.visit("p/yes", goal)
        assert [h["path"] for h in recorder.hits] == ["/v1/chat/completions"]
    finally:
        server.shutdown()
        server.server_close()
        store.close()


# --- (c) API keys reach the endpoint and nothing else ----------------------------------------------------------------
KEY_VAR = "LITERE_TEST_JUDGE_KEY"


def distinctive_key(tag: str) -> str:
    import secrets

    return f"sk-litere-{tag}-{secrets.token_hex(12)}"


def files_holding(root: Path, key: str) -> list[str]:
    """Every file under root whose bytes (or, for .gz, decompressed bytes) contain the key."""
    needle = key.encode()
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".gz":
            try:
                data += gzip.decompress(data)
            except (OSError, EOFError):
                pass
        if needle in data:
            found.append(str(path.relative_to(root)))
    return found


def test_the_key_search_finds_keys_in_plain_and_gzip_files(tmp_path):
    key = distinctive_key("probe")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "log.txt").write_text(f"Authorization: Bearer {key}\n")
    (tmp_path / "a" / "step_1.jsonl.gz").write_bytes(gzip.compress(json.dumps({"k": key}).encode()))
    (tmp_path / "clean.json").write_text("{}")
    assert files_holding(tmp_path, key) == ["a/log.txt", "a/step_1.jsonl.gz"]


def assert_key_reached_the_server_only(key, recorder, roots, capfd, caplog):
    auth = [h["headers"].get("Authorization") for h in recorder.hits]
    assert auth and all(a == f"Bearer {key}" for a in auth), auth  # the check below means something
    assert all(key not in h["body"] and key not in h["path"] for h in recorder.hits)
    for root in roots:
        assert files_holding(root, key) == [], root
    out, err = capfd.readouterr()
    assert key not in out and key not in err
    assert key not in caplog.text and all(key not in r.getMessage() for r in caplog.records)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The RL tests' toy task: a tiny policy that answers <answer>yes</answer> or <answer>no</answer>."""
    from rl_helpers import make_toy

    return make_toy(tmp_path_factory.mktemp("toy"), questions=4, sft_steps=20)


def test_eval_with_an_llm_judge_writes_no_api_key(toy, tmp_path, recorder, monkeypatch, capfd, caplog):
    import eval as eval_script

    key = distinctive_key("eval")
    monkeypatch.setenv(KEY_VAR, key)
    caplog.set_level(logging.DEBUG)
    judge = ["--judge", "llm", "--judge-url", recorder.url + "/v1", "--judge-model", "fake-judge",
             "--judge-api-key-env", KEY_VAR, "--judge-retries", "0"]
    eval_script.main(["--model", str(toy / "sft" / "final"), "--questions", str(toy / "questions.jsonl"),
                      "--k", "2", "--out", str(tmp_path / "eval"), "--max-turns", "2", "--device", "cpu",
                      "--cache-tokens", "4096", "--seed", "0", "--temperature", "1.0",
                      "--system-prompt", str(toy / "system.txt"), *judge])
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["trajectories"] == 8
    # re-scoring the saved trajectories, once with the judge answering and once with it failing (its error texts
    # are written into the records)
    trajectories = str(tmp_path / "eval" / "trajectories.jsonl")
    eval_script.main(["--trajectories", trajectories, "--out", str(tmp_path / "rescored"), *judge])
    recorder.status = 500
    eval_script.main(["--trajectories", trajectories, "--out", str(tmp_path / "failed"), *judge])
    failed = [json.loads(line)["judge"] for line in (tmp_path / "failed" / "trajectories.jsonl").open()]
    assert any(j["method"] == "exact_match_fallback" and "500" in j["error"] for j in failed)
    assert_key_reached_the_server_only(key, recorder, [tmp_path, toy], capfd, caplog)


def test_rl_run_with_an_llm_judge_writes_no_api_key(toy, tmp_path, recorder, monkeypatch, capfd, caplog):
    from litere.rl import loop
    from rl_helpers import metrics, rl_config

    key = distinctive_key("rl")
    monkeypatch.setenv("LITERE_TEST_RL_KEY", key)
    caplog.set_level(logging.DEBUG)
    run_dir = tmp_path / "rl"
    loop.train(rl_config(toy, run_dir=str(run_dir), judge="llm", judge_url=recorder.url + "/v1",
                         judge_model="fake-judge", judge_api_key_env="LITERE_TEST_RL_KEY", judge_retries=0,
                         prompts_per_step=2, samples_per_prompt=4, max_steps=2, checkpoint_every=1,
                         dump_rollouts=True))
    assert len(metrics(run_dir)) == 2 and list((run_dir / "rollouts").glob("step_*.jsonl.gz"))
    assert (run_dir / "config.toml").exists() and (run_dir / "final").is_dir()
    assert len([p for p in run_dir.rglob("*") if p.is_file()]) > 10  # checkpoints too
    assert_key_reached_the_server_only(key, recorder, [tmp_path, toy], capfd, caplog)


def test_the_summariser_key_reaches_its_endpoint_only(store_path, tmp_path, recorder, capfd, caplog):
    """The LLM summariser (`serve --llm-url/--llm-key`), answering and failing: the visit texts, the service's
    replies and the log carry no key."""
    key = distinctive_key("summary")
    caplog.set_level(logging.DEBUG)
    store = PageStore(store_path, readonly=True)
    env = LocalEnv(store, summarizer=LLMSummarizer(recorder.url, "m", api_key=key, timeout=5, retries=1,
                                                   retry_delay=0))
    server = make_server(env, verbose=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    replies = []
    try:
        for status in (200, 500):
            recorder.status = status
            replies.append(env.visit("p/yes", f"goal {status}"))
            request = urllib.request.Request(server.url + "/query", method="POST",
                                             data=json.dumps({"url": "p/yes", "goal": f"again {status}"}).encode())
            with urllib.request.urlopen(request, timeout=10) as r:
                replies.append(r.read().decode())
    finally:
        server.shutdown()
        server.server_close()
        store.close()
    assert "It says yes." in replies[0] and VISIT_MISS_EVIDENCE in replies[2]
    assert all(key not in r for r in replies)
    (tmp_path / "replies.txt").write_text("\n".join(replies))
    assert_key_reached_the_server_only(key, recorder, [tmp_path], capfd, caplog)
