"""Text sources: the embedded default corpus, local `.txt` / `.jsonl` / `.parquet` files, HF datasets.

Every source streams `Document`s (plain text or a chat record) and splits them into train and
eval: by a record's `split` field where it has one, else by a stable hash of the document.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sae_core.data_files import ENV as DATA_ENV
from sae_core.data_files import data_root
from sae_core.errors import CorpusError, first_line

Split = Literal["train", "eval", "all"]

SUPPORTED_EXTENSIONS = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
TXT_DOC_CHARS = 2_000
"""A `.txt` file is cut into documents of consecutive paragraphs of up to about this many characters."""

_SPLIT_ALIASES = {
    "train": "train",
    "eval": "eval",
    "validation": "eval",
    "valid": "eval",
    "test": "eval",
}
_PARQUET_BATCH_ROWS = 512


@dataclass(frozen=True)
class Document:
    """One document: plain `text`, or a chat record of `messages` ({role, content}); exactly one is set."""

    text: str | None = None
    messages: tuple[dict, ...] | None = None
    source: str = ""
    doc_id: str = ""

    def __post_init__(self) -> None:
        if (self.text is None) == (self.messages is None):
            raise ValueError("a Document needs exactly one of `text` and `messages`")
        if self.messages is not None and not isinstance(self.messages, tuple):
            object.__setattr__(self, "messages", tuple(self.messages))


# A record read from a source: the document and its `split` field (None where it has none).
_Record = tuple[Document, str | None]


def default_corpus_dir() -> Path:
    """Where the default corpus lives: `corpus/` of the data that ships with sae-explorer (`data_files`)."""
    return data_root() / "corpus"


def iter_documents(
    source: str | Path | None = None,
    split: Split = "train",
    *,
    eval_fraction: float = 0.05,
    text_field: str | None = None,
) -> Iterator[Document]:
    """Stream the documents of `source` that fall into `split`, lazily and in a deterministic order.

    `source`: None / "default", a file or directory path, or "hf:NAME[:CONFIG][@SPLIT]".
    A bad source raises CorpusError here; a bad record raises when the iteration reaches it.
    """
    if split not in ("train", "eval", "all"):
        raise CorpusError(f"unknown split {split!r}; expected 'train', 'eval' or 'all'")
    if not 0.0 <= eval_fraction <= 1.0:
        raise CorpusError(f"eval fraction {eval_fraction} is outside [0, 1]; pass a value such as 0.05")
    records = _open_records(source, text_field)
    return _select(records, split, eval_fraction, describe_source(source))


def describe_source(source: str | Path | None) -> str:
    """A short human description of a text source for logs and run.json; never raises."""
    if source is None or source == "default":
        folder = default_corpus_dir()
        shown = str(folder) if os.environ.get(DATA_ENV) else "data/corpus"
        shards = sorted(folder.glob("*.jsonl.gz")) if folder.is_dir() else []
        if not shards:
            return f"default corpus ({shown}, missing)"
        return f"default corpus ({shown}, {len(shards)} shard{'s' if len(shards) != 1 else ''})"
    if isinstance(source, str) and source.startswith("hf:"):
        try:
            name, config, hf_split = _parse_hf(source)
        except CorpusError:
            return f"Hugging Face dataset {source[3:]}"
        return (
            f"Hugging Face dataset {name}" + (f", config {config}" if config else "") + f", split {hf_split}"
        )
    path = Path(source)
    if path.is_dir():
        return f"directory {source} ({len(_files_in(path))} files)"
    return f"file {source}"


def _select(records: Iterator[_Record], split: Split, eval_fraction: float, label: str) -> Iterator[Document]:
    n_yielded = 0
    for doc, doc_split in records:
        if split != "all":
            doc_split = doc_split or ("eval" if _hash_fraction(doc) < eval_fraction else "train")
            if doc_split != split:
                continue
        n_yielded += 1
        yield doc
    if n_yielded == 0:
        fix = (
            f'raise --eval-fraction (now {eval_fraction}) or give records a "split": "eval" field'
            if split == "eval"
            else "check that it holds non-empty text, or pass another --corpus"
        )
        raise CorpusError(f"corpus {label} has no documents in split {split!r}; {fix}")


def _hash_fraction(doc: Document) -> float:
    """A stable number in [0, 1) from the document's content (blake2b), so the split never changes."""
    payload = (
        doc.text
        if doc.text is not None
        else json.dumps(list(doc.messages), sort_keys=True, ensure_ascii=False, default=str)
    )
    digest = hashlib.blake2b(payload.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# ---------------------------------------------------------------- resolving a source


def _open_records(source: str | Path | None, text_field: str | None) -> Iterator[_Record]:
    """Check the source now (so a bad one fails at once) and return a lazy iterator of its records."""
    if source is None or source == "default":
        return _read_files(_default_shards(), text_field)
    if isinstance(source, str) and source.startswith("hf:"):
        name, config, hf_split = _parse_hf(source)
        _require_datasets()
        return _read_hf(name, config, hf_split, text_field)
    path = Path(source).expanduser()
    if not path.exists():
        raise CorpusError(
            f"corpus {source} does not exist; pass --corpus with an existing file or directory "
            f"({', '.join(SUPPORTED_EXTENSIONS)}) or hf:NAME"
        )
    if path.is_dir():
        files = _files_in(path)
        if not files:
            raise CorpusError(
                f"directory {source} holds no corpus files; put {', '.join(SUPPORTED_EXTENSIONS)} files in it"
            )
        return _read_files(files, text_field)
    if _extension(path) is None:
        raise CorpusError(
            f"corpus file {source} has an unsupported extension; use one of {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    return _read_files([path], text_field)


def _default_shards() -> list[Path]:
    folder = default_corpus_dir()
    shards = sorted(folder.glob("*.jsonl.gz")) if folder.is_dir() else []
    if not shards:
        raise CorpusError(
            f"the default corpus is missing: no *.jsonl.gz shards in {folder}; "
            "reinstall sae-explorer or set SAE_EXPLORER_DATA, or pass --corpus FILE|DIR|hf:NAME"
        )
    return shards


def _extension(path: Path) -> str | None:
    name = path.name.lower()
    return next((ext for ext in SUPPORTED_EXTENSIONS if name.endswith(ext)), None)


def _files_in(folder: Path) -> list[Path]:
    """Every supported, non-hidden file under `folder`, recursively, sorted by relative path."""
    found = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and _extension(p) is not None
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _parse_hf(source: str) -> tuple[str, str | None, str]:
    spec, at, hf_split = source[3:].rpartition("@") if "@" in source else (source[3:], "", "")
    name, _, config = spec.partition(":")
    if not name or (at and not hf_split):
        raise CorpusError(
            f"bad dataset source {source!r}; write hf:NAME, hf:NAME:CONFIG or hf:NAME:CONFIG@SPLIT"
        )
    return name, config or None, hf_split or "train"


def _require_datasets() -> None:
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise CorpusError(
            "hf: sources need the `datasets` package; "
            "pip install datasets (or pip install 'sae-explorer[hf]')"
        ) from None


# ---------------------------------------------------------------- readers


def _read_files(files: Iterable[Path], text_field: str | None) -> Iterator[_Record]:
    for path in files:
        ext = _extension(path)
        if ext == ".txt":
            yield from _read_txt(path)
        elif ext == ".parquet":
            yield from _read_parquet(path, text_field)
        else:
            yield from _read_jsonl(path, text_field)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without its newline) of a UTF-8 file, gzip-compressed if it ends in `.gz`."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise CorpusError(
                        f"{path}:{lineno}: not valid UTF-8 "
                        f"(byte 0x{raw[e.start]:02x} at column {e.start + 1}); re-encode the file as UTF-8, "
                        f"e.g. iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}"
                    ) from None
                if lineno == 1:
                    line = line.removeprefix("\ufeff")
                yield lineno, line.rstrip("\r\n")
    except (OSError, EOFError) as e:
        hint = "check that it is a complete gzip file" if opener is gzip.open else "check that it is readable"
        raise CorpusError(f"cannot read {path} ({e}); {hint}") from None


def _read_txt(path: Path) -> Iterator[_Record]:
    for i, text in enumerate(_group_paragraphs(_paragraphs(path, TXT_DOC_CHARS), TXT_DOC_CHARS)):
        yield Document(text=text, source=path.name, doc_id=f"{path.name}#{i}"), None


def _paragraphs(path: Path, max_chars: int) -> Iterator[str]:
    """Blank-line separated paragraphs; one longer than `max_chars` is cut at a line end to bound memory."""
    lines: list[str] = []
    size = 0
    for _, line in _lines(path):
        if line.strip():
            lines.append(line)
            size += len(line) + 1
            if size < max_chars:
                continue
        if lines:
            yield "\n".join(lines)
            lines, size = [], 0
    if lines:
        yield "\n".join(lines)


def _group_paragraphs(paragraphs: Iterable[str], max_chars: int) -> Iterator[str]:
    """Join consecutive paragraphs into documents of up to `max_chars` characters (a longer one alone)."""
    doc: list[str] = []
    size = 0
    for paragraph in paragraphs:
        if doc and size + 2 + len(paragraph) > max_chars:
            yield "\n\n".join(doc)
            doc, size = [], 0
        size += len(paragraph) + (2 if doc else 0)
        doc.append(paragraph)
    if doc:
        yield "\n\n".join(doc)


def _read_jsonl(path: Path, text_field: str | None) -> Iterator[_Record]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(
                f"{where}: invalid JSON ({e.msg} at column {e.colno}); write one JSON object per line"
            ) from None
        if not isinstance(record, dict):
            raise CorpusError(f"{where}: expected a JSON object per line, got {type(record).__name__}")
        yield from _record(
            record, where, text_field, default_source=path.name, default_id=f"{path.name}:{lineno}"
        )


def _read_parquet(path: Path, text_field: str | None) -> Iterator[_Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise CorpusError(f"cannot read {path} as parquet ({e}); check that the file is complete") from None
    columns = parquet.schema_arrow.names
    field = text_field or next((c for c in ("text", "messages") if c in columns), None)
    if field not in columns:
        wanted = f"column {text_field!r}" if text_field else "a 'text' or 'messages' column"
        raise CorpusError(
            f"{path} has no {wanted}; its columns are {columns}; pass --text-field COLUMN to read another one"
        )
    read = [field] + [c for c in ("split", "id", "source") if c in columns and c != field]
    row = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=read):
        values = {name: batch.column(name).to_pylist() for name in read}
        for i in range(batch.num_rows):
            row += 1
            record = {name: values[name][i] for name in read}
            yield from _record(
                record,
                f"{path} row {row}",
                field,
                default_source=path.name,
                default_id=f"{path.name}:{row}",
            )


def _read_hf(name: str, config: str | None, hf_split: str, text_field: str | None) -> Iterator[_Record]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, config, split=hf_split, streaming=True)
    except Exception as e:  # datasets raises many types; all mean "cannot open this dataset"
        raise CorpusError(
            f"cannot load Hugging Face dataset {name!r} (config {config}, split {hf_split}): {first_line(e)}; "
            "check the name, config and split, and that the Hub or a local cache is reachable"
        ) from None
    for i, record in enumerate(dataset):
        yield from _record(
            dict(record),
            f"hf:{name} row {i + 1}",
            text_field,
            default_source=name,
            default_id=f"{name}:{i}",
        )


# ---------------------------------------------------------------- records


def _record(
    record: dict[str, Any],
    where: str,
    text_field: str | None,
    *,
    default_source: str,
    default_id: str,
) -> Iterator[_Record]:
    """The document of one record (nothing for blank text), with its `split` field if it has one."""
    field = text_field or next((k for k in ("text", "messages") if k in record), None)
    if field not in record:
        wanted = f"{text_field!r}" if text_field else "'text' or 'messages'"
        raise CorpusError(
            f"{where}: record has keys {sorted(record)}, expected {wanted}; "
            "pass --text-field NAME to read another key"
        )
    value = record[field]
    source = record.get("source") if isinstance(record.get("source"), str) else default_source
    doc_id = str(record["id"]) if record.get("id") is not None else default_id
    if value is None or (isinstance(value, str) and not value.strip()):
        return
    if isinstance(value, str):
        doc = Document(text=value, source=source, doc_id=doc_id)
    elif isinstance(value, (list, tuple)):
        doc = Document(messages=_messages(value, where), source=source, doc_id=doc_id)
    else:
        raise CorpusError(
            f"{where}: {field!r} is a {type(value).__name__}; "
            "expected a string or a list of {role, content} messages"
        )
    yield doc, _split_of(record.get("split"), where)


def _messages(value: list | tuple, where: str) -> tuple[dict, ...]:
    if not value:
        raise CorpusError(
            f"{where}: chat record has no messages; give it at least one {{role, content}} message"
        )
    for i, message in enumerate(value):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise CorpusError(
                f"{where}: message {i} is {json.dumps(message, default=str)[:80]}; "
                "each message needs string 'role' and 'content' fields"
            )
    return tuple(dict(m) for m in value)


def _split_of(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in _SPLIT_ALIASES:
        raise CorpusError(
            f"{where}: split {value!r} is not 'train' or 'eval'; fix the record or drop its split field"
        )
    return _SPLIT_ALIASES[value.lower()]
