"""The `kzoo` command and the installed (non-editable) package."""

import dataclasses
import os
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
    assert "LNLSTMClassifier" in out


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


def test_errors_exit_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match="verification failed"):
        cli.main(["verify", str(tmp_path)])
    with pytest.raises(SystemExit, match="Unknown model 'nothing_here'"):
        cli.main(["evaluate", "nothing_here"])
    (tmp_path / "lnlstm_digits").mkdir()
    (tmp_path / "lnlstm_digits" / "metadata.json").write_text("{}")
    with pytest.raises(SystemExit, match="already holds a preset"):
        cli.main(["train", "lnlstm_digits", "--zoo", str(tmp_path)])


def test_train_and_evaluate_a_learned_optimizer(tmp_path, capsys, monkeypatch):
    from kzoo.optimizers import LSTMOptimizer
    from kzoo.optimizers import meta

    quick = dataclasses.replace(meta.PRESETS["lstm_optimizer_quadratic"], episodes_per_epoch=3,
                                trainer_args={**meta.PRESETS["lstm_optimizer_quadratic"]
                                              .trainer_args, "validation_problems": 8})
    monkeypatch.setitem(meta.PRESETS, "lstm_optimizer_quadratic", quick)
    cli.main(["train", "lstm_optimizer_quadratic", "--epochs", "2", "--zoo", str(tmp_path),
              "--log-dir", str(tmp_path / "tb")])
    assert "test final_loss" in capsys.readouterr().out
    preset = tmp_path / "lstm_optimizer_quadratic"
    optimizer = LSTMOptimizer.from_preset(str(preset))
    assert optimizer.preprocess is False and optimizer.output_scale == 1.0
    monkeypatch.setenv("KZOO_ZOO", str(tmp_path))
    cli.main(["evaluate", "lstm_optimizer_quadratic"])
    assert "yes" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="already holds a preset"):
        cli.main(["train", "lstm_optimizer_quadratic", "--zoo", str(tmp_path)])


def test_non_editable_install_loads_the_zoo(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("kzoo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kzoo/saved_models/lnlstm_digits/model.weights.h5" in names
    assert not [n for n in names if "/serving/" in n and n.startswith("kzoo/saved_models")]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q",
         "--target", str(tmp_path / "site"), str(wheel)],
        check=True,
    )
    script = (
        "import kzoo, json\n"
        "from kzoo import applications, training\n"
        "from kzoo.applications import presets\n"
        "assert kzoo.__file__.startswith(%r), kzoo.__file__\n"
        "model = applications.get('lnlstm_digits', weights='pretrained')\n"
        "print(json.dumps(training.evaluate(model, 'digits_rows', verbose=0)))\n"
    ) % str(tmp_path / "site")
    env = {k: v for k, v in os.environ.items() if k != "KZOO_ZOO"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env,
        capture_output=True, text=True, check=True,
    )
    assert '"accuracy": 0.96' in result.stdout, result.stdout + result.stderr[-2000:]
