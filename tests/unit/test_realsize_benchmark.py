"""benchmarks/realsize.py --tiny: one process per config, each config's own peak RSS, and the memory guard."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| modelscope |")]


def test_realsize_tiny_measures_each_config_in_its_own_process(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import realsize

    out = tmp_path / "realsize.md"
    realsize.main(["--tiny", "--families", "modelscope", "--kinds", "lora", "--only", "fp32,bf16+ckpt", "--threads", "1",
                   "--out", str(out)])
    text = out.read_text()
    rows = _rows(text)
    assert [r[2] for r in rows] == ["fp32", "bf16+ckpt"] and all(r[-1] == "ok" for r in rows), rows
    for r in rows:
        assert float(r[5]) > 0 and float(r[6]) >= float(r[7]) > 0  # s/step; the peak is at least the built base
    assert "- modelscope lora: fp32 " in text and "x**" in text
    assert "over `temporal_only`'s" not in text  # one mode: no cost lines

    realsize.main(["--tiny", "--families", "modelscope", "--kinds", "lora", "--only", "fp32", "--threads", "1",
                   "--modes", "motioncrafter", "temporal_only", "--out", str(out)])
    text = out.read_text()
    assert [r[3] for r in _rows(text)] == ["motioncrafter", "temporal_only"]
    assert "- modelscope lora fp32: motioncrafter " in text and "/ temporal_only " in text

    realsize.main(["--tiny", "--families", "modelscope", "--kinds", "lora", "--only", "fp32", "--max-gib", "0.2",
                   "--out", str(out)])
    (row,) = _rows(out.read_text())
    assert row[-1].startswith("does not fit: stopped at") and "--max-gib 0.2" in row[-1]
    assert "not measured" in out.read_text()
