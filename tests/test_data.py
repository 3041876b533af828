import json

import pytest

from lowbit import data

REAL = data.data_dir_candidates()
HAVE_REAL_DATA = any((p / "text").is_dir() for p in REAL)


@pytest.fixture
def data_folder(tmp_path, monkeypatch):
    (tmp_path / "text").mkdir()
    (tmp_path / "choice").mkdir()
    (tmp_path / "text" / "tiny.txt").write_text("hello world\n", encoding="utf-8")
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    return tmp_path


def test_env_var_names_the_folder(data_folder):
    assert data.data_dir() == data_folder
    assert data.text_path("tiny.txt") == data_folder / "text" / "tiny.txt"
    assert data.read_text("tiny.txt") == "hello world\n"


def test_a_path_is_taken_as_is(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "nowhere"))
    f = tmp_path / "elsewhere.txt"
    f.write_text("x")
    assert data.text_path(f) == f
    assert data.text_path(str(f)) == f


def test_missing_file_names_every_place_and_the_env_var(data_folder):
    with pytest.raises(ValueError) as err:
        data.text_path("absent.txt")
    msg = str(err.value)
    assert "absent.txt" in msg and "LOWBIT_DATA" in msg
    assert str(data_folder / "text" / "absent.txt") in msg


def test_missing_folder_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="nope.*LOWBIT_DATA"):
        data.data_dir()


def test_default_folder_without_env_lists_candidates(monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    candidates = data.data_dir_candidates()
    assert len(candidates) >= 2 and all(p.is_absolute() for p in candidates)
    with pytest.raises(ValueError) as err:
        data.choice_path("no-such-set.jsonl")
    for p in candidates:
        assert str(p / "choice" / "no-such-set.jsonl") in str(err.value)


GOOD = {"question": "2+2?", "choices": ["3", "4"], "answer": 1}


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps(GOOD | {"question": 5}), "'question' must be a string"),
        (json.dumps(GOOD | {"choices": ["only one"]}), "'choices' must be a list"),
        (json.dumps(GOOD | {"choices": ["a", 2]}), "'choices' must be a list"),
        (json.dumps(GOOD | {"choices": "ab"}), "'choices' must be a list"),
        (json.dumps(GOOD | {"answer": 2}), "'answer' must be an integer index"),
        (json.dumps(GOOD | {"answer": -1}), "'answer' must be an integer index"),
        (json.dumps(GOOD | {"answer": True}), "'answer' must be an integer index"),
        (json.dumps(GOOD | {"answer": "1"}), "'answer' must be an integer index"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(data_folder, bad, match):
    path = data_folder / "choice" / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=match) as err:
        data.load_questions("bad.jsonl")
    assert f"{path}:3:" in str(err.value)


def test_good_jsonl(data_folder):
    (data_folder / "choice" / "ok.jsonl").write_text(json.dumps(GOOD) + "\n")
    assert data.load_questions("ok.jsonl") == [data.Question("2+2?", ("3", "4"), 1)]


def test_empty_jsonl(data_folder):
    (data_folder / "choice" / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no questions"):
        data.load_questions("empty.jsonl")


@pytest.mark.skipif(not HAVE_REAL_DATA, reason="the shared data folder is not present")
def test_real_defaults_exist_and_validate(monkeypatch):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    for name in data.EVAL_TEXTS + data.CALIBRATION_TEXTS:
        assert data.text_path(name).stat().st_size > 100_000
    for name in data.QUESTION_SETS:
        assert len(data.load_questions(name)) > 10
    for path in sorted((data.data_dir() / "choice").glob("*.jsonl")):
        assert data.load_questions(path)
