"""The HTTP service and the HTTP backend, on 127.0.0.1 with an ephemeral port."""
import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from litere.env import EnvError, EnvSettings, HttpEnv, LocalEnv, PageStore, ingest, make_server, open_env, visit_miss
from litere.env.client import service_base

SETTINGS = EnvSettings(results_per_query=3, snippet_words=8, visit_sentences=2, summary_sentences=1)
NAMES = ["Kalo Ven", "Brell Osk", "Tarn Vid", "Mira Sol", "Dun Ake", "Pell Rho"]


@pytest.fixture(scope="module")
def world_db(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svc")
    lines = []
    for i, name in enumerate(NAMES):
        for j in range(20):
            lines.append(json.dumps({"url": f"https://ex.org/{i}/{j}", "title": f"{name} {j}",
                                     "doc": f"{name} item {j} is described here. It was made in {1900 + j}. "
                                            f"{name} likes number {j}."}))
    (tmp / "c.jsonl").write_text("\n".join(lines) + "\n")
    ingest(tmp / "w.db", [tmp / "c.jsonl"], progress=False)
    return tmp / "w.db"


@pytest.fixture(scope="module")
def server(world_db):
    store = PageStore(world_db, readonly=True)
    srv = make_server(LocalEnv(store, SETTINGS))
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    store.close()


def post(url, payload):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_endpoints_have_the_original_shapes(server):
    reply = post(server.url + "/search", {"query": "Kalo Ven", "limit": 2, "search_type": "hybrid"})
    assert set(reply) == {"results", "total", "search_time"} and reply["total"] == 2
    assert set(reply["results"][0]) == {"link", "title", "snippet", "score"}
    batch = post(server.url + "/batch_search", {"queries": ["Kalo", "Mira"], "limit": 4})
    assert [len(q["results"]) for q in batch["query_results"]] == [4, 4]
    assert batch["query_results"][1]["query"] == "Mira"
    hit = post(server.url + "/query", {"url": "https://ex.org/0/3", "question": "when was it made"})
    assert hit["success"] and not hit["from_cache"] and "It was made in 1903." in hit["result"]
    again = post(server.url + "/query", {"url": "https://ex.org/0/3", "goal": "when was it made"})
    assert again["from_cache"] and again["result"] == hit["result"]
    miss = post(server.url + "/query", {"url": "https://nowhere", "goal": "g"})
    assert not miss["success"] and miss["result"] == visit_miss("https://nowhere", "g") and miss["error"]
    assert post(server.url + "/query", {"url": "https://ex.org/0/3"})["success"] is False
    with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
        assert json.loads(r.read()) == {"status": "ok", "pages": 120, "env_settings": SETTINGS.to_dict()}
    for path, body, code in [("/nope", {}, 404), ("/search", {"query": 3}, 400), ("/search", "[]", 400)]:
        with pytest.raises(urllib.error.HTTPError) as e:
            post(server.url + path, body)
        assert e.value.code == code


def test_http_backend_matches_embedded_backend_under_concurrency(server, world_db):
    local = open_env(world_db, **SETTINGS.to_dict())
    remote = open_env(server.url)
    assert isinstance(remote, HttpEnv) and remote.settings == SETTINGS   # the sizes the service reports
    calls = [(["Kalo Ven", "Kalo item"], None), (["Mira Sol 3"], "ex.org/3/3"), (["Tarn", "Tarn", "Dun"], None),
             ("Pell Rho", None), (["nothing matches zzz"], None)]
    visits = [(["https://ex.org/1/4", "https://nowhere"], "when was it made"), ("https://ex.org/5/19", "number")]
    expected = [local.search(q, mask_url=m) for q, m in calls] + [local.visit(u, g) for u, g in visits]

    def run(_):
        return [remote.search(q, mask_url=m) for q, m in calls] + [remote.visit(u, g) for u, g in visits]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(24)))
    assert all(r == expected for r in results)
    assert open_env(server.url, results_per_query=1).settings == SETTINGS.updated(results_per_query=1)
    split = open_env(f"search={server.url}/search,browse={server.url}/query", **SETTINGS.to_dict())
    assert split.search(*calls[0]) == expected[0]
    local.close()


def test_http_backend_uses_search_when_batch_search_is_missing(world_db):
    env = LocalEnv(PageStore(world_db, readonly=True), SETTINGS)

    class OnlySearch(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/search":
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps({"results": [h.to_dict() for h in env.search_hits(body["query"], body["limit"])],
                               "total": 0, "search_time": 0.0}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), OnlySearch)
    threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        assert HttpEnv(url, None, SETTINGS).search(["Kalo Ven", "Dun"]) == env.search(["Kalo Ven", "Dun"])
        with pytest.raises(EnvError, match="no browse service"):
            HttpEnv(url, None, SETTINGS).visit("u", "g")
    finally:
        srv.shutdown()
        srv.server_close()
        env.close()


def test_unreachable_service_raises_env_error():
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]   # a port nobody listens on once closed
    env = HttpEnv(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}", SETTINGS, retries=1, retry_delay=0.0,
                  timeout=2.0)
    with pytest.raises(EnvError, match="failed after 2 attempts"):
        env.search("x")


def test_service_base_accepts_roots_and_endpoints():
    assert service_base("http://h:1/") == "http://h:1"
    assert service_base("http://h:1/search") == "http://h:1"
    assert service_base("http://h:1/api/query") == "http://h:1/api"
    with pytest.raises(TypeError, match="unknown env setting"):
        open_env("http://h:1", results=3)
    with pytest.raises(ValueError, match="search=URL,browse=URL"):
        open_env("search=http://h:1,http://h:2")
