"""The LLM summariser against a stub OpenAI-compatible server on 127.0.0.1."""
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from litere.env import (EnvSettings, ExtractiveSummarizer, LLMSummarizer, LocalEnv, PageStore, SummaryError,
                        make_server, visit_miss)
from litere.env.__main__ import build_parser, summarizer_from_args
from litere.env.summarize import parse_summary_reply

PAGE = "Osk is a country. The capital of Osk is Brell. The currency of Osk is the Vob."
GOAL = "Find the capital of Osk"


class Stub:
    """Replies in turn with the queued behaviours: a reply text, ("status", code) or ("sleep", seconds)."""

    def __init__(self):
        self.queue, self.requests = [], []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                stub.requests.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                action = stub.queue.pop(0) if stub.queue else ("status", 500)
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                    action = "{}"
                if isinstance(action, tuple):
                    self.send_response(action[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": action}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def stub():
    s = Stub()
    yield s
    s.close()


GOOD = ('<think>reading</think>```json\n{"rational": "the page names the capital", '
        '"evidence": "The capital of Osk is Brell.", "summary": "Brell is the capital of Osk."}\n```')


def test_reply_is_used_and_request_is_openai_shaped(stub):
    stub.queue.append(GOOD)
    s = LLMSummarizer(stub.url, "summ-model", api_key="k", retry_delay=0.0)
    assert s.summarize(PAGE, GOAL) == ("The capital of Osk is Brell.", "Brell is the capital of Osk.")
    path, body = stub.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "summ-model"
    assert GOAL in body["messages"][0]["content"] and PAGE in body["messages"][0]["content"]
    assert body["temperature"] == 0.7 and s.failures == 0


def test_retry_after_server_error(stub):
    stub.queue += [("status", 503), GOOD]
    s = LLMSummarizer(stub.url + "/v1", "m", retries=1, retry_delay=0.0)
    assert s.summarize(PAGE, GOAL)[1] == "Brell is the capital of Osk."
    assert len(stub.requests) == 2 and s.failures == 0


def test_bad_replies_fail_unless_a_fallback_was_chosen(stub):
    stub.queue += ["no json here", '{"rational": "x", "evidence": "", "summary": "s"}']
    s = LLMSummarizer(stub.url, "m", retries=1, retry_delay=0.0)
    with pytest.raises(SummaryError, match="after 2 tries"):
        s.summarize(PAGE, GOAL)
    assert len(stub.requests) == 2 and s.failures == 1
    stub.queue += ["no json here"]
    s = LLMSummarizer(stub.url, "m", retries=0, fallback=ExtractiveSummarizer())
    assert s.summarize(PAGE, GOAL) == ExtractiveSummarizer().summarize(PAGE, GOAL) and s.failures == 1


def test_timeout_falls_back(stub):
    stub.queue.append(("sleep", 1.0))
    s = LLMSummarizer(stub.url, "m", timeout=0.3, retries=0, fallback=ExtractiveSummarizer(1, 1))
    start = time.monotonic()
    assert s.summarize(PAGE, GOAL) == ("The capital of Osk is Brell.", "The capital of Osk is Brell.")
    assert time.monotonic() - start < 1.5 and s.failures == 1


def test_visit_text_with_llm_summariser(stub):
    stub.queue.append(GOOD)
    store = PageStore(":memory:")
    store.add_pages([("u", "Osk", PAGE)])
    env = LocalEnv(store, EnvSettings(), summarizer=LLMSummarizer(stub.url, "m", retry_delay=0.0))
    assert env.visit("u", GOAL) == (f"The useful information in u for user goal {GOAL} as follows: \n\n"
                                    "Evidence in page: \nThe capital of Osk is Brell.\n\n"
                                    "Summary: \nBrell is the capital of Osk.")


def test_parse_summary_reply_accepts_lists():
    assert parse_summary_reply('{"evidence": ["a", "b"], "summary": "s"}') == ("a\nb", "s")
    with pytest.raises(ValueError):
        parse_summary_reply('{"evidence": "a"}')


def test_a_failed_summary_gives_the_miss_text(stub):
    store = PageStore(":memory:")
    store.add_pages([("u", "Osk", PAGE)])
    env = LocalEnv(store, EnvSettings(), summarizer=LLMSummarizer(stub.url, "m", retries=0))  # the stub answers 500
    assert env.visit(["u", "u"], GOAL) == visit_miss("u", GOAL) + "\n\n=======\n\n" + visit_miss("u", GOAL)


class _Failing:
    def summarize(self, text, goal):
        raise SummaryError("summary failed after 3 tries: HTTP Error 500")


def test_the_service_reports_a_failed_summary_and_does_not_cache_it(tmp_path):
    store = PageStore(tmp_path / "w.db")
    store.add_pages([("u", "Osk", PAGE)])
    env = LocalEnv(store, EnvSettings(), summarizer=_Failing())
    server = make_server(env)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        body = json.dumps({"url": "u", "goal": GOAL}).encode()
        for _ in range(2):
            request = urllib.request.Request(server.url + "/query", data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                reply = json.loads(response.read())
            assert reply == {"success": False, "result": visit_miss("u", GOAL), "from_cache": False,
                             "error": "summary failed after 3 tries: HTTP Error 500"}
    finally:
        server.shutdown()
        server.server_close()
        store.close()


def test_serve_makes_the_extractive_fallback_opt_in():
    def summarizer(*flags):
        args = build_parser().parse_args(["serve", "--db", "w.db", *flags])
        return summarizer_from_args(args, EnvSettings.compact())

    assert summarizer() is None  # no --llm-url: the extractive summariser
    llm = summarizer("--llm-url", "http://h:1/v1")
    assert llm.fallback is None and llm.temperature == 0.7
    llm = summarizer("--llm-url", "http://h:1", "--extractive-fallback", "--llm-temperature", "0")
    assert isinstance(llm.fallback, ExtractiveSummarizer) and llm.fallback.evidence_sentences == 2
    assert llm.temperature == 0.0
