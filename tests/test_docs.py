"""What the code and the README cite is in the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The zoo's learned optimizers: the README lists them in their own table.
LEARNED_OPTIMIZER_PRESETS = {
    "lstm_optimizer_digits_mlp",
    "lstm_optimizer_general",
    "lstm_optimizer_general_direct",
    "lstm_optimizer_general_long_unroll",
    "lstm_optimizer_general_moments",
    "lstm_optimizer_general_noisy",
    "lstm_optimizer_general_rescaled",
    "lstm_optimizer_quadratic",
}


def test_every_cited_equation_section_exists():
    sections = set(re.findall(r"^## (S\d+):", (ROOT / "docs" / "equations.md").read_text(), re.M))
    sources = [
        *ROOT.glob("kzoo/**/*.py"),
        *ROOT.glob("tests/*.py"),
        ROOT / "README.md",
        ROOT / "BENCHMARKS.md",
    ]
    cited = set()
    for path in sources:
        if path == Path(__file__):
            continue
        text = path.read_text()
        assert "REFERENCE.md" not in text, f"{path} cites a file users do not have"
        cited |= set(re.findall(r"docs/equations\.md`? §(S\d+)", text))
    assert cited and cited <= sections, cited - sections


def test_every_readme_python_block_runs_as_pasted(tmp_path, monkeypatch):
    """Each Python block of the README, in a fresh namespace and directory, with
    every `epochs=N` cut to 1 to keep the suite fast."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)
    for number, block in enumerate(blocks):
        code = re.sub(r"epochs=\d+", "epochs=1", block)
        exec(compile(code, f"README.md python block {number}", "exec"), {"__name__": "readme"})


def test_readme_zoo_table_matches_the_presets_metadata():
    import json
    import math

    from kzoo.zoo import presets

    rows = re.findall(
        r"^\| `(\w+)` \| [^|]+ \| [^|]+ \| (accuracy|mean IoU) ([\d.]+) \|$|"
        r"^\| `(\w+)` \| [^|]+ \| [^|]+ \| ([\d.]+) bits/char \|$",
        (ROOT / "README.md").read_text(),
        re.M,
    )
    checked = set()
    for name, metric, value, lm_name, bits in rows:
        name = name or lm_name
        test = json.loads((presets.resolve(name) / presets.METADATA_FILE).read_text())["metrics"][
            "test"
        ]
        if bits:
            recorded, shown = test["loss"] / math.log(2.0), bits
        elif metric == "accuracy":
            recorded, shown = test["accuracy"], value
        else:
            recorded = test.get("mean_iou", test.get("segmentation_logits_mean_iou"))
            shown = value
        decimals = len(shown.split(".")[1])
        assert round(recorded, decimals) == float(shown), (name, recorded, shown)
        checked.add(name)
    assert checked == set(presets.available_presets()) - LEARNED_OPTIMIZER_PRESETS, checked


def test_readme_learned_optimizer_table_matches_the_presets_metadata():
    import json

    from kzoo.zoo import presets

    rows = re.findall(
        r"^\| `(lstm_optimizer_\w+)` \| [^|]+ \| (-?[\d.]+) \((\d+) problems(?: per family)?\) \|",
        (ROOT / "README.md").read_text(),
        re.M,
    )
    assert {name for name, _, _ in rows} == LEARNED_OPTIMIZER_PRESETS
    for name, shown, problems in rows:
        test = json.loads((presets.resolve(name) / presets.METADATA_FILE).read_text())["metrics"][
            "test"
        ]
        assert round(test["final_loss"], len(shown.split(".")[1])) == float(shown), name
        assert test["problems"] == int(problems), name


def test_benchmarks_gpu_block_is_what_gpu_py_made_of_its_json():
    """The GPU rows of BENCHMARKS.md come from `benchmarks/results/gpu.json`
    (no hand-edited numbers)."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("gpu", ROOT / "benchmarks" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    results = json.loads((ROOT / "benchmarks" / "results" / "gpu.json").read_text())
    document = (ROOT / "BENCHMARKS.md").read_text()
    block = document[document.index(gpu.BEGIN) + len(gpu.BEGIN) : document.index(gpu.END)]
    assert block.strip() == gpu.markdown(results).strip()
    assert "H200" in block and "| torch | LSTM/char_lm_256u_b64_t64 |" in block
