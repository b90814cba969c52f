"""Page store, ingest, FTS query safety, thread safety and the extractive visit."""
import gzip
import json
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from litere.env import (SETTINGS_META_KEY, EnvSettings, ExtractiveSummarizer, LocalEnv, PageStore, ingest,
                        open_env, truncate_page)
from litere.env import corpus as ingest_module


def corpus_lines(n, start=0):
    return [json.dumps({"url": f"https://ex.org/{i}", "title": f"Page {i}", "doc": f"Topic{i} text number {i}."})
            for i in range(start, start + n)]


def write(path, lines, gz=False):
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_ingest_both_forms_gzip_bad_lines_and_duplicates(tmp_path):
    lines = [
        json.dumps({"url": "u1", "title": "One", "doc": "first page"}),
        "{not json",
        json.dumps({"id": "7", "text": "second page", "metadata": {"title": "Two", "url": "u2"}}),
        json.dumps(["a list"]),
        "",
        json.dumps({"url": "u1", "title": "Dup", "doc": "a later copy is ignored"}),
        json.dumps({"title": "no url", "doc": "x"}),
        json.dumps({"url": "u3", "title": "Three"}),
        "\xff",
    ]
    plain = write(tmp_path / "a.jsonl", lines)
    zipped = write(tmp_path / "b.jsonl.gz", [json.dumps({"url": "u4", "title": "Four", "doc": "fourth"})], gz=True)
    report = ingest(tmp_path / "s.db", [plain, zipped], progress=False)
    assert (report.added, report.duplicates, report.bad) == (3, 1, 5)
    assert [(lineno, reason.split(" (")[0]) for _, lineno, reason in report.bad_lines] == [
        (2, "Expecting property name enclosed in double quotes: line 1 column 2"),
        (4, "expected a JSON object, got list"), (7, "no url"), (8, "no text"), (9, "Expecting value: line 1 column 1")]
    assert all(source == str(plain) for source, _, _ in report.bad_lines)
    with PageStore(tmp_path / "s.db", readonly=True) as store:
        assert store.count() == 3
        assert store.get("u1").title == "One"
        assert store.get("u2").text == "second page"
        assert store.get("u4").title == "Four"
        assert store.get("u3") is None
    assert not (tmp_path / "s.db-wal").exists()   # a self-contained file after ingest


def test_ingest_resumes_after_interruption(tmp_path, monkeypatch):
    src = write(tmp_path / "c.jsonl", corpus_lines(10))
    real_parse = ingest_module.parse_record
    calls = {"n": 0}

    def failing_parse(obj):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real_parse(obj)

    monkeypatch.setattr(ingest_module, "parse_record", failing_parse)
    with pytest.raises(KeyboardInterrupt):
        ingest(tmp_path / "s.db", [src], batch_size=3, progress=False)
    monkeypatch.setattr(ingest_module, "parse_record", real_parse)
    with PageStore(tmp_path / "s.db", readonly=True) as store:
        assert store.count() == 6                      # two committed batches
    report = ingest(tmp_path / "s.db", [src], batch_size=3, progress=False)
    assert (report.resumed, report.lines, report.added, report.duplicates) == (6, 4, 4, 0)
    again = ingest(tmp_path / "s.db", [src], progress=False)   # a finished source is skipped whole
    assert (again.resumed, again.lines, again.added) == (10, 0, 0)
    src.write_text("\n".join(corpus_lines(12)) + "\n")            # a changed file is read again; URLs dedupe
    changed = ingest(tmp_path / "s.db", [src], progress=False)
    assert (changed.lines, changed.added, changed.duplicates) == (12, 2, 10)
    with PageStore(tmp_path / "s.db", readonly=True) as store:
        assert store.count() == 12


HOSTILE = ['"', '""', 'a"b', "AND", "OR OR", "NOT", "NEAR(", "NEAR(kalo ven, 2)", "*", "kalo*", "^kalo",
           "title:kalo", "{title}: x", "(", ")", "-kalo", "+", "ǅ", "ﬁ", "\u0301", "\u200b", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "Ⅻ", "٣",
           "ＫＡＬＯ", "kalo\x00ven", "", "   ", "x" * 10_000, " ".join(["kalo"] * 3000), "🙂 café naïve"]


def test_no_query_can_raise():
    store = PageStore(":memory:")
    store.add_pages([("u1", "Kalo Ven", "Kalo Ven is a painter from Brell."), ("u2", "Café", "A naive café.")])
    env = LocalEnv(store)
    for q in HOSTILE:
        assert env.search(q).startswith(f"A Google search for '{q}' found ")
    assert [h.link for h in store.search("ＫＡＬＯ")] == ["u1"]
    assert [h.link for h in store.search("cafe naïve")] == ["u2"]     # diacritics folded like FTS5
    rng = random.Random(0)
    for _ in range(500):
        q = "".join(chr(rng.randrange(1, 0x30000)) for _ in range(rng.randint(1, 20)))
        store.search(q)


def test_posting_budget_keeps_rare_terms_and_bounds_work():
    store = PageStore(":memory:", max_candidates=5)
    store.add_pages([(f"u{i}", f"Page {i}", f"common words everywhere item{i}") for i in range(20)])
    # "common"/"words" are in all 20 pages (over the budget); the rare term decides
    assert [h.link for h in store.search("common words item7")] == ["u7"]
    # only common terms: at most max_candidates documents are scored, results still come back
    assert len(store.search("common words", limit=10)) == 5


def test_concurrent_searches_on_a_file_store(tmp_path):
    src = write(tmp_path / "c.jsonl", corpus_lines(300))
    ingest(tmp_path / "s.db", [src], progress=False)
    env = open_env(tmp_path / "s.db", results_per_query=3)
    expected = {i: env.search(f"topic{i}") for i in range(0, 300, 7)}
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: (i, env.search(f"topic{i}")), list(expected) * 5))
    assert all(text == expected[i] for i, text in got)
    assert all(f"https://ex.org/{i})" in expected[i] for i in expected)
    env.close()


def test_open_env_reads_recorded_settings_and_readonly(tmp_path):
    src = write(tmp_path / "c.jsonl", corpus_lines(30))
    ingest(tmp_path / "s.db", [src], progress=False)
    with PageStore(tmp_path / "s.db") as store:
        store.set_meta(SETTINGS_META_KEY, EnvSettings.compact().to_dict())
    env = open_env(tmp_path / "s.db")
    assert env.settings == EnvSettings.compact()
    assert open_env(tmp_path / "s.db", results_per_query=5).settings.results_per_query == 5
    with pytest.raises(PermissionError):
        env.store.add_pages([("u", "t", "x")])
    with pytest.raises(FileNotFoundError):
        open_env(tmp_path / "missing.db")
    (tmp_path / "other.db").write_bytes(b"")
    with pytest.raises(ValueError, match="not a litere page store"):
        open_env(tmp_path / "other.db")


class WordTokenizer:
    """Stands in for litere.tokenizer.Tokenizer: one id per word."""

    def encode(self, text):
        self.words = text.split()
        return list(range(len(self.words)))

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids)


def test_page_truncation_by_tokens_or_words():
    text = " ".join(f"w{i}" for i in range(100))
    assert truncate_page(text, max_words=10) == " ".join(f"w{i}" for i in range(10))
    assert truncate_page(text, max_words=1000) == text
    assert truncate_page(text, tokenizer=WordTokenizer(), max_tokens=5) == "w0 w1 w2 w3 w4"
    assert truncate_page(text, tokenizer=WordTokenizer(), max_tokens=500) == text
    store = PageStore(":memory:")
    store.add_pages([("u", "T", text + " The answer is here.")])
    env = LocalEnv(store, EnvSettings(page_words=50))
    assert "is here" not in env.visit("u", "the answer")   # cut before summarising


def test_extractive_summary_is_goal_conditioned_and_bounded():
    page = ("Osk is a country. The capital of Osk is Brell. Osk has a long coast.\n"
            "The currency of Osk is the Vob. " + "Filler sentence about Osk. " * 50)
    s = ExtractiveSummarizer(evidence_sentences=2, summary_sentences=1, max_chars=200)
    evidence, summary = s.summarize(page, "Find the currency of Osk")
    assert summary == "The currency of Osk is the Vob."
    assert evidence.split("\n") == ["Osk is a country.", "The currency of Osk is the Vob."]
    assert s.summarize(page, "Find the currency of Osk") == (evidence, summary)   # deterministic
    evidence, _ = ExtractiveSummarizer(evidence_sentences=40, max_chars=200).summarize(page, "Osk")
    assert len(evidence) <= 200 + 40
    long_sentence = "word " * 1000
    evidence, summary = ExtractiveSummarizer(max_chars=100).summarize(long_sentence, "word")
    assert len(evidence) <= 100 and len(summary) <= 100
    assert ExtractiveSummarizer().summarize("", "x") == ("The page has no text.", "The page contains no information.")
