"""SFT data: conversation readers, tokenisation with loss masks, deterministic shuffling and packing.

Readers take JSON lines or a JSON array of records, each either `{"messages": [{"role", "content"}, ...]}` or
LLaMA-Factory's sharegpt form `{"conversations": [{"from", "value"}, ...], "system": ...}`. Tokens come from
`Tokenizer.encode_conversation`, the agent's own token stream, so the labels cover exactly the tokens a policy
samples (assistant text after the opening `<think>\\n`, plus the closing `<|im_end|>`). An assistant message must
open with `<think>\\n` as the agent's turns do (its generation prompt ends with it); one that does not gets an empty
thinking block (think_layout="normalize") or stops loading (think_layout="reject").

A training step takes one global batch from the epoch's permutation; every rank computes the same plan (which
documents, which rank, which micro-batch), so the plan and therefore the loss do not depend on the world size.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..tokenizer import Tokenizer

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}
MESSAGE_ROLES = ("system", "user", "assistant", "tool")
THINK_OPEN = "<think>\n"
EMPTY_THINK = "<think>\n\n</think>\n\n"


class DataError(ValueError):
    """A data record cannot be used; the message starts with `file:line`."""


# --- reading records ----------------------------------------------------------------------------------------------
def read_records(path: str | Path) -> Iterator[tuple[str, object]]:
    """(`file:line`, record) for each record of a JSON lines file or a JSON array file (one that opens with `[`
    and is not named *.jsonl).

    A record that is not valid JSON (or not UTF-8) comes as a DataError in place of the record, so the caller
    decides whether to skip it or stop.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff").lstrip()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if head.startswith("[") and path.suffix != ".jsonl":  # a .jsonl file is lines, whatever its first line holds
        yield from _array_records(path)
        return
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, DataError(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})")
                continue
            if number == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                yield where, DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
            except RecursionError:
                yield where, DataError(f"{where}: not valid JSON (nested too deeply)")


def _array_records(path: Path) -> Iterator[tuple[str, object]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        yield f"{path}:{line}", DataError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}); the JSON array "
                                          "cannot be read")
        return
    decoder = json.JSONDecoder()
    index, line = text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))

    def skip(i: int, separators: str) -> int:
        while i < len(text) and (text[i].isspace() or text[i] in separators):
            i += 1
        return i

    position = index
    while True:
        index = skip(index, ",")
        line += text.count("\n", position, index)
        position = index
        where = f"{path}:{line}"
        if index >= len(text):
            yield where, DataError(f"{where}: the JSON array is not closed with ']' (the file may be cut short)")
            return
        if text[index] == "]":
            rest = skip(index + 1, "")
            if rest < len(text):
                rest_line = 1 + text.count("\n", 0, rest)
                yield f"{path}:{rest_line}", DataError(f"{path}:{rest_line}: text after the end of the JSON array")
            return
        try:
            record, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError as e:
            yield f"{path}:{e.lineno}", DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                                                  "the rest of this JSON array cannot be read")
            return
        except RecursionError:
            yield where, DataError(f"{where}: not valid JSON (nested too deeply); the rest of this JSON array "
                                   "cannot be read")
            return
        yield where, record


# --- records to messages ------------------------------------------------------------------------------------------
def conversation_messages(record) -> list[dict]:
    """The messages of a record in either schema; raises ValueError naming what is wrong."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return _checked_messages(record["messages"])
    if "conversations" in record:
        return _sharegpt_messages(record)
    raise ValueError(f"expected a 'messages' or 'conversations' list, found keys {sorted(record)}")


def _checked_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in MESSAGE_ROLES:
            role = m.get("role") if isinstance(m, dict) else m
            raise ValueError(f"message {i} has role {role!r}; expected one of {', '.join(MESSAGE_ROLES)}")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} ({m['role']}) content must be a string, "
                             f"got {type(m.get('content')).__name__}")
        _check_utf8(m["content"], f"message {i} ({m['role']}) content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _sharegpt_messages(record: dict) -> list[dict]:
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns:
        raise ValueError("'conversations' must be a non-empty list")
    messages = []
    system = record.get("system")
    if system is not None and system != "":
        if not isinstance(system, str):
            raise ValueError(f"'system' must be a string, got {type(system).__name__}")
        _check_utf8(system, "'system'")
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"conversation turn {i} is a {type(turn).__name__}, expected an object")
        speaker = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        if not isinstance(speaker, str) or speaker not in SHAREGPT_ROLES:
            raise ValueError(f"conversation turn {i} is from {speaker!r}; expected one of {', '.join(SHAREGPT_ROLES)}")
        if not isinstance(value, str):
            raise ValueError(f"conversation turn {i} ({speaker}) value must be a string, got {type(value).__name__}")
        _check_utf8(value, f"conversation turn {i} ({speaker}) value")
        role = SHAREGPT_ROLES[speaker]
        if speaker == "function_call":
            value = _tool_call_text(value)
        elif role == "tool" and value.startswith("<tool_response>"):
            role = "user"  # already wrapped as the agent sees it
        messages.append({"role": role, "content": value})
    return messages


def _check_utf8(text: str, what: str):
    """Text that holds an unpaired surrogate (JSON allows `\\ud800`) cannot be encoded; say where it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} holds an unpaired surrogate {text[e.start]!r} at character {e.start}") from None


def _tool_call_text(value: str) -> str:
    """A sharegpt function_call value (JSON of one call or a list of calls) as Qwen3 <tool_call> blocks."""
    try:
        calls = json.loads(value)
    except json.JSONDecodeError:
        return value  # already rendered text
    calls = [calls] if isinstance(calls, dict) else calls
    if not isinstance(calls, list) or not all(isinstance(c, dict) and "name" in c for c in calls):
        return value
    return "\n".join("<tool_call>\n" + json.dumps({"name": c["name"], "arguments": c.get("arguments", {})},
                                                  ensure_ascii=False) + "\n</tool_call>" for c in calls)


def agent_layout(messages: list[dict], think_layout: str) -> tuple[list[dict], int]:
    """The messages with every assistant message opening with `<think>\\n`, and how many were given an empty
    thinking block for it; raises ValueError for one that cannot be."""
    out, normalised = [], 0
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].startswith(THINK_OPEN):
            if think_layout == "reject":
                raise ValueError(f"message {i} (assistant) does not start with {THINK_OPEN!r} (think_layout='reject')")
            if "<think>" in m["content"] or "</think>" in m["content"]:  # an empty block in front would double it
                raise ValueError(f"message {i} (assistant) has a thinking tag but does not start with {THINK_OPEN!r}")
            m, normalised = {"role": "assistant", "content": EMPTY_THINK + m["content"]}, normalised + 1
        out.append(m)
    return out, normalised


# --- tokenised dataset --------------------------------------------------------------------------------------------
@dataclass
class DataStats:
    files: int = 0
    records: int = 0
    bad: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    no_labels: int = 0
    think_added: int = 0  # assistant messages given an empty thinking block (think_layout="normalize")
    kept: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    bad_examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.kept:,} conversations ({self.tokens:,} tokens, {self.supervised_tokens:,} supervised) from "
                f"{self.records:,} records in {self.files} file(s); {self.truncated} truncated, "
                f"{self.dropped_overlong} dropped as over-long, {self.no_labels} without assistant tokens, "
                f"{self.bad} bad records skipped; {self.think_added} assistant messages given an empty thinking "
                "block")


@dataclass
class SFTDataset:
    """Tokenised conversations stored flat: document i is tokens[offsets[i]:offsets[i+1]] with its label mask."""
    tokens: np.ndarray  # int32
    labels: np.ndarray  # uint8, 1 where the token is a training target
    offsets: np.ndarray  # int64, len(docs) + 1
    sources: list[str]  # file:line of each document

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def document(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.tokens[a:b], self.labels[a:b]

    def subset(self, indices) -> "SFTDataset":
        """The documents at `indices`, in that order."""
        documents = [self.document(i) for i in indices]
        lengths = [len(tokens) for tokens, _ in documents]
        return SFTDataset(np.concatenate([tokens for tokens, _ in documents]),
                          np.concatenate([labels for _, labels in documents]),
                          np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), [self.sources[i] for i in indices])

    def concat(self, other: "SFTDataset") -> "SFTDataset":
        """This dataset's documents, then `other`'s."""
        return SFTDataset(np.concatenate([self.tokens, other.tokens]), np.concatenate([self.labels, other.labels]),
                          np.concatenate([self.offsets, self.offsets[-1] + other.offsets[1:]]),
                          self.sources + other.sources)

    def fingerprint(self) -> str:
        """Changes when the documents change; stored with checkpoints so a resume notices different data."""
        digest = hashlib.sha256(self.offsets.tobytes())
        digest.update(self.tokens[:: max(1, len(self.tokens) // 100_000)].tobytes())
        digest.update(self.labels.sum(dtype=np.int64).tobytes())
        return digest.hexdigest()[:16]


def load_sft_dataset(paths: list[str | Path], tokenizer: Tokenizer, *, cutoff_len: int, overlong: str = "truncate",
                     bad_lines: str = "fail", think_layout: str = "normalize", log: Callable[[str], None] = print
                     ) -> tuple[SFTDataset, DataStats]:
    """Read, check and tokenise every conversation of `paths`.

    overlong: "truncate" keeps the first `cutoff_len` tokens, "drop" leaves the conversation out.
    bad_lines: "fail" raises DataError at the first bad record, "skip" counts it and reports the first few.
    think_layout: an assistant message that does not open with `<think>\\n` gets an empty thinking block in front
    ("normalize") or makes its record bad ("reject").
    """
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong={overlong!r}: expected 'truncate' or 'drop'")
    if bad_lines not in ("fail", "skip"):
        raise ValueError(f"bad_lines={bad_lines!r}: expected 'fail' or 'skip'")
    if think_layout not in ("normalize", "reject"):
        raise ValueError(f"think_layout={think_layout!r}: expected 'normalize' or 'reject'")
    if cutoff_len < 2:
        raise ValueError(f"cutoff_len={cutoff_len}: need at least 2 tokens")
    if not paths:
        raise DataError("no training files given (train_files is empty)")
    stats = DataStats(files=len(paths))
    token_parts, label_parts, lengths, sources = [], [], [], []
    for path in paths:
        for where, record in read_records(path):
            stats.records += 1
            try:
                if isinstance(record, DataError):
                    raise record
                try:
                    messages, normalised = agent_layout(conversation_messages(record), think_layout)
                    ids, mask = tokenizer.encode_conversation(messages)
                except ValueError as e:
                    raise DataError(f"{where}: {e}") from None
            except DataError as e:
                if bad_lines == "fail":
                    raise
                stats.bad += 1
                if len(stats.bad_examples) < 5:
                    stats.bad_examples.append(str(e))
                    log(f"skipping bad record {e}")
                continue
            stats.think_added += normalised
            if len(ids) > cutoff_len:
                if overlong == "drop":
                    stats.dropped_overlong += 1
                    continue
                stats.truncated += 1
                ids, mask = ids[:cutoff_len], mask[:cutoff_len]
            if not any(mask[1:]):  # the first token is never a target
                stats.no_labels += 1
                continue
            token_parts.append(np.asarray(ids, dtype=np.int32))
            label_parts.append(np.asarray(mask, dtype=np.uint8))
            lengths.append(len(ids))
            sources.append(where)
    if not lengths:
        raise DataError(f"no usable conversations in {', '.join(map(str, paths))} ({stats.summary()})")
    tokens, labels = np.concatenate(token_parts), np.concatenate(label_parts)
    stats.kept, stats.tokens = len(lengths), len(tokens)
    stats.supervised_tokens = int(sum(int(m[1:].sum()) for m in label_parts))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return SFTDataset(tokens, labels, offsets, sources), stats


def recall_drills(count: int, keys: np.ndarray, values: np.ndarray, separator: int, *, entries: int = 16,
                  seed: int = 0) -> SFTDataset:
    """`count` synthetic documents that only copying predicts, without a label: `entries` lines of a key token and a
    two-token value (all drawn at random: `keys` distinct within a document, `values` with repeats), then the same
    lines again in another order. Where the same pair begins several values, recalling a value's second token needs
    its key as well as its first token, as copying a number spelt in digit pairs from a page does (one pair begins
    many years)."""
    if entries > len(keys):
        raise ValueError(f"recall drills of {entries} entries need {entries} distinct keys; {len(keys)} given")
    rng = np.random.default_rng(seed)
    width = 4  # key, two value tokens, separator
    documents = np.empty((count, 2 * entries * width), dtype=np.int32)
    for doc in documents:
        lines = np.column_stack([rng.choice(keys, entries, replace=False), rng.choice(values, (entries, 2)),
                                 np.full(entries, separator)])
        doc[:] = np.concatenate([lines.ravel(), lines[rng.permutation(entries)].ravel()])
    length = documents.shape[1]
    return SFTDataset(documents.ravel(), np.zeros(documents.size, dtype=np.uint8),
                      np.arange(count + 1, dtype=np.int64) * length, [f"recall drill {i}" for i in range(count)])


# --- batches ------------------------------------------------------------------------------------------------------
@dataclass
class MicroBatch:
    """Documents packed into one flat stream; targets are the next tokens, weights 1 on supervised targets."""
    input_ids: torch.Tensor  # (T,) int64
    positions: torch.Tensor  # (T,) int64, restarting at 0 for each document
    targets: torch.Tensor  # (T,) int64
    weights: torch.Tensor  # (T,) float32
    seqlens: list[int]

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    def to(self, device) -> MicroBatch:
        return MicroBatch(self.input_ids.to(device), self.positions.to(device), self.targets.to(device),
                          self.weights.to(device), self.seqlens)


def pack_documents(dataset: SFTDataset, docs) -> MicroBatch:
    """One stream of the documents `docs`; document i contributes len_i - 1 input tokens (input[:-1], target[1:])."""
    ids, targets, weights, positions, seqlens = [], [], [], [], []
    for i in docs:
        tokens, labels = dataset.document(int(i))
        ids.append(tokens[:-1])
        targets.append(tokens[1:])
        weights.append(labels[1:])
        positions.append(np.arange(len(tokens) - 1))
        seqlens.append(len(tokens) - 1)
    if not seqlens:  # a rank with nothing to do still joins the collectives of a step
        return MicroBatch(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                          torch.zeros(1, dtype=torch.long), torch.zeros(1), [1])
    return MicroBatch(torch.from_numpy(np.concatenate(ids).astype(np.int64)),
                      torch.from_numpy(np.concatenate(positions).astype(np.int64)),
                      torch.from_numpy(np.concatenate(targets).astype(np.int64)),
                      torch.from_numpy(np.concatenate(weights).astype(np.float32)), seqlens)


@dataclass
class StepBatch:
    """This rank's micro-batches of one step and the totals of the whole global batch."""
    micro_batches: list[MicroBatch]
    sequences: int
    tokens: int
    supervised_tokens: int
    doc_lengths: list[int]


@dataclass
class DataPosition:
    epoch: int = 0
    step: int = 0  # steps of this epoch already taken


class BatchPlanner:
    """Splits each epoch's permutation into global batches and each global batch into per-rank micro-batches.

    global_batch counts sequences (unit "sequences") or input tokens (unit "tokens"); pack_tokens is the most input
    tokens of one micro-batch on one rank. The plan depends on (seed, epoch, step) only, never on the world size,
    except for how documents are spread over ranks.
    """

    def __init__(self, dataset: SFTDataset, *, global_batch: int, unit: str, pack_tokens: int, seed: int):
        if unit not in ("sequences", "tokens"):
            raise ValueError(f"batch_unit={unit!r}: expected 'sequences' or 'tokens'")
        if global_batch <= 0 or pack_tokens <= 0:
            raise ValueError(f"global_batch ({global_batch}) and pack_tokens ({pack_tokens}) must be positive")
        self.dataset, self.global_batch, self.unit = dataset, global_batch, unit
        self.pack_tokens, self.seed = pack_tokens, seed
        self.input_lengths = dataset.lengths - 1
        starts = dataset.offsets[:-1]  # the first token of a document is never a target
        self.supervised = np.add.reduceat(dataset.labels, starts, dtype=np.int64) - dataset.labels[starts]
        longest = int(self.input_lengths.max())
        if longest > pack_tokens:
            raise ValueError(f"pack_tokens={pack_tokens} is less than the longest document ({longest} input tokens); "
                             "raise pack_tokens or lower cutoff_len")
        if unit == "tokens" and longest > global_batch:
            raise ValueError(f"global_batch={global_batch} tokens is less than the longest document ({longest})")
        self._bounds: dict[int, list[int]] = {}

    def order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def step_bounds(self, epoch: int) -> list[int]:
        """Start indices into the epoch's order of each step, plus the end of the last step."""
        if epoch not in self._bounds:
            n = len(self.dataset)
            if self.unit == "sequences":
                bounds = list(range(0, n - self.global_batch + 1, self.global_batch))
                bounds.append(bounds[-1] + self.global_batch if bounds else 0)
            else:
                bounds, total = [0], 0
                for i, length in enumerate(self.input_lengths[self.order(epoch)]):
                    if total + length > self.global_batch:
                        bounds.append(i)
                        total = 0
                    total += int(length)
                if total * 2 >= self.global_batch:  # keep a final partial batch if it is at least half full
                    bounds.append(n)
            self._bounds = {epoch: bounds}
        return self._bounds[epoch]

    def steps_in_epoch(self, epoch: int) -> int:
        return len(self.step_bounds(epoch)) - 1

    def total_steps(self, epochs: float) -> int:
        whole, fraction = int(epochs), epochs - int(epochs)
        steps = sum(self.steps_in_epoch(e) for e in range(whole))
        return steps + int(fraction * self.steps_in_epoch(whole))

    def advance(self, position: DataPosition) -> DataPosition:
        if position.step + 1 < self.steps_in_epoch(position.epoch):
            return DataPosition(position.epoch, position.step + 1)
        return DataPosition(position.epoch + 1, 0)

    def step_documents(self, position: DataPosition) -> np.ndarray:
        bounds = self.step_bounds(position.epoch)
        if not 0 <= position.step < len(bounds) - 1:
            raise IndexError(f"epoch {position.epoch} has {len(bounds) - 1} steps, asked for step {position.step}")
        return self.order(position.epoch)[bounds[position.step]:bounds[position.step + 1]]

    def batch(self, position: DataPosition, rank: int = 0, world_size: int = 1) -> StepBatch:
        docs = self.step_documents(position)
        packs = [self._pack(rank_docs) for rank_docs in self._spread(docs, world_size)]
        n_micro = max(len(p) for p in packs)
        mine = packs[rank] + [[]] * (n_micro - len(packs[rank]))  # equal counts keep the collectives in step
        lengths = self.input_lengths[docs]
        return StepBatch([pack_documents(self.dataset, p) for p in mine], sequences=len(docs),
                         tokens=int(lengths.sum()), supervised_tokens=int(self.supervised[docs].sum()),
                         doc_lengths=lengths.tolist())

    def _spread(self, docs: np.ndarray, world_size: int) -> list[list[int]]:
        """Longest document first onto the rank with the fewest tokens so far (ties: the lowest rank)."""
        load, out = [0] * world_size, [[] for _ in range(world_size)]
        for i in sorted(docs.tolist(), key=lambda d: (-self.input_lengths[d], d)):
            r = min(range(world_size), key=lambda k: (load[k], k))
            out[r].append(i)
            load[r] += int(self.input_lengths[i])
        return out

    def _pack(self, docs: list[int]) -> list[list[int]]:
        return first_fit_decreasing(docs, lambda d: int(self.input_lengths[d]), self.pack_tokens)


def first_fit_decreasing(items: list[int], length, capacity: int) -> list[list[int]]:
    """Items (longest first, ties by index) into bins of at most `capacity` by `length(item)`; an item longer than
    the capacity gets a bin of its own. Bins in the order they were opened, items in the order they were placed."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(items, key=lambda d: (-length(d), d)):
        size = length(i)
        for b, free in enumerate(room):
            if size <= free:
                bins[b].append(i)
                room[b] -= size
                break
        else:
            bins.append([i])
            room.append(capacity - size)
    return bins
