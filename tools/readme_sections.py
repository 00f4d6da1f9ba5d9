"""Print the README's generated sections: the file tree (one line per module) and the config reference.

    python tools/readme_sections.py tree     # the Files section
    python tools/readme_sections.py config   # the config reference table

``tests/test_readme.py`` checks that the README lists every module and every config key.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def first_doc_line(path: Path) -> str:
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except SyntaxError:
        return ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def tree() -> str:
    lines = ["```"]
    for base in ("src/potstill", "benchmarks", "examples/helpdesk", "tools"):
        for path in sorted((ROOT / base).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if path.name == "__init__.py" and not first_doc_line(path):
                continue
            lines.append(f"{rel:<46} {first_doc_line(path)}")
    lines.append("```")
    return "\n".join(lines)


def config() -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from potstill.config import reference_markdown

    return reference_markdown()


if __name__ == "__main__":
    print({"tree": tree, "config": config}[sys.argv[1]]())
