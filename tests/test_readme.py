"""The README lists every module and every config key (its generated sections stay in sync)."""

from pathlib import Path

from potstill.config import reference_rows

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_has_the_two_commands():
    assert "make demo" in README and "make test" in README


def test_every_module_in_the_file_tree():
    missing = [
        p.relative_to(ROOT).as_posix()
        for p in sorted((ROOT / "src" / "potstill").rglob("*.py"))
        if p.name != "__init__.py" and p.relative_to(ROOT).as_posix() not in README
    ]
    assert not missing, f"add to the README's file tree (python tools/readme_sections.py tree): {missing}"


def test_every_config_key_in_the_reference():
    missing = [key for key, _, _ in reference_rows() if f"`{key}`" not in README]
    assert not missing, f"add to the README's config reference (python tools/readme_sections.py config): {missing}"
