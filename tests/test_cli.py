"""The `kzoo` command and the installed (non-editable) package."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kzoo import cli

ROOT = Path(__file__).resolve().parent.parent


def test_list_shows_registered_models(capsys):
    cli.main(["list"])
    out = capsys.readouterr().out
    for name in ("lnlstm_digits", "lstm_digits", "lnlstm_char_lm", "lstm_char_lm"):
        assert name in out
    row = next(line for line in out.splitlines() if line.startswith("lnlstm_digits "))
    assert "LNLSTMClassifier" in row and "accuracy 0.9667" in row and "20,490" in row
    assert "shipped: " in row


def test_help_list_and_info_import_no_framework():
    """`kzoo --help`, `kzoo list` and `kzoo info` start without importing Keras
    or a backend (the BENCHMARKS.md start-up section times them)."""
    script = (
        "import sys, contextlib, io\n"
        "from kzoo import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.main(['list']); cli.main(['info', 'lnlstm_digits'])\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted({'keras', 'tensorflow', 'jax', 'torch', 'numpy'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_cli_tunes_the_allocator_before_loading_a_framework():
    script = (
        "import sys, contextlib, io\n"
        "from unittest import mock\n"
        "from kzoo import cli, runtime\n"
        "calls = []\n"
        "def spy():\n"
        "    calls.append(sorted({'keras', 'tensorflow', 'jax', 'torch'} & set(sys.modules)))\n"
        "with mock.patch.object(runtime, 'tune_cpu_allocator', spy):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        cli.main(['list'])\n"
        "print(calls)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[[]]", result.stdout + result.stderr


def test_info_prints_the_model_card(capsys):
    cli.main(["info", "rwn_texture_scenes"])
    out = capsys.readouterr().out
    for expected in (
        "builder: RWN",
        "input image: float32 [None, 64, 64, 3]",
        "outputs: segmentation_logits, affinities",
        "test: ",
        "sha256 config.json",
        "training_command: ",
    ):
        assert expected in out, expected
    cli.main(["info", "lstm_optimizer_digits_mlp"])
    assert "(optimizer, " in capsys.readouterr().out


def test_evaluate_export_verify(tmp_path, capsys):
    cli.main(["evaluate", "lnlstm_digits"])
    out = capsys.readouterr().out
    assert "lnlstm_digits" in out and "yes" in out
    cli.main(["export", "lnlstm_digits", "--base-dir", str(tmp_path)])
    export = tmp_path / "lnlstm_digits" / "serving" / "1"
    assert (export / "saved_model.pb").is_file()
    cli.main(["verify", str(export)])
    out = capsys.readouterr().out
    assert "pixel_rows" in out and "class_probabilities" in out and "ok" in out


def _fails(capsys, argv, code=1):
    """Runs the CLI expecting a failure; returns its stderr without the
    progress lines (`[i/n] ...`, `  -> ...`)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == code, exit_info.value.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return "".join(
        line for line in err.splitlines(keepends=True) if not re.match(r"\[\d+/\d+\] |  -> ", line)
    )


def test_errors_are_one_line_with_a_nonzero_exit(tmp_path, capsys):
    err = _fails(capsys, ["evaluate", "nothing_here"])
    assert err.count("\n") == 1 and "Unknown name 'nothing_here'; models: " in err
    assert "learned optimizers: lstm_optimizer_digits_mlp" in err
    (tmp_path / "zoo" / "lnlstm_digits").mkdir(parents=True)
    (tmp_path / "zoo" / "lnlstm_digits" / "metadata.json").write_text("{}")
    err = _fails(capsys, ["train", "lnlstm_digits", "--zoo", str(tmp_path / "zoo")])
    assert err.count("\n") == 1 and "already holds a preset" in err
    # Invalid arguments: argparse's usage line and one error line, exit 2.
    assert "must be an integer >= 1" in _fails(
        capsys, ["train", "lnlstm_digits", "--epochs", "0"], code=2
    )
    assert "must be an integer >= 1" in _fails(
        capsys, ["export", "lnlstm_digits", "--version", "-5"], code=2
    )
    # An OSError: the base directory is a file.
    (tmp_path / "file").write_text("")
    err = _fails(capsys, ["export", "lnlstm_digits", "--base-dir", str(tmp_path / "file")])
    assert err.count("\n") == 1 and "kzoo export: error:" in err
    # A learned optimizer does not export.
    err = _fails(capsys, ["export", "lstm_optimizer_quadratic", "--base-dir", str(tmp_path)])
    assert err.count("\n") == 1 and "only models export for TF Serving" in err
    # --debug shows the traceback instead.
    with pytest.raises(ValueError, match="Unknown name"):
        cli.main(["--debug", "evaluate", "nothing_here"])


def test_verify_prints_one_line_per_failed_export(tmp_path, capsys):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    err = _fails(
        capsys, ["verify", str(tmp_path / "a"), str(tmp_path / "b")], code="verification failed"
    )
    lines = err.splitlines()
    assert len(lines) == 2 and all("not a kzoo SavedModel export" in line for line in lines)


def test_train_writes_to_the_user_zoo_and_list_says_it_shadows(tmp_path, capsys, monkeypatch):
    from kzoo.optimizers import LSTMOptimizer
    from kzoo.zoo import registry
    from kzoo.zoo import tasks

    item = registry.entry("lstm_optimizer_quadratic")
    quick = dataclasses.replace(item, args={**item.args, "validation_problems": 8})
    monkeypatch.setitem(registry._REGISTRY, item.name, quick)
    task = tasks.TASKS[item.task]
    monkeypatch.setitem(tasks.TASKS, task.name, dataclasses.replace(task, episodes_per_epoch=3))
    monkeypatch.setenv("KZOO_ZOO", str(tmp_path / "user_zoo"))
    cli.main(
        ["train", "lstm_optimizer_quadratic", "--epochs", "2", "--log-dir", str(tmp_path / "tb")]
    )
    out = capsys.readouterr().out
    preset = tmp_path / "user_zoo" / "lstm_optimizer_quadratic"
    assert "test final_loss" in out and f"Wrote {preset}" in out and "shadows" in out
    optimizer = LSTMOptimizer.from_preset("lstm_optimizer_quadratic")  # the user's, by name
    assert optimizer.preprocess is False and optimizer.output_scale == 1.0
    cli.main(["evaluate", "lstm_optimizer_quadratic"])
    assert "yes" in capsys.readouterr().out  # matches the user preset's recorded loss
    cli.main(["list"])
    row = next(
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("lstm_optimizer_quadratic")
    )
    assert f"user: {preset} (SHADOWS the shipped preset)" in row
    err = _fails(capsys, ["train", "lstm_optimizer_quadratic"])
    assert "already holds a preset" in err
    # Resuming continues the checkpointed run to 3 epochs in all.
    cli.main(["train", "lstm_optimizer_quadratic", "--epochs", "3", "--resume", "--overwrite"])
    metadata = json.loads((preset / "metadata.json").read_text())
    assert metadata["meta_training"]["epochs_run"] == 3
    assert len(metadata["meta_training"]["history"]["meta_loss"]) == 3
    shutil.rmtree(preset)  # an interrupted run: a checkpoint, no preset
    err = _fails(capsys, ["train", "lstm_optimizer_quadratic"])
    assert "holds the checkpoint of an earlier run" in err and "--resume" in err
    err = _fails(capsys, ["train", "lnlstm_digits", "--resume"])
    assert "--resume continues a learned optimizer's meta-training" in err
    shutil.rmtree(tmp_path / "user_zoo" / ".checkpoints")
    err = _fails(capsys, ["train", "lstm_optimizer_quadratic", "--resume"])
    assert "no checkpoint in" in err


def test_non_editable_install_loads_the_zoo(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("kzoo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kzoo/saved_models/lnlstm_digits/model.weights.h5" in names
    assert not [n for n in names if "/serving/" in n and n.startswith("kzoo/saved_models")]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(tmp_path / "site"),
            str(wheel),
        ],
        check=True,
    )
    script = (
        "import kzoo, json\n"
        "from kzoo import applications\n"
        "from kzoo.zoo import models\n"
        "from kzoo.zoo import presets\n"
        "assert kzoo.__file__.startswith(%r), kzoo.__file__\n"
        "model = applications.get('lnlstm_digits', weights='pretrained')\n"
        "print(json.dumps(models.score(model, 'digits_rows', verbose=0)))\n"
    ) % str(tmp_path / "site")
    env = {k: v for k, v in os.environ.items() if k != "KZOO_ZOO"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"accuracy": 0.96' in result.stdout, result.stdout + result.stderr[-2000:]


@pytest.mark.parametrize(
    "name, drift, matches",
    [
        ("lstm_optimizer_general_noisy", 1.05, True),  # within a learned optimizer's 10 %
        ("lstm_optimizer_general_noisy", 1.2, False),
        ("lnlstm_digits", 1.05, False),  # a model's loss must reproduce to 0.1 %
        ("lnlstm_digits", 1.0005, True),
    ],
)
def test_evaluate_compares_with_each_kinds_tolerance(monkeypatch, name, drift, matches):
    from kzoo.zoo import presets
    from kzoo.zoo import registry

    item = registry.entry(name)
    key = registry.KINDS[item.kind].score
    recorded = presets.read_metadata(name, kind=item.kind)[1]["metrics"]["test"]
    rescored = {k: v for k, v in recorded.items() if not isinstance(v, dict)}
    rescored[key] = recorded[key] * drift
    if item.kind == "model":
        rescored.setdefault("accuracy", 0.0)
    monkeypatch.setattr(registry, "evaluate", lambda _: rescored)
    assert cli._evaluate([item]) is matches
