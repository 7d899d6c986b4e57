import pandas as pd
import pytest

from agnews.data.texts import blank_rows, describe_rows, encode, read_texts
from agnews.errors import AGNewsError

TEXTS = ["Shares of the bank rose.", "", 'The coach, "furious", left; the team lost.', "Új rekord: NASA 火星 probe"]


def write_texts(folder, fmt: str, texts=TEXTS):
    path = folder / f"in.{fmt}"
    if fmt == "txt":
        path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    elif fmt == "csv":
        pd.DataFrame({"id": range(len(texts)), "text": texts}).to_csv(path, index=False)
    elif fmt == "jsonl":
        pd.DataFrame({"text": texts, "source": "x"}).to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        pd.DataFrame({"text": texts}).to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl", "parquet"])
def test_each_format_reads_the_texts_in_order(fmt, tmp_path):
    assert read_texts(write_texts(tmp_path, fmt)) == TEXTS


def test_txt_keeps_blank_lines_as_rows_and_crlf_endings_are_dropped(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"first\r\n\r\n  \r\nlast")
    texts = read_texts(path)
    assert texts == ["first", "", "  ", "last"]
    assert blank_rows(texts) == [1, 2]
    assert describe_rows(list(range(8)), limit=3) == "0, 1, 2 and 5 more"


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("ok\ncaf\xe9 latin-1\n".encode("latin-1"))
    with pytest.raises(AGNewsError, match=r"line 2 is not valid UTF-8 .*0xe9.*iconv"):
        read_texts(path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_file_without_text_column(fmt, tmp_path):
    path = tmp_path / f"in.{fmt}"
    frame = pd.DataFrame({"headline": ["a", "b"]})
    {
        "csv": lambda: frame.to_csv(path, index=False),
        "jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        "parquet": lambda: frame.to_parquet(path),
    }[fmt]()
    with pytest.raises(AGNewsError, match=r"no 'text' column \(columns: headline\)"):
        read_texts(path)


def test_unknown_suffix_missing_file_and_broken_jsonl(tmp_path):
    with pytest.raises(AGNewsError, match=r"use a \.txt, \.csv"):
        read_texts(tmp_path / "in.xlsx")
    with pytest.raises(AGNewsError, match="does not exist"):
        read_texts(tmp_path / "none.txt")
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(AGNewsError, match="line 2 is not JSON"):
        read_texts(tmp_path / "in.jsonl")


def test_encode_truncates_to_max_length(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    encoded = encode(tokenizer, ["the market " * 200, "goal"], max_length=16)
    assert encoded["lengths"].tolist() == [16, 3]
    assert len(encoded["input_ids"]) == 19 and encoded["labels"].tolist() == [-1, -1]


def test_a_csv_python_cannot_parse_is_one_line(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"text\nfine\nbroken \r field\n")  # a lone carriage return inside an unquoted field
    with pytest.raises(AGNewsError, match=r"^cannot read .*in\.csv as CSV: .*save it as plain CSV") as err:
        read_texts(path)
    assert "\n" not in str(err.value)
