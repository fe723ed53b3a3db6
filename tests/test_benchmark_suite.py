"""The benchmark suite's bookkeeping: tables, README insertion, memory probe, test observations."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402
import suite  # noqa: E402
import unseen_operators  # noqa: E402

from manifold_aps import pit_coverage  # noqa: E402


def _row(method, rmse, crps, sec, **kw):
    row = {
        "problem": "era5-uk",
        "nodes": 1617,
        "method": method,
        "rmse_mean": rmse,
        "rmse_single": rmse,
        "crps": crps,
        "spread_skill": "",
        "coverage_90": "",
        "train_seconds": 0.0,
        "seconds_per_sample": sec,
        "samples_per_second": 1 / sec,
        "peak_memory_mb": 1.0,
        "observations": 3,
        "samples": 8,
        "missing": 0.7,
        "dps_steps": "",
        "dps_guidance": "",
        "speedup_vs_dps": 1.0,
    }
    row.update(kw)
    return row


def test_report_marks_the_best_and_the_readme_keeps_the_rest(tmp_path):
    rows = [
        _row("kriging", 0.3, 0.12, 0.5, coverage_90=0.85, spread_skill=0.9),
        _row("nearest", 0.6, 0.4, 0.001),
        _row(
            "DPS",
            0.4,
            0.11,
            10.0,
            dps_steps=1000,
            dps_guidance=0.3,
            coverage_90=0.6,
            spread_skill=0.7,
        ),
    ]
    table = suite.report(tmp_path, rows, "test machine")
    lines = {
        line.split("|")[1].strip(): line
        for line in table.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    assert "**0.3**" in lines["kriging"] and "**0.11**" in lines["DPS (1000 steps, guidance 0.3)"]
    assert (
        "**" not in lines["nearest"] and "| – | – |" in lines["nearest"]
    )  # no spread, no coverage
    assert (
        "85%" in lines["kriging"] and (tmp_path / "suite.md").read_text().strip() == table.strip()
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{suite.README_START}\nold table\n{suite.README_END}\ntail\n")
    suite.insert_into_readme(readme, table)
    text = readme.read_text()
    assert (
        text.startswith("head\n")
        and text.endswith("tail\n")
        and "old table" not in text
        and table in text
    )
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="no <!-- benchmark-suite:start -->"):
        suite.insert_into_readme(readme, table)


def test_peak_memory_sees_an_allocation():
    with common.PeakMemory() as mem:
        x = torch.ones(25_000_000)  # 100 MB
        x += 1
    assert 80 < mem.peak_mb < 400


def test_holdout_datasets_are_observed_where_visible_and_scored_on_the_holdout():
    from manifold_aps.datasets import PriorDataset, TensorSource
    from manifold_aps.geometry import HealpixSphere
    from manifold_aps.operators import GaussianNoise

    d = HealpixSphere(2)
    visible = torch.arange(48) % 3 != 0
    holdout = torch.arange(48) % 6 == 0
    truth = torch.randn(1, 48, 1)
    ds = PriorDataset(
        "x",
        d,
        TensorSource(truth, truth),
        truth,
        "1",
        "",
        extra={"visible": visible, "holdout": holdout},
    )
    y, op, t, where = suite.test_observations(ds, GaussianNoise(0.1), 2, 0.7, seed=0)
    assert torch.equal(op.mask[:, :, 0], visible.expand(2, 48)) and torch.equal(
        where[:, :, 0], holdout.expand(2, 48)
    )
    assert torch.all(y[:, ~visible] == 0) and t.shape == (2, 48, 1)


def test_dps_is_tuned_on_validation_signals_never_the_test_fields():
    from manifold_aps.datasets import PriorDataset, TensorSource
    from manifold_aps.geometry import HealpixSphere
    from manifold_aps.operators import GaussianNoise
    from manifold_aps.posterior.distill import held_out_observations

    train, val, test = torch.zeros(4, 48, 1), torch.ones(3, 48, 1), torch.full((5, 48, 1), 2.0)
    ds = PriorDataset("x", HealpixSphere(2), TensorSource(train, val), test, "1", "")
    y, op, truth, where = common.mask_validation(ds, GaussianNoise(0.1), n=2)
    assert truth.shape == (2, 48, 1) and torch.all(truth == 1.0)
    assert torch.equal(where, ~op.mask.expand_as(truth)) and where.any()
    # the scored test observations are still the test split's
    assert torch.all(held_out_observations(ds, GaussianNoise(0.1), 2).truth == 2.0)
    with pytest.raises(ValueError, match="split"):
        held_out_observations(ds, GaussianNoise(0.1), 2, split="train")


def test_the_suite_scores_the_validation_split_when_asked_and_never_mixes_splits(tmp_path):
    from manifold_aps.datasets import PriorDataset, TensorSource
    from manifold_aps.geometry import HealpixSphere
    from manifold_aps.operators import GaussianNoise

    train, val, test = torch.zeros(4, 48, 1), torch.ones(3, 48, 1), torch.full((5, 48, 1), 2.0)
    ds = PriorDataset("x", HealpixSphere(2), TensorSource(train, val), test, "1", "")
    noise = GaussianNoise(0.1)
    assert torch.all(suite.test_observations(ds, noise, 2, 0.7, seed=0)[2] == 2.0)
    assert torch.all(suite.test_observations(ds, noise, 2, 0.7, 0, split="validation")[2] == 1.0)
    # a problem scored on held-out regions of one map has no other split
    held = PriorDataset(
        "x",
        HealpixSphere(2),
        TensorSource(val, val),
        val,
        "1",
        "",
        extra={
            "visible": torch.ones(48, dtype=torch.bool),
            "holdout": torch.zeros(48, dtype=torch.bool),
        },
    )
    with pytest.raises(SystemExit, match="no other split"):
        suite.test_observations(held, noise, 2, 0.7, 0, split="validation")
    # a validation run into a folder of test rows is refused before any work
    common.write_csv(tmp_path / "suite-era5-uk.csv", [_row("nearest", 1.0, 1.0, 1.0)])
    argv = ["suite.py", "--problems", "era5-uk", "--split", "validation", "--out", str(tmp_path)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", argv)
        mp.setattr(suite, "run_problem", lambda *a, **k: pytest.fail("ran before refusing"))
        with pytest.raises(SystemExit, match="test split, this run on validation"):
            suite.main()


def test_scores_carry_bootstrap_intervals_and_a_rank_histogram_the_table_shows(tmp_path):
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(6, 40, 1, generator=g, dtype=torch.float64)
    samples = truth + torch.randn(16, 6, 40, 1, generator=g, dtype=torch.float64)
    where = torch.ones_like(truth, dtype=torch.bool)
    out = suite.scores(samples, truth, where, torch.ones(40, dtype=torch.float64), point=False)
    for key in ("rmse_mean", "crps", "spread_skill", "coverage_90", "coverage_90_pit"):
        assert out[f"{key}_lo"] <= out[key] <= out[f"{key}_hi"], key
    hist = [float(v) for v in out["rank_histogram"].split(";")]
    assert len(hist) == 17 and sum(hist) == pytest.approx(1.0, abs=1e-4)
    # the PIT coverage is the one its rank histogram determines; a row written before the column
    # existed gets it from the histogram it stored
    assert out["coverage_90_pit"] == pytest.approx(
        float(pit_coverage(torch.tensor(hist, dtype=torch.float64))), abs=1e-4
    )
    older = {k: v for k, v in out.items() if not k.startswith("coverage_90_pit")}
    assert suite._pit_coverage(older) == pytest.approx(out["coverage_90_pit"], abs=1e-4)
    point = suite.scores(samples[:1], truth, where, torch.ones(40), point=True)
    assert "rank_histogram" not in point and point["coverage_90"] == ""
    row = _row("APS", 0.0, 0.0, 0.01)
    row.update(out)
    line = next(x for x in suite.report(tmp_path, [row], "m").splitlines() if x.startswith("| APS"))
    assert f"{out['coverage_90']:.0%} [{out['coverage_90_lo']:.0%}–" in line
    assert f"| {out['coverage_90_pit']:.0%} [{out['coverage_90_pit_lo']:.0%}–" in line
    suite.save_rank_histograms(tmp_path / "rank.png", "test", [row])
    assert (tmp_path / "rank.png").stat().st_size > 5_000


def test_a_rerun_of_one_method_keeps_the_others_and_recomputes_the_speed_ups(tmp_path):
    path = tmp_path / "suite-era5-uk.csv"
    common.write_csv(path, [_row("kriging", 0.3, 0.1, 0.5), _row("DPS", 0.4, 0.2, 1.0)])
    rows = suite.merged_rows(path, [_row("DPS", 0.5, 0.3, 10.0), _row("harmonic", 0.6, 0.4, 0.1)])
    assert [r["method"] for r in rows] == ["kriging", "harmonic", "DPS"]
    assert [float(r["rmse_mean"]) for r in rows] == [0.3, 0.6, 0.5]  # DPS: the new row
    assert [r["speedup_vs_dps"] for r in rows] == [20.0, 100.0, 1.0]
    with pytest.raises(SystemExit, match="samples"):
        suite.merged_rows(path, [_row("DPS", 0.5, 0.3, 10.0, samples=16)])


def _unseen_row(operator, method, crps, sec, rmse=1.0, single=1.0, steps=""):
    """A row of `unseen_operators.py`'s results with the columns its merge and targets read."""
    return {
        "problem": "p",
        "prior_steps": "3000",
        "operator": operator,
        "method": method,
        "crps": crps,
        "seconds_per_sample": sec,
        "rmse_mean": rmse,
        "rmse_single_median": single,
        "engine_steps": steps,
    }


def test_results_files_are_whole_after_every_row_and_a_failed_write_keeps_the_last(
    tmp_path, monkeypatch
):
    def row(operator, method, crps):
        sec = 0.5 if method == "AVI" else 5.0
        return {**_unseen_row(operator, method, crps, sec, steps="300"), "samples": 4}

    rows = []
    # the script writes after every row: the first ones have no DPS to compare with yet
    for r in (row("caps", "AVI", 0.3), row("caps", "DPS", 0.2)):
        rows.append(r)
        unseen_operators.write_results(tmp_path, unseen_operators.merge_rows([], rows))
        written = common.read_csv(tmp_path / "unseen_operators.csv")
        assert [w["method"] for w in written] == [x["method"] for x in rows]
    assert written[0]["speedup_vs_dps"] == "10.0" and written[1]["speedup_vs_dps"] == "1.0"
    targets = common.read_csv(tmp_path / "unseen_operators_targets.csv")
    assert targets[0]["crps_over_best_zero_shot"] == "1.5"
    assert "**0.2** / 5 s" in (tmp_path / "unseen_operators.md").read_text()

    def fail(self, rows):
        raise OSError("disk full")

    monkeypatch.setattr(common.csv.DictWriter, "writerows", fail)
    with pytest.raises(OSError, match="disk full"):
        common.write_csv(tmp_path / "unseen_operators.csv", [row("caps", "APS", 0.9)])
    assert [w["method"] for w in common.read_csv(tmp_path / "unseen_operators.csv")] == [
        "AVI",
        "DPS",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "unseen_operators.csv",
        "unseen_operators.md",
        "unseen_operators_targets.csv",
    ]


def test_the_amortized_vi_targets_are_checked_against_the_rows_of_one_run():
    row = _unseen_row
    rows = [
        row("caps", "DPS", 0.50, 2.0),
        row("caps", "MGDM-20", 0.40, 3.0),
        row("caps", "MGDM-8", 0.10, 0.1),  # the amortizer's own base: not the reference
        row("caps", "APS", 0.60, 0.01, steps="300"),
        row("caps", "implicit", 0.45, 0.01, steps="300"),
        row("caps", "AVI", 0.43, 0.1, steps="300"),
        row("caps", "DAPS-20", 0.46, 0.2),  # a candidate too: zero-shot, 20 network passes
        row("blur", "DPS", 0.10, 2.0),
        row("blur", "AVI", 0.105, 0.5, rmse=1.5, single=1.0, steps="300"),
        row("random", "APS", 0.1, 0.01, rmse=0.50, steps="300"),
        row("random", "AVI", 0.1, 0.1, rmse=0.54, steps="300"),
    ]
    checked = unseen_operators.engine_targets(rows)
    daps = next(r for r in checked if r["method"] == "DAPS-20")
    assert daps["crps_over_best_zero_shot"] == 1.15 and daps["time_saving_over_it"] == 15.0
    assert daps["engine_steps"] == "" and not daps["meets"]
    t = {r["operator"]: r for r in checked if r["method"] == "AVI"}
    caps = t["caps"]
    assert caps["best_zero_shot"] == "MGDM-20" and caps["crps_over_best_zero_shot"] == 1.075
    assert caps["time_saving_over_it"] == 30.0 and caps["crps_over_implicit"] == 0.956
    assert caps["meets"]
    # within the CRPS band, but only 4x faster and its mean runs away (1.5x the single RMSE)
    assert t["blur"]["time_saving_over_it"] == 4.0 and not t["blur"]["meets"]
    assert t["blur"]["mean_over_median_single_rmse"] == 1.5
    assert t["random"]["rmse_over_aps"] == 1.08 and t["random"]["meets"]
    for r in rows:
        r["samples"] = 8
    table = unseen_operators.report(rows)
    caps_line = next(line for line in table.splitlines() if line.startswith("| caps"))
    # columns in the script's order; the lowest CRPS of the operator in bold
    assert "| operator | APS | implicit | AVI | DAPS-20 | MGDM-8 | MGDM-20 | DPS |" in table
    assert caps_line.split(" | ")[5] == "**0.1** / 0.1 s" and "score prior 3000 steps" in table


def test_unseen_operator_coverage_reads_seventy_percent_for_a_calibrated_eight_sample_ensemble():
    # 8 exchangeable uniform samples and a truth: their own 5-95 % interval holds 0.9 * 7/9 = 70 %
    # of the truths (the tables' coverage), the rank histogram's 90 % level 90 %
    g = torch.Generator().manual_seed(5)
    draws = torch.rand(9, 2, 20000, 1, generator=g, dtype=torch.float64)
    where = torch.ones(2, 20000, 1, dtype=torch.bool)
    out = unseen_operators.scores(
        draws[:8], draws[8], where, torch.ones(20000, dtype=torch.float64)
    )
    assert out["coverage_90"] == pytest.approx(0.9 * 7 / 9, abs=0.01)
    assert out["coverage_90_pit"] == pytest.approx(0.9, abs=0.01)
