"""Building the bundled mini world's data set: many training worlds, one held-out evaluation world, their
questions, page stores and teacher trajectories.

Each world (generate.py) is answered by the scripted expert (teacher.py) with the real tools. Training uses many
small fresh worlds so that memorising cannot pay; the evaluation world draws its names from a pool no training
world uses.

mask_url is null for world questions: the original masks the page a question was written from, but here the
article stating a fact is the only evidence for it, so masking it would make the question unanswerable.

    python -m litere.world build OUT [--seed S] [--worlds N] [--trajectories N] [--eval-questions N] ...
writes OUT/manifest.json, train_corpus.jsonl, train_questions.jsonl, train_sft.jsonl, train_dbs/wNNNN.db,
eval_corpus.jsonl, eval_questions.jsonl, eval_sft.jsonl and eval.db (see `build`).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from litere.env import SETTINGS_META_KEY, EnvSettings, LocalEnv, PageStore, ingest
from litere.tokenizer import SYSTEM_PROMPT
from litere.world.generate import World, WorldSize, train_world_seed
from litere.world.teacher import teach

@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    worlds: int = 240
    trajectories: int = 150               # per training world
    eval_questions: int = 300
    mix: tuple[float, float, float] = (0.6, 0.3, 0.1)   # direct, 2-hop, 3-hop
    size: WorldSize = WorldSize()
    settings: EnvSettings = EnvSettings.compact()
    url_prefix: str = "w/"
    train_dbs: bool = True
    workers: int = 2

    def to_dict(self) -> dict:
        """The settings that shape the data (the worker count does not)."""
        d = asdict(self)
        d["settings"] = self.settings.to_dict()
        del d["workers"]
        return d


@dataclass(frozen=True)
class _Job:
    config: BuildConfig
    out: str
    pool: str
    seed: int
    tag: str
    wanted: int
    env_ref: str | None     # the questions' "env" field
    save_db: bool           # write the world's page store to out/env_ref


def _quotas(total: int, mix: tuple[float, float, float]) -> dict[int, int]:
    counts = [int(total * m) for m in mix]
    counts[0] += total - sum(counts)
    return dict(zip((1, 2, 3), counts))


def _run_job(job: _Job) -> dict:
    """Everything one world contributes, as JSON lines (runs in a worker process)."""
    config = job.config
    world = World(job.seed, job.pool, config.size, config.url_prefix)
    store = world.store(config.settings)
    env = LocalEnv(store, config.settings)
    rng = random.Random(f"litere-questions:{job.pool}:{job.seed}")
    out = {"pages": [], "questions": [], "sft": [], "teacher_failed": 0}
    for url, title, text in world.pages():
        record = {"url": url, "title": title, "doc": text}
        if job.pool == "train":
            record["world"] = job.tag
        out["pages"].append(json.dumps(record, ensure_ascii=False))
    for hops, quota in _quotas(job.wanted, config.mix).items():
        candidates = world.candidates(hops)
        rng.shuffle(candidates)
        made = 0
        for start, chain in candidates:
            if made == quota:
                break
            q = world.question(start, chain)
            if q is None:
                continue
            messages = teach(world, env, q, rng)
            if messages is None:
                out["teacher_failed"] += 1
                continue
            qid = f"{job.tag}-q{len(out['questions']):04d}"
            row = {"id": qid, "question": q.text, "answers": [q.answer], "data_source": q.data_source,
                   "mask_url": None}
            if job.env_ref is not None:
                row["env"] = job.env_ref
            out["questions"].append(json.dumps(row, ensure_ascii=False))
            out["sft"].append(json.dumps({"id": qid, "data_source": q.data_source, "world": job.tag,
                                          "answers": [q.answer], "messages": messages}, ensure_ascii=False))
            made += 1
    if job.save_db:
        store.save_as(Path(job.out) / job.env_ref)
    store.close()
    return out


def build(config: BuildConfig, out: str | Path, *, log=sys.stderr) -> dict:
    """Write the training worlds, the evaluation world and a manifest under `out`; returns the manifest.

    out/train_corpus.jsonl     pages of every training world ({url, title, doc, world}); worlds reuse names,
                               so this file is for reading and tokenizer training, not for one search index
    out/train_questions.jsonl  {id, question, answers, data_source, mask_url: null, env: train_dbs/wNNNN.db}
    out/train_sft.jsonl        teacher trajectories ({id, data_source, world, answers, messages})
    out/train_dbs/wNNNN.db     one page store per training world (unless train_dbs is off)
    out/eval_corpus.jsonl, eval_questions.jsonl (env: eval.db), eval_sft.jsonl (held-out loss), eval.db
    out/manifest.json          the build settings, env settings (also recorded in every store) and counts
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if config.train_dbs:
        (out / "train_dbs").mkdir(exist_ok=True)
    start = time.monotonic()
    jobs = [_Job(config, str(out), "eval", config.seed, "eval", config.eval_questions, "eval.db", False)]
    for i in range(config.worlds):
        db = f"train_dbs/w{i:04d}.db" if config.train_dbs else None
        jobs.append(_Job(config, str(out), "train", train_world_seed(config.seed, i), f"w{i:04d}",
                         config.trajectories, db, config.train_dbs))
    counts = {"train_pages": 0, "train_questions": 0, "eval_pages": 0, "eval_questions": 0, "teacher_failed": 0}
    files = {name: open(out / f"{name}.jsonl", "w", encoding="utf-8") for name in
             ("train_corpus", "train_questions", "train_sft", "eval_corpus", "eval_questions", "eval_sft")}
    try:
        with multiprocessing.Pool(config.workers) if config.workers > 1 else _InProcess() as pool:
            for done, (job, result) in enumerate(zip(jobs, pool.imap(_run_job, jobs, chunksize=4)), 1):
                split = job.pool
                for key, name in (("pages", "corpus"), ("questions", "questions"), ("sft", "sft")):
                    files[f"{split}_{name}"].writelines(line + "\n" for line in result[key])
                counts[f"{split}_pages"] += len(result["pages"])
                counts[f"{split}_questions"] += len(result["questions"])
                counts["teacher_failed"] += result["teacher_failed"]
                if log and (done % 20 == 0 or done == len(jobs)):
                    log.write(f"\rworlds {done}/{len(jobs)}  {time.monotonic() - start:.1f}s")
                    log.flush()
    finally:
        for f in files.values():
            f.close()
    if log:
        log.write("\n")
    eval_db = out / "eval.db"
    eval_db.unlink(missing_ok=True)
    with PageStore(eval_db) as store:
        ingest(store, [out / "eval_corpus.jsonl"], progress=False)
        store.set_meta(SETTINGS_META_KEY, config.settings.to_dict())
    manifest = {"format": 1, "build": config.to_dict(), "env_settings": config.settings.to_dict(),
                "world_seeds": {"eval": config.seed,
                                "train": [train_world_seed(config.seed, i) for i in range(config.worlds)]},
                "name_pools": "training worlds draw names from the 'train' pool, the evaluation world from the "
                              "disjoint 'eval' pool (litere.world.names)",
                "mask_url": None, "counts": counts,
                "files": {"train_corpus": "train_corpus.jsonl", "train_questions": "train_questions.jsonl",
                          "train_sft": "train_sft.jsonl", "train_dbs": "train_dbs" if config.train_dbs else None,
                          "eval_corpus": "eval_corpus.jsonl", "eval_questions": "eval_questions.jsonl",
                          "eval_sft": "eval_sft.jsonl", "eval_db": "eval.db"}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if log:
        log.write(f"built {config.worlds} training worlds ({counts['train_questions']:,} trajectories) and the "
                  f"evaluation world ({counts['eval_questions']:,} questions) in {time.monotonic() - start:.1f}s "
                  f"under {out}\n")
    return manifest


class _InProcess:
    """The Pool interface used by build, without processes."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap(self, fn, items, chunksize=1):
        return map(fn, items)


def load_manifest(out: str | Path) -> dict:
    path = Path(out) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (build the world with python -m litere.world build)")
    return json.loads(path.read_text())


def training_texts(out: str | Path) -> Iterator[str]:
    """The texts a tokenizer for the demo should learn from: the system prompt once, then every other message
    of the training trajectories (evaluation names stay unseen, as they must)."""
    yield SYSTEM_PROMPT
    with open(Path(out) / "train_sft.jsonl", encoding="utf-8") as f:
        for line in f:
            for message in json.loads(line)["messages"]:
                if message["role"] != "system":
                    yield message["content"]


def _parse_mix(text: str) -> tuple[float, float, float]:
    parts = [float(p) for p in text.split(",")]
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"--mix needs three non-negative fractions summing to 1, got {text!r}")
    return parts[0], parts[1], parts[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m litere.world", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="build training worlds, trajectories and the evaluation world")
    p.add_argument("out")
    d = BuildConfig()
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--worlds", type=int, default=d.worlds, help="training worlds")
    p.add_argument("--trajectories", type=int, default=d.trajectories, help="teacher trajectories per world")
    p.add_argument("--eval-questions", type=int, default=d.eval_questions)
    p.add_argument("--mix", type=_parse_mix, default=d.mix, help="direct,2-hop,3-hop fractions (0.6,0.3,0.1)")
    for name, value in asdict(d.size).items():
        p.add_argument(f"--{name}", type=int, default=value, help=f"{name} per world")
    p.add_argument("--results", type=int, default=d.settings.results_per_query, help="search results per query")
    p.add_argument("--snippet-words", type=int, default=d.settings.snippet_words)
    p.add_argument("--visit-sentences", type=int, default=d.settings.visit_sentences)
    p.add_argument("--summary-sentences", type=int, default=d.settings.summary_sentences)
    p.add_argument("--url-prefix", default=d.url_prefix)
    p.add_argument("--no-train-dbs", action="store_true", help="no page store per training world")
    p.add_argument("--workers", type=int, default=min(2, multiprocessing.cpu_count()))
    args = parser.parse_args(argv)
    settings = d.settings.updated(results_per_query=args.results, snippet_words=args.snippet_words,
                                  visit_sentences=args.visit_sentences, summary_sentences=args.summary_sentences)
    config = BuildConfig(seed=args.seed, worlds=args.worlds, trajectories=args.trajectories,
                         eval_questions=args.eval_questions, mix=args.mix,
                         size=WorldSize(**{k: getattr(args, k) for k in asdict(d.size)}), settings=settings,
                         url_prefix=args.url_prefix, train_dbs=not args.no_train_dbs, workers=args.workers)
    build(config, args.out)
    return 0
