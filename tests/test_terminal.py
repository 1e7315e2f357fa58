"""What the terminal shows: the compact verdict table of a comparison (fits 100 columns, the
verdict whole), the live progress bar (loss, validation metric, stage), no selection for a
comparison."""

from __future__ import annotations

import io

from rich.console import Console

from stagetrain.report import command as report
from stagetrain.report import compare

ARMS = ("scratch", "layerwise_supervised", "finetune", "grow")


def _rows(label_fractions=(0.01, 1.0), seeds=(0, 1, 2)) -> list[dict]:
    rows = []
    for arm_i, arm in enumerate(ARMS):
        for frac in label_fractions:
            for seed in seeds:
                acc = 0.9 + 0.01 * (arm_i % 3) - 0.02 * (frac < 0.5) + 0.001 * seed + 0.003 * ((seed * 7 + arm_i) % 3)
                rows.append({"run": f"/sweep/{arm}-{frac}-{seed}", "strategy": arm, "status": "completed",
                             "dataset.label_fraction": frac, "seed": seed, "test/acc": acc,
                             "val/acc": acc, "test/loss": 1 - acc, "flops": 1.234e12, "seconds": 12.5,
                             "stop_reason": "epochs", "error": ""})
    return rows


def _verdict_text(width: int = 100) -> str:
    rows = _rows()
    by = compare.label_controls(rows, ["strategy", "dataset.label_fraction"])
    groups = compare.with_intervals(report.group_rows(rows, by), rows, by)
    console = Console(record=True, width=width, file=io.StringIO())
    compare.print_verdicts(groups, by, "sweep outputs/multirun/2026-12-05/06-30-00_ab12cd: test/acc",
                           console=console)
    return console.export_text()


def test_verdict_table_fits_100_columns_with_whole_verdicts():
    text = _verdict_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100, text
    for word in ("better", "no evidence", "control", "layerwise_supervised", "label_fraction=0.01"):
        assert word in text, text
    assert "…" not in text and "..." not in text, text
    assert "better" in next(line for line in lines if line.strip().startswith("finetune"))


def test_verdict_table_on_a_narrow_terminal_keeps_numbers_and_verdicts_whole():
    text = _verdict_text(width=80)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "no evidence" in text and "…" not in text, text


def _bar_text(reporter) -> str:
    out = Console(record=True, width=160, file=io.StringIO())
    out.print(reporter._bar.get_renderable())
    return out.export_text()


def test_progress_bar_shows_stage_loss_and_validation_metric():
    import logging

    from stagetrain.progress import Reporter

    handlers = list(logging.getLogger().handlers)  # the rich mode routes logging through its console
    console = Console(record=True, width=160, file=io.StringIO(), force_terminal=True)
    reporter = Reporter("rich", console=console)
    try:
        reporter.stage_start("stage 2/3 block2", total_steps=10)
        reporter.step("epoch 1/2", [1.5, 3.0, 4.0])  # loss sum, correct, samples: running loss 0.375
        text = _bar_text(reporter)
        assert "stage 2/3 block2" in text and "epoch 1/2" in text and "loss 0.375" in text, text
        reporter.epoch_end("epoch done", {"train/loss": 0.3, "val/loss": 0.41, "val/acc": 0.9123})
        reporter.LOSS_EVERY = 0.0
        reporter.step("epoch 2/2", [0.5, 1.0, 2.0])
        text = _bar_text(reporter)
        assert "loss 0.25" in text and "val/acc 0.9123" in text and "1/10" not in text and "2/10" in text, text
    finally:
        reporter.close()
        logging.getLogger().handlers[:] = handlers
