"""A fake OpenAI-compatible endpoint on 127.0.0.1 with injectable faults, and helpers of the fault tests
(the `fault` fixture in conftest.py serves it)."""
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def completion(content) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


class FaultServer:
    """An HTTP server on 127.0.0.1 (ephemeral port) that answers request i with behaviour i (the last one repeats),
    or with `pick(request_body)` when given. A behaviour is:
      ("ok", content)          a chat completion holding `content`
      ("json", obj)            a 200 with the JSON of `obj`
      ("raw", data)            a 200 with the bytes `data` as its body
      ("status", code[, hdrs]) an HTTP error with those headers (e.g. {"Retry-After": "1"})
      "hang"                   reads the request and never answers (until the server closes)
      "trickle"                a 200 whose body arrives one byte every 50 ms, for ever
      "reset"                  closes the connection without a word
      "badstatus"              a reply that is not HTTP
    Every request's arrival time (time.monotonic) and path are kept."""

    def __init__(self, *behaviours, pick=None):
        self.behaviours = list(behaviours) or [("ok", "Correct")]
        self.pick = pick
        self.times, self.paths = [], []
        self.lock = threading.Lock()
        self.closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.do_POST()

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with server.lock:
                    server.times.append(time.monotonic())
                    server.paths.append(self.path)
                    index = len(server.times) - 1
                behaviour = (server.pick(body) if server.pick
                             else server.behaviours[min(index, len(server.behaviours) - 1)])
                try:
                    self.act(behaviour)
                except OSError:  # the client gave up first, as the test wanted
                    pass
                self.close_connection = True

            def send(self, code: int, data: bytes, headers=None):
                self.send_response(code)
                for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def act(self, behaviour):
                kind = behaviour if isinstance(behaviour, str) else behaviour[0]
                if kind == "ok":
                    self.send(200, completion(behaviour[1]))
                elif kind == "json":
                    self.send(200, json.dumps(behaviour[1]).encode())
                elif kind == "raw":
                    self.send(200, behaviour[1])
                elif kind == "status":
                    headers = behaviour[2] if len(behaviour) > 2 else {}
                    self.send(behaviour[1], b'{"error": "injected"}', headers)
                elif kind == "hang":
                    server.closing.wait(30)
                elif kind == "trickle":
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    while not server.closing.wait(0.05):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                elif kind == "reset":
                    pass
                elif kind == "badstatus":
                    self.wfile.write(b"SURELY NOT HTTP\r\n\r\n")
                else:
                    raise ValueError(kind)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def requests(self) -> int:
        return len(self.times)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def fault_servers():
    servers = []

    def make(*behaviours, **kw):
        servers.append(FaultServer(*behaviours, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def closed_port_url() -> str:
    """A loopback URL nothing listens on (an endpoint that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def timed(fn, *args):
    start = time.monotonic()
    out = fn(*args)
    return out, time.monotonic() - start


# --- the retry policy -----------------------------------------------------------------------------------------
VERDICT_JSON = '{"reasoning": "same person", "judgment": "Correct"}'


def fuzz_replies(seed: int, n: int):
    """(reply, expected) pairs: expected True / False where the reply holds that verdict, None where it may hold
    anything (the parser must then give a verdict or JudgeReplyError, nothing else)."""
    rng = random.Random(seed)
    alphabet = 'CorectInc{}[]":,. \n*`\'<>/thinkjudgmentreasoning\\'

    def noise(k):
        return "".join(rng.choice(alphabet) for _ in range(k))

    def unicode_noise(k):  # any code point, lone surrogates and NUL included
        return "".join(chr(rng.choice([rng.randrange(0x110000), rng.randrange(0xD800, 0xE000), 0])) for _ in range(k))

    for i in range(n):
        kind = i % 10
        if kind == 0:
            yield noise(rng.randrange(0, 200)), None
        elif kind == 1:
            yield unicode_noise(rng.randrange(0, 100)), None
        elif kind == 2:  # a valid object cut anywhere
            yield VERDICT_JSON[: rng.randrange(len(VERDICT_JSON))], None
        elif kind == 3:  # wrong keys and values
            value = rng.choice([5, None, ["Correct"], {"judgment": "Correct"}, "Maybe", "", True, 1.5e308])
            key = rng.choice(["judgment", "verdict", "Judgment", "judgement", ""])
            yield json.dumps({key: value, "reasoning": rng.choice([None, 3, "r"])}), None
        elif kind == 4:  # a valid reply with a few characters inserted, deleted or swapped
            chars = list(rng.choice([VERDICT_JSON, "Correct", "Incorrect", "<think>x</think>Correct"]))
            for _ in range(rng.randrange(1, 4)):
                at = rng.randrange(len(chars) + 1)
                op = rng.randrange(3)
                if op == 0:
                    chars.insert(at, rng.choice(alphabet))
                elif chars and op == 1:
                    del chars[min(at, len(chars) - 1)]
                elif chars:
                    chars[min(at, len(chars) - 1)] = rng.choice(alphabet)
            yield "".join(chars), None
        elif kind == 5:  # the bare verdict, wrapped as judges do
            verdict = rng.choice(["Correct", "Incorrect"])
            word = rng.choice([verdict, verdict.lower(), verdict.upper()])
            wrap = rng.choice(["", '"', "**", "`", "'"])
            yield f"{rng.choice(['', ' ', chr(10)])}{wrap}{word}{wrap}{rng.choice(['', '.'])}  ", verdict == "Correct"
        elif kind == 6:  # thinking, then the JSON form
            verdict = rng.choice(["Correct", "Incorrect"])
            thinking = noise(rng.randrange(0, 300)).replace("</think>", "")
            reply = json.dumps({"reasoning": unicode_noise(20), "judgment": verdict})
            yield f"<think>{thinking}</think>\n{noise(rng.randrange(0, 20)).replace('{', '')} {reply}", \
                verdict == "Correct"
        elif kind == 7:  # bytes that are not UTF-8, as a lenient client would decode them
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            yield data.decode("utf-8", "surrogateescape"), None
        elif kind == 8:  # nested structures
            depth = rng.choice([10, 500, 5000, 100_000])
            yield rng.choice(['{"a": ', "[", '{"judgment": ']) * depth, None
        else:  # huge replies (one in a hundred cases)
            size = rng.choice([10_000, 200_000]) if i % 100 == 9 else rng.randrange(1000)
            yield rng.choice(["{", "{\"", "x", "Correct "]) * size, None
