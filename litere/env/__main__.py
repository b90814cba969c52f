"""python -m litere.env ingest|serve|search|visit (run with -h for the options of each)."""
from __future__ import annotations

import argparse
import os
import sys

from . import SETTINGS_META_KEY, EnvSettings, LocalEnv, PageStore, ingest, make_server, open_env
from .summarize import ExtractiveSummarizer, LLMSummarizer

_SIZE_FLAGS = {"results": "results_per_query", "snippet_words": "snippet_words",
               "visit_sentences": "visit_sentences", "summary_sentences": "summary_sentences"}


def _add_size_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", type=int, help="results per query (default: the store's, else 10)")
    p.add_argument("--snippet-words", type=int, help="words per snippet")
    p.add_argument("--visit-sentences", type=int, help="evidence sentences per visit")
    p.add_argument("--summary-sentences", type=int, help="summary sentences per visit")


def _sizes(args) -> dict:
    return {field: getattr(args, flag) for flag, field in _SIZE_FLAGS.items() if getattr(args, flag) is not None}


def _cmd_ingest(args) -> int:
    report = ingest(args.db, args.files, batch_size=args.batch, progress=not args.quiet)
    if args.compact:
        with PageStore(args.db) as store:
            store.set_meta(SETTINGS_META_KEY, EnvSettings.compact().to_dict())
    print(report.summary(), file=sys.stderr)
    for source, lineno, reason in report.bad_lines[:20]:
        print(f"  {source}:{lineno}: {reason}", file=sys.stderr)
    return 0


def summarizer_from_args(args, settings: EnvSettings) -> LLMSummarizer | None:
    """The LLM summariser of `serve --llm-url` (None: the extractive default). Its failures give the miss text
    unless --extractive-fallback asks for an extractive summary instead."""
    if not args.llm_url:
        return None
    fallback = ExtractiveSummarizer.from_settings(settings) if args.extractive_fallback else None
    return LLMSummarizer(args.llm_url, args.llm_model, api_key=os.environ.get(args.llm_key_env),
                         timeout=args.llm_timeout,
                         temperature=args.llm_temperature, fallback=fallback)


def _cmd_serve(args) -> int:
    store = PageStore(args.db, readonly=True)
    settings = EnvSettings.from_dict(store.get_meta(SETTINGS_META_KEY)).updated(**_sizes(args))
    env = LocalEnv(store, settings, summarizer=summarizer_from_args(args, settings))
    server = make_server(env, args.host, args.port, verbose=args.verbose)
    print(f"serving {args.db} ({server.pages:,} pages) at {server.url}", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()
    return 0


def _cmd_search(args) -> int:
    env = open_env(args.env, **_sizes(args))
    print(env.search(args.queries, mask_url=args.mask))
    return 0


def _cmd_visit(args) -> int:
    env = open_env(args.env, **_sizes(args))
    print(env.visit(args.urls, args.goal))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m litere.env", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="ingest corpus JSON lines (plain or gzip) into a page store")
    p.add_argument("--db", required=True, help="page store file (created if missing; ingest resumes)")
    p.add_argument("files", nargs="+", help="corpus files: {url,title,doc} or {id,text,metadata:{title,url}}")
    p.add_argument("--batch", type=int, default=2000, help="pages per committed batch")
    p.add_argument("--compact", action="store_true", help="record compact output sizes in the store")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(run=_cmd_ingest)

    p = sub.add_parser("serve", help="serve a page store over HTTP (/search, /batch_search, /query, /health)")
    p.add_argument("--db", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--llm-url", help="OpenAI-compatible endpoint for visit summaries (default: extractive)")
    p.add_argument("--llm-model", default="Qwen3-4B-Instruct-2507")
    p.add_argument("--llm-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the endpoint's API key (a key on the command line would show "
                        "in process lists)")
    p.add_argument("--llm-timeout", type=float, default=60.0)
    p.add_argument("--llm-temperature", type=float, default=0.7)
    p.add_argument("--extractive-fallback", action="store_true",
                   help="when the summary LLM fails, summarise extractively (default: the protocol's miss text)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    _add_size_flags(p)
    p.set_defaults(run=_cmd_serve)

    p = sub.add_parser("search", help="print the search tool's text")
    p.add_argument("--env", "--db", dest="env", required=True, help="page store file or service URL(s)")
    p.add_argument("queries", nargs="+")
    p.add_argument("--mask", default=None, help="mask_url: drop results whose link contains it")
    _add_size_flags(p)
    p.set_defaults(run=_cmd_search)

    p = sub.add_parser("visit", help="print the visit tool's text")
    p.add_argument("--env", "--db", dest="env", required=True, help="page store file or service URL(s)")
    p.add_argument("urls", nargs="+")
    p.add_argument("--goal", required=True)
    _add_size_flags(p)
    p.set_defaults(run=_cmd_visit)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
