"""What the code and the README cite is in the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_cited_equation_section_exists():
    sections = set(re.findall(r"^## (S\d+):", (ROOT / "docs" / "equations.md").read_text(), re.M))
    sources = [*ROOT.glob("kzoo/**/*.py"), *ROOT.glob("tests/*.py"), ROOT / "README.md",
               ROOT / "BENCHMARKS.md"]
    cited = set()
    for path in sources:
        if path == Path(__file__):
            continue
        text = path.read_text()
        assert "REFERENCE.md" not in text, f"{path} cites a file users do not have"
        cited |= set(re.findall(r"docs/equations\.md`? §(S\d+)", text))
    assert cited and cited <= sections, cited - sections


def _marked_blocks():
    """The README's Python blocks marked `<!-- runs-as-test -->`."""
    return re.findall(r"<!-- runs-as-test -->\n```python\n(.*?)```", (ROOT / "README.md").read_text(),
                      re.S)


def test_marked_readme_blocks_run_as_pasted(tmp_path, monkeypatch):
    blocks = _marked_blocks()
    assert blocks
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
