"""Named corpora and question sets, resolved from one data folder.

The folder holds ``text/*.txt`` (plain UTF-8 prose) and ``choice/*.jsonl`` (multiple-choice
questions, one ``{"question", "choices", "answer"}`` object a line). It is found, in order:

1. the environment variable ``LOWBIT_DATA``, when set (it must then exist);
2. ``../shared/data`` next to the repository root of a source checkout (``src/lowbit/data.py``);
3. ``../shared/data`` and ``./data`` under the current directory (an installed package).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "LOWBIT_DATA"

EVAL_TEXTS: tuple[str, ...] = ("sotu-2000-2015.txt", "moby-dick-ch061-100.txt")
CALIBRATION_TEXTS: tuple[str, ...] = ("moby-dick-ch001-060.txt", "sotu-1980-1999.txt")
QUESTION_SETS: tuple[str, ...] = ("general_knowledge.jsonl",)
DEFAULT_EVAL_TEXT = EVAL_TEXTS[0]
DEFAULT_CALIBRATION_TEXT = CALIBRATION_TEXTS[0]
DEFAULT_QUESTIONS = QUESTION_SETS[0]

_HOW_TO_SET = (
    f"set {ENV_VAR}=/path/to/data (a folder holding text/ and choice/), "
    "or pass the file's path"
)


def data_dir_candidates() -> list[Path]:
    """Every folder that may be the data folder, in the order they are tried."""
    env = os.environ.get(ENV_VAR)
    if env:
        return [Path(env).expanduser()]
    repo_root = Path(__file__).resolve().parents[2]  # src/lowbit/data.py -> repository root
    cwd = Path.cwd()
    found: list[Path] = []
    places = (repo_root.parent / "shared" / "data", cwd.parent / "shared" / "data", cwd / "data")
    for path in places:
        path = path.resolve()
        if path not in found:
            found.append(path)
    return found


def data_dir() -> Path:
    """The data folder (see the module docstring); ValueError naming every place tried."""
    candidates = data_dir_candidates()
    for path in candidates:
        if path.is_dir():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise ValueError(f"no lowbit data folder found; looked in: {tried}; {_HOW_TO_SET}")


def _resolve(name: str | os.PathLike[str], subdir: str, what: str) -> Path:
    given = Path(name).expanduser()
    looked: list[Path] = [given]
    if given.is_file():
        return given
    if len(given.parts) == 1:  # a bare file name: look it up in the data folder(s)
        for root in data_dir_candidates():
            path = root / subdir / given
            looked.append(path)
            if path.is_file():
                return path
    tried = ", ".join(str(p) for p in looked)
    raise ValueError(f"{what} {str(name)!r} not found; looked in: {tried}; {_HOW_TO_SET}")


def text_path(name: str | os.PathLike[str]) -> Path:
    """Path of a text corpus: an existing path, or a file name looked up under ``text/``."""
    return _resolve(name, "text", "text file")


def choice_path(name: str | os.PathLike[str]) -> Path:
    """Path of a question set: an existing path, or a file name looked up under ``choice/``."""
    return _resolve(name, "choice", "question file")


def read_text(name: str | os.PathLike[str]) -> str:
    """The whole text of a corpus (see :func:`text_path`), decoded as UTF-8; a file that is not
    UTF-8 text (a binary file given by mistake) is a ValueError naming it."""
    path = text_path(name)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); give a "
                         "plain text file") from None


@dataclass(frozen=True)
class Question:
    """One multiple-choice item: the prompt, its choices and the index of the right one."""

    question: str
    choices: tuple[str, ...]
    answer: int


def _parse_question(line: str, where: str) -> Question:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    question, choices, answer = obj.get("question"), obj.get("choices"), obj.get("answer")
    if not isinstance(question, str):
        raise ValueError(f"{where}: 'question' must be a string, got {question!r}")
    if (
        not isinstance(choices, list)
        or len(choices) < 2
        or not all(isinstance(c, str) for c in choices)
    ):
        raise ValueError(f"{where}: 'choices' must be a list of 2 or more strings, got {choices!r}")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ValueError(
            f"{where}: 'answer' must be an integer index in [0, {len(choices)}), got {answer!r}"
        )
    return Question(question=question, choices=tuple(choices), answer=answer)


def load_questions(name: str | os.PathLike[str]) -> list[Question]:
    """Read and validate a JSONL question file; a bad line raises ValueError naming file:line."""
    path = choice_path(name)
    questions: list[Question] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            questions.append(_parse_question(line, f"{path}:{number}"))
    if not questions:
        raise ValueError(f"{path}: no questions in the file")
    return questions
