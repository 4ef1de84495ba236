"""Text sources: every file type, the default corpus, train/eval splits and every error a user can cause."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sae_core.errors import CorpusError, UserError
from sae_core.text.corpus import Document, describe_source, iter_documents

CHAT = [
    {"role": "user", "content": "What is a feature?"},
    {"role": "assistant", "content": "A direction."},
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def texts(docs) -> list[str]:
    return [d.text for d in docs]


# ---------------------------------------------------------------- Document


def test_document_needs_exactly_one_of_text_and_messages():
    with pytest.raises(ValueError):
        Document()
    with pytest.raises(ValueError):
        Document(text="a", messages=({"role": "user", "content": "b"},))
    assert Document(messages=[{"role": "user", "content": "b"}]).messages == (
        {"role": "user", "content": "b"},
    )


# ---------------------------------------------------------------- file types


def test_txt_groups_paragraphs_into_documents(tmp_path):
    paragraphs = [f"Paragraph {i} " + "word " * 150 for i in range(6)]  # ~760 chars each
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    docs = list(iter_documents(path, "all"))
    assert [d.text for d in docs] == ["\n\n".join(paragraphs[i : i + 2]) for i in (0, 2, 4)]
    assert all(len(d.text) <= 2000 for d in docs)
    assert docs[0].source == "corpus.txt" and docs[0].doc_id == "corpus.txt#0"


def test_txt_keeps_lines_and_cuts_a_huge_paragraph(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(
        "line one\r\nline two\n\n\n\nnext\n" + "x" * 50 + "\n" + ("y" * 100 + "\n") * 60,
        encoding="utf-8",
    )
    docs = texts(iter_documents(path, "all"))
    assert docs[0] == "line one\nline two"  # CRLF and repeated blank lines normalised
    assert docs[1].startswith("next\n" + "x" * 50 + "\ny")
    assert len(docs) == 4 and all(
        len(d) <= 2100 for d in docs
    )  # the 6,000-char paragraph is cut at line ends
    assert sum(d.count("y") for d in docs) == 6000


def test_jsonl_text_and_chat_records(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": "t1", "text": "hello"},
            {"messages": CHAT, "source": "chat"},
            {"text": "   "},
            {"text": "bye"},
        ],
    )
    docs = list(iter_documents(path, "all"))
    assert [d.text for d in docs] == ["hello", None, "bye"]
    assert docs[1].messages == tuple(CHAT) and docs[1].source == "chat" and docs[1].doc_id == "c.jsonl:2"
    assert docs[0].doc_id == "t1" and docs[0].source == "c.jsonl"


def test_jsonl_gz_and_text_field(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl.gz", [{"body": "first"}, {"body": "second"}])
    assert texts(iter_documents(path, "all", text_field="body")) == ["first", "second"]


def test_parquet_text_and_messages(tmp_path):
    pq.write_table(pa.table({"text": ["a b", "c d", None], "other": [1, 2, 3]}), tmp_path / "t.parquet")
    assert texts(iter_documents(tmp_path / "t.parquet", "all")) == ["a b", "c d"]

    messages = pa.array(
        [CHAT, CHAT[:1]],
        type=pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
    )
    pq.write_table(pa.table({"messages": messages, "split": ["train", "eval"]}), tmp_path / "m.parquet")
    train = list(iter_documents(tmp_path / "m.parquet", "train"))
    assert [d.messages for d in train] == [tuple(CHAT)]
    assert [d.messages for d in iter_documents(tmp_path / "m.parquet", "eval")] == [tuple(CHAT[:1])]


def test_directory_reads_supported_files_recursively_in_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("from b", encoding="utf-8")
    (tmp_path / "sub" / "a.txt").write_text("from sub/a", encoding="utf-8")
    write_jsonl(tmp_path / "a.jsonl", [{"text": "from a.jsonl"}])
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("ignored", encoding="utf-8")
    assert texts(iter_documents(tmp_path, "all")) == ["from a.jsonl", "from b", "from sub/a"]
    assert describe_source(tmp_path) == f"directory {tmp_path} (3 files)"


# ---------------------------------------------------------------- default corpus


def test_default_corpus_from_env_honours_split_field(tmp_path, monkeypatch):
    (tmp_path / "corpus").mkdir()
    write_jsonl(
        tmp_path / "corpus" / "default-00000.jsonl.gz",
        [
            {"id": "s1", "source": "sotu", "split": "train", "text": "State of the union."},
            {"id": "s2", "source": "sotu", "split": "eval", "text": "Another address."},
            {"id": "c1", "source": "chat_selfgen", "split": "train", "messages": CHAT},
        ],
    )
    write_jsonl(
        tmp_path / "corpus" / "default-00001.jsonl.gz",
        [{"id": "s3", "source": "sotu", "split": "train", "text": "Last."}],
    )
    monkeypatch.setenv("SAE_EXPLORER_DATA", str(tmp_path))
    for source in (None, "default"):
        train = list(iter_documents(source))
        assert [d.doc_id for d in train] == ["s1", "c1", "s3"]
        assert [d.source for d in train] == ["sotu", "chat_selfgen", "sotu"]
        assert [d.doc_id for d in iter_documents(source, "eval")] == ["s2"]
    assert len(list(iter_documents(None, "all"))) == 4
    assert describe_source(None) == f"default corpus ({tmp_path / 'corpus'}, 2 shards)"


def test_missing_default_corpus_says_where_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_EXPLORER_DATA", str(tmp_path))
    with pytest.raises(
        CorpusError, match=r"default corpus is missing.*" + str(tmp_path / "corpus") + r".*--corpus"
    ):
        iter_documents()


# ---------------------------------------------------------------- hash split


def test_hash_split_is_deterministic_disjoint_and_about_the_fraction(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", [{"text": f"document number {i}"} for i in range(2000)])
    train = texts(iter_documents(path, "train"))
    eval_ = texts(iter_documents(path, "eval"))
    assert texts(iter_documents(path, "eval")) == eval_
    assert set(train).isdisjoint(eval_) and len(train) + len(eval_) == 2000
    assert 60 <= len(eval_) <= 140  # 5% of 2,000 = 100, sd ≈ 10
    assert 300 <= len(texts(iter_documents(path, "eval", eval_fraction=0.2))) <= 500
    assert set(eval_) <= set(
        texts(iter_documents(path, "eval", eval_fraction=0.2))
    )  # growing the fraction only adds


def test_hash_split_of_chat_records_uses_their_messages(tmp_path):
    records = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(400)]
    path = write_jsonl(tmp_path / "chat.jsonl", records)
    a = [d.messages for d in iter_documents(path, "eval", eval_fraction=0.5)]
    assert a == [d.messages for d in iter_documents(path, "eval", eval_fraction=0.5)]
    assert 140 <= len(a) <= 260


# ---------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    with pytest.raises(CorpusError, match=r"nope\.txt does not exist.*--corpus"):
        iter_documents(tmp_path / "nope.txt")


def test_unsupported_extension_lists_the_supported_ones(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(
        CorpusError,
        match=r"data\.csv.*unsupported extension.*\.txt, \.jsonl, \.jsonl\.gz, \.parquet",
    ):
        iter_documents(tmp_path / "data.csv")


def test_empty_directory(tmp_path):
    with pytest.raises(CorpusError, match="holds no corpus files"):
        iter_documents(tmp_path)


@pytest.mark.parametrize("name", ["latin.txt", "latin.jsonl", "latin.jsonl.gz"])
def test_non_utf8_names_file_line_and_iconv(tmp_path, name):
    data = b'{"text": "fine"}\n' + '{"text": "caf\u00e9"}\n'.encode("latin-1")
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(CorpusError, match=rf"{name}:2: not valid UTF-8 .*iconv -f latin1 -t utf-8"):
        list(iter_documents(path, "all"))


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.jsonl:3: invalid JSON"):
        list(iter_documents(path, "all"))
    path.write_text('["a list"]\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.jsonl:1: expected a JSON object"):
        list(iter_documents(path, "all"))


def test_record_without_text_lists_keys_and_suggests_text_field(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"content": "x", "meta": 1}])
    with pytest.raises(
        CorpusError,
        match=r"r\.jsonl:1: record has keys \['content', 'meta'\], expected 'text' or 'messages'.*"
        r"--text-field",
    ):
        list(iter_documents(path, "all"))
    with pytest.raises(CorpusError, match=r"r\.jsonl:1: .*expected 'body'"):
        list(iter_documents(path, "all", text_field="body"))


def test_bad_chat_message_and_bad_split_value(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user"}]}])
    with pytest.raises(CorpusError, match=r"c\.jsonl:1: message 0 .*'role' and 'content'"):
        list(iter_documents(path, "all"))
    path = write_jsonl(tmp_path / "s.jsonl", [{"text": "a", "split": "dev2"}])
    with pytest.raises(CorpusError, match=r"s\.jsonl:1: split 'dev2'"):
        list(iter_documents(path, "all"))


def test_parquet_without_the_column_lists_columns(tmp_path):
    pq.write_table(pa.table({"body": ["a"], "n": [1]}), tmp_path / "p.parquet")
    with pytest.raises(
        CorpusError,
        match=r"p\.parquet has no a 'text' or 'messages' column.*\['body', 'n'\].*--text-field",
    ):
        list(iter_documents(tmp_path / "p.parquet", "all"))
    assert texts(iter_documents(tmp_path / "p.parquet", "all", text_field="body")) == ["a"]
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(CorpusError, match=r"broken\.parquet"):
        list(iter_documents(tmp_path / "broken.parquet", "all"))


def test_empty_source_and_empty_split(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"empty\.txt has no documents in split 'train'"):
        list(iter_documents(tmp_path / "empty.txt"))
    path = write_jsonl(tmp_path / "one.jsonl", [{"text": "only train", "split": "train"}])
    with pytest.raises(CorpusError, match=r"one\.jsonl has no documents in split 'eval'.*--eval-fraction"):
        list(iter_documents(path, "eval"))
    with pytest.raises(CorpusError, match="no documents in split 'eval'"):
        list(iter_documents(tmp_path / "empty.txt", "eval", eval_fraction=0.0))


def test_stopping_early_is_not_an_error(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": str(i)} for i in range(10)])
    docs = iter_documents(path, "all")
    assert next(docs).text == "0"
    docs.close()


def test_bad_arguments():
    with pytest.raises(CorpusError, match="unknown split"):
        iter_documents(None, "test")  # type: ignore[arg-type]
    with pytest.raises(CorpusError, match="eval fraction"):
        iter_documents(None, eval_fraction=1.5)


# ---------------------------------------------------------------- Hugging Face


def test_hf_without_datasets_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(CorpusError, match=r"pip install datasets.*sae-explorer\[hf\]"):
        iter_documents("hf:allenai/c4:en@validation")
    with pytest.raises(CorpusError, match="hf:NAME"):
        iter_documents("hf:")


def test_hf_reads_records_through_load_dataset(monkeypatch):
    calls = []

    class FakeDatasets:
        @staticmethod
        def load_dataset(name, config, split, streaming):
            calls.append((name, config, split, streaming))
            return iter([{"text": "one"}, {"text": "two"}])

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    assert texts(iter_documents("hf:org/data:cfg@validation", "all")) == ["one", "two"]
    assert calls == [("org/data", "cfg", "validation", True)]
    assert describe_source("hf:org/data") == "Hugging Face dataset org/data, split train"


def test_describe_source_and_corpus_error_is_a_user_error(tmp_path):
    assert describe_source("corpus.txt") == "file corpus.txt"
    assert issubclass(CorpusError, UserError)
