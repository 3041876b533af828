"""Copy benchmark result files into README.md between their markers, so the README quotes
exactly what the scripts produced.

A block in the README looks like::

    <!-- results:benchmarks/results/weight_error.md -->
    ... (replaced) ...
    <!-- /results -->

    .venv/bin/python scripts/update_readme.py
"""

from __future__ import annotations

import re
from pathlib import Path

from lowbit.storage.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- results:(?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def _demote(text: str) -> str:
    """Result files start with '# Title': nest their headings under the README's sections."""
    return re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", text, flags=re.M)


def _generated() -> dict[str, str]:
    """Result files written from the code itself before the README is filled."""
    from lowbit.export import rules

    table = ("# Export targets: which schemes each holds\n\n"
             "From `lowbit.export.rules` (the rules the exporters apply; `lowbit export --list`, "
             "and `--list --to T` for each reason). *lossless*: the codes and scales go out as "
             "stored and the target's library reads back bit-exact weights (compressed-tensors "
             "dequantizes `nvfp4` to bfloat16: lowbit's weights rounded to bfloat16); "
             "*requantize*: "
             "`--requantize` writes the nearest scheme the target holds; *refused*: neither. "
             "A writer also refuses a tensor whose rows are not whole groups, or an act-order "
             "permutation the target cannot hold, naming the tensor.\n\n"
             + rules.markdown_table() + "\n")
    return {"benchmarks/results/export_rules.md": table}


def main() -> None:
    for rel, text in _generated().items():
        write_text_atomic(ROOT / rel, text)
    readme = ROOT / "README.md"
    text = readme.read_text()

    def fill(m: re.Match) -> str:
        path = ROOT / m.group("path")
        body = _demote(path.read_text()) if path.is_file() else \
            f"*(not yet produced: run the script that writes `{m.group('path')}`)*\n"
        return m.group(1) + body + m.group(4)

    write_text_atomic(readme, BLOCK.sub(fill, text))


if __name__ == "__main__":
    main()
