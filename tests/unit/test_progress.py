"""Progress in a log that is not a terminal (`ray job logs`, a pod's log, CI): a few lines, not a bar redrawn."""

from __future__ import annotations

import logging

from motioncrafter import progress as progress_module
from motioncrafter.progress import progress



def test_tuning_with_progress_on_logs_lines_not_a_redrawn_bar(bases, clip, capfd, caplog, mc) -> None:
    from motioncrafter.config import AdapterConfig
    from motioncrafter.trainer import tune_clip

    caplog.set_level(logging.INFO, logger="motioncrafter.progress")
    tune_clip(bases["unet3d"], clip.frames, clip.caption, mc.tune_cfg(mode="temporal_only", steps=4, progress=True, log_every=1), AdapterConfig(rank=2))
    err = capfd.readouterr().err
    assert "\r" not in err and "tune" not in err  # no tqdm bar (it wrote a line per refresh here)
    lines = [r.getMessage() for r in caplog.records if r.name == "motioncrafter.progress"]
    assert len(lines) == 1 and lines[0].startswith("tune temporal_only: 4/4 it (100%) in ") and "loss=" in lines[0]


def test_lines_come_at_most_every_interval(monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO, logger="motioncrafter.progress")
    for every, expected in ((3600.0, 1), (0.0, 6)):  # never due: only the last line; always due: one per step
        caplog.clear()
        monkeypatch.setattr(progress_module, "LOG_EVERY_SECONDS", every)
        assert list(progress(range(5), desc="render", unit="motion")) == list(range(5))
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == expected and lines[-1].startswith("render: 5/5 motion (100%)")
    caplog.clear()
    with progress(total=3, desc="train", unit="clip") as bar:  # the driver's way: n set, then refresh
        bar.n = 2
        bar.set_postfix(leased=1, failed=0)
        bar.refresh()
    assert [r.getMessage().split(" in ")[0] for r in caplog.records] == ["train: 2/3 clip (67%)", "train: 2/3 clip (67%)"]
    assert caplog.records[-1].getMessage().endswith("leased=1, failed=0")


def test_disabled_progress_logs_nothing(caplog) -> None:
    caplog.set_level(logging.INFO, logger="motioncrafter.progress")
    assert list(progress(range(3), desc="denoise", disable=True)) == [0, 1, 2]
    assert not caplog.records
