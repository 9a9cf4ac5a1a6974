"""The export and generate commands, end to end on a tiny model.

Run: pytest tests/test_commands.py
"""

import io
import json

import pytest
from helpers import tiny_model

from transduce.cli import main
from transduce.model.checkpoint import save_checkpoint
from transduce.runtime.generate import GenerationConfig, generate
from transduce.runtime.onnxruntime_backend import OnnxRuntimeBackend


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("commands")
    save_checkpoint(tiny_model(seed=71), root / "ckpt")
    assert (
        main(
            [
                "export",
                str(root / "ckpt"),
                "--output",
                str(root / "fp16"),
                "--precision",
                "fp16",
                "--top-k",
                "6",
            ]
        )
        == 0
    )
    return root


def test_export_writes_the_manifest_with_its_settings(exported):
    manifest = json.loads((exported / "fp16" / "manifest.json").read_text())
    assert manifest["precision"] == {
        "dtype": "float16",
        "layer_norm_fp32": True,
        "softmax_fp32": True,
    }
    assert manifest["top_k"] == 6 and manifest["opset"] == 20
    assert manifest["source"]["checkpoint"] == str(exported / "ckpt")


def test_generate_reads_ids_from_stdin(exported, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("5 6 7 2\n9 2\n"))
    assert main(["generate", str(exported / "fp16"), "--ids", "--max-new-tokens", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = generate(
        OnnxRuntimeBackend(exported / "fp16"), [[5, 6, 7, 2], [9, 2]], GenerationConfig(5)
    ).tokens
    assert [line.split("\t")[1] for line in lines] == [" ".join(map(str, t)) for t in expected]


def test_generate_refuses_bad_ids_with_the_rule(exported, capsys, caplog):
    assert main(["generate", str(exported / "fp16"), "--ids", "5 999"]) == 2
    assert "outside the vocabulary" in caplog.text


def test_generate_needs_an_export(tmp_path, caplog):
    assert main(["generate", str(tmp_path), "--ids", "5 2"]) == 2
    assert "export the model first" in caplog.text
