"""benchmarks/gpu.py --tiny: the GPU benchmark's whole code path (tunes, FLOP count, render, report)
on a CPU with the debug-size base, so that the script cannot rot while no GPU runs it."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_tiny_writes_its_tables(tmp_path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu

    out = tmp_path / "gpu.md"
    gpu.main(["--tiny", "--engines", "torch", "--peak-tflops", "1", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("# GPU benchmark (python benchmarks/gpu.py --tiny --engines torch --peak-tflops 1")
    rows = [line for line in text.splitlines() if line.startswith("| 32x32x4 |")]
    tunes = [r for r in rows if r.count("|") == 10]
    assert len(tunes) == 5, rows  # bf16 with and without checkpointing, fp32 both, fp16 + checkpointing
    for line in tunes:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert float(cells[5]) > 0 and float(cells[8]) == float(cells[8]), line  # s/step, a finite final loss
        assert cells[7] == "—"  # no accelerator peak on a CPU
    flops = next(r for r in rows if "(MFU)" in r)
    cells = [c.strip() for c in flops.strip("|").split("|")]
    assert float(cells[2].replace(",", "")) > 0 and float(cells[3]) > 0 and cells[4].endswith("%")  # counted FLOPs, a utilisation against --peak-tflops
    render = next(r for r in rows if r.count("|") == 5)
    assert float(render.split("|")[3]) > 0  # seconds per video
    assert "gpu" in sys.modules
