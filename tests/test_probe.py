"""`seqcompress probe`: outputs and their schema, valid PNG plots, resuming, baselines side by side."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from seqcompress.cli.main import app
from seqcompress.errors import InputError
from seqcompress.probe import Probe, ProbePlan, parse_cells, ratio_list

runner = CliRunner()
TINY = ["--d-model", "16", "--heads", "2", "--layers", "1", "--max-steps", "2", "--batch-size", "4"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def probe(*args) -> object:
    return runner.invoke(app, ["probe", *[str(a) for a in args]])


def assert_png(path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert np.ptp(pixels[..., :3]) > 0  # something was drawn


def test_text_probe_writes_all_four_outputs(tmp_path, text_file):
    out = tmp_path / "r"
    result = probe("--domain", "text", text_file, "--ratios", "0.5,0.25", "--seq-lens", "16,32", "--seeds", "2",
                   *TINY, "-o", out, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads(result.stdout)
    assert {r["method"] for r in summary["rows"]} == {"attention"}
    assert {(r["seq_len"], r["ratio"]) for r in summary["rows"]} == {(16, 0.5), (16, 0.25), (32, 0.5), (32, 0.25)}

    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "seqcompress-probe/1" and results["metric"] == "token_accuracy"
    assert results["plan"]["cells"] == [[16, 0.5], [16, 0.25], [32, 0.5], [32, 0.25]]
    assert set(results["machine"]) >= {"processor", "cpus", "device", "torch"}
    assert len(results["cells"]) == 8
    for cell in results["cells"]:
        assert set(cell) >= {"key", "method", "seq_len", "ratio", "seed", "metrics", "value", "latent_len",
                             "latent_floats_per_symbol", "bits_per_symbol", "dtype", "parameters", "steps",
                             "seconds", "test_windows"}
        assert 0.0 <= cell["value"] <= 1.0 and cell["value"] == cell["metrics"]["token_accuracy"]
        assert cell["steps"] == 2 and cell["dtype"] == "float16"
        # m = ceil(L * ratio) latents of d_model = 16 floats: floats per symbol = 16 * ratio for full windows
        assert cell["latent_floats_per_symbol"] >= 16 * cell["ratio"]
        assert cell["bits_per_symbol"] == pytest.approx(16 * cell["latent_floats_per_symbol"])
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 8 and float(rows[0]["value"]) == results["cells"][0]["value"]
    report = (out / "report.md").read_text()
    assert "| ratio | n = 16 | n = 32 |" in report and "| 1/4 |" in report
    assert_png(out / "metric_vs_ratio.png")


def test_baselines_run_side_by_side_and_are_ranked(tmp_path, text_file):
    out = tmp_path / "r"
    result = probe("--domain", "text", text_file, "--ratios", "0.5", "--seq-lens", "16", "--seeds", "1", *TINY,
                   "--baselines", "-o", out, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert sorted(r["method"] for r in rows) == ["attention", "linformer", "meanpool", "perceiver"]
    assert sorted(r["rank"] for r in rows) == [1, 2, 3, 4]
    values = [r["mean"] for r in sorted(rows, key=lambda r: r["rank"])]
    assert values == sorted(values, reverse=True)  # higher token accuracy ranks first
    params = {r["method"]: r["parameters"] for r in rows}
    assert all(abs(p / params["attention"] - 1) < 0.10 for p in params.values())
    assert_png(out / "methods_vs_ratio.png")
    report = (out / "report.md").read_text()  # one row per cell, ours first, the winner in bold
    header = next(line for line in report.splitlines() if line.startswith("| n → latents"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:3] == ["n → latents", "ratio", "attention"] and set(columns[2:]) == set(params)
    row = next(line for line in report.splitlines() if line.startswith("| 16 → 8 | 1/2 |"))
    best = max(rows, key=lambda r: r["mean"])
    assert f"**{best['mean']:.4f} ± {best['std']:.4f}**" in row and row.count("**") == 2


def test_classical_baselines_of_a_domain_get_the_same_float_budget(tmp_path):
    from seqcompress.domains.timeseries import sample_path

    out = tmp_path / "r"
    result = probe("--domain", "timeseries", sample_path(), "--ratios", "0.25", "--seq-lens", "8", "--seeds", "1",
                   *TINY, "--latent-dim", "8", "--baselines", "-o", out, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    cells = json.loads((out / "results.json").read_text())["cells"]
    by = {c["method"]: c for c in cells}
    assert set(by) == {"attention", "perceiver", "linformer", "meanpool", "dct", "pca"}
    assert by["dct"]["kind"] == "classical" and by["dct"]["seed"] is None
    assert by["dct"]["latent_floats_per_symbol"] == by["attention"]["latent_floats_per_symbol"]
    # 2 latents x 8 floats per 64 time steps of the one co2 channel: a quarter of the DCT keeps most of it
    assert 0 < by["dct"]["metrics"]["nrmse"] < 0.2


def test_a_killed_probe_resumes_without_redoing_finished_cells(tmp_path, text_file, monkeypatch):
    from seqcompress.domains import get_domain

    plan = ProbePlan(domain="text", domain_state={}, data=[str(text_file)], cells=[(16, 0.5), (16, 0.25)], seeds=2,
                     model={"d_model": 16, "heads": 2, "layers": 1, "ffn_dim": 32, "latent_dim": 16},
                     training={"max_steps": 1, "epochs": None, "batch_size": 4})
    calls = []
    original = Probe.model_cell

    def killed_after_three(self, *args):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the probe is killed while training its fourth cell
        calls.append(args[:4])
        return original(self, *args)

    monkeypatch.setattr(Probe, "model_cell", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        Probe(plan, get_domain("text"), tmp_path).run()
    first = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert len(first) == 3

    monkeypatch.setattr(Probe, "model_cell", lambda self, *args: calls.append(args[:4]) or original(self, *args))
    resumed = Probe(plan, get_domain("text"), tmp_path)
    results = resumed.run()
    assert len(calls) == 4 and len(results["cells"]) == 4  # only the unfinished cell ran
    assert results["cells"][:3] == first
    assert len({c["key"] for c in results["cells"]}) == 4


def test_a_different_plan_in_the_same_directory_is_refused_unless_forced(tmp_path, text_file):
    out = tmp_path / "r"
    assert probe("--domain", "text", text_file, "--ratios", "0.5", "--seq-lens", "16", "--seeds", "1", *TINY,
                 "-o", out, "-q").exit_code == 0
    again = probe("--domain", "text", text_file, "--ratios", "0.25", "--seq-lens", "16", "--seeds", "1", *TINY,
                  "-o", out, "-q")
    assert again.exit_code == 1
    assert again.stderr.strip().splitlines() == [
        f"error: {out} holds a probe with different settings; use another --output directory, or --force to "
        "start over"]
    forced = probe("--domain", "text", text_file, "--ratios", "0.25", "--seq-lens", "16", "--seeds", "1", *TINY,
                   "-o", out, "-q", "--force")
    assert forced.exit_code == 0
    assert [c["ratio"] for c in json.loads((out / "results.json").read_text())["cells"]] == [0.25]


def test_paper_cells_and_ratio_lists_parse():
    assert parse_cells("512:256,512:128,128:64,128:72") == [(512, 0.5), (512, 0.25), (128, 0.5), (128, 0.5625)]
    assert ratio_list("1/2, 0.25,1/16") == [0.5, 0.25, 0.0625]
    for bad in ("512", "512:0", "128:256", "a:b"):
        with pytest.raises(InputError):
            parse_cells(bad)
    with pytest.raises(InputError):
        ratio_list("half")


@pytest.mark.parametrize("args,expected", [
    (["--ratios", "0.5"], "give a training budget per run"),
    (["--ratios", "2", "--max-steps", "1"], "--ratios must be in (0, 1]"),
    (["--seeds", "0", "--max-steps", "1"], "--seeds must be at least 1"),
    (["--dtype", "int4", "--max-steps", "1"], "unknown --dtype"),
    (["--methods", "attention,lstm", "--max-steps", "1"], "unknown method(s) ['lstm']"),
])
def test_bad_probe_options_give_one_clear_line(tmp_path, args, expected):
    result = probe("--domain", "text", *args, "-o", tmp_path / "r")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_paper_protocol_sets_the_papers_cells_and_all_reducers(tmp_path, text_file):
    out = tmp_path / "r"
    result = probe("--paper", "cpu", text_file, "--seeds", "1", "--max-steps", "1", "-o", out, "-q")
    assert result.exit_code == 0, result.output + result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["plan"]["cells"] == [[512, 0.5], [512, 0.25], [128, 0.5], [128, 0.5625]]
    assert results["plan"]["model"]["d_model"] == 128 and results["plan"]["batch_tokens"] == 1024
    training = results["plan"]["training"]  # the paper's schedule, not squeezed into the short budget
    assert (training["lr"], training["lr_end"], training["decay_epochs"], training["epochs"]) == (1e-3, 1e-4, 5.0, 0.3)
    assert {c["method"] for c in results["cells"]} == {"attention", "perceiver", "linformer", "meanpool"}
    assert {(c["seq_len"], c["latent_len"]) for c in results["cells"]} == {(512, 256), (512, 128), (128, 64),
                                                                           (128, 72)}
    assert probe("--paper", "gpu", text_file, "-o", tmp_path / "x").exit_code == 1


def test_attention_variants_are_methods_of_their_own(tmp_path, text_file):
    out = tmp_path / "r"
    result = probe("--domain", "text", text_file, "--cells", "32:8", "--seeds", "1", *TINY, "--methods",
                   "attention,linformer", "--attention", "full,local,lowrank", "--positions", "learned,rope",
                   "--stages", "1,2", "-O", "window=2", "-O", "rank=4", "-o", out, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    methods = {r["method"] for r in json.loads(result.stdout)["rows"]}
    # lowrank cannot use rope: that combination is left out, every other one is run
    assert methods == {"linformer", "attention", "attention+2stages", "attention+rope", "attention+rope+2stages",
                       "attention+local", "attention+local+2stages", "attention+local+rope",
                       "attention+local+rope+2stages", "attention+lowrank", "attention+lowrank+2stages"}
    cells = {c["method"]: c for c in json.loads((out / "results.json").read_text())["cells"]}
    assert all(c["latent_len"] == 8 for c in cells.values())
    plan = json.loads((out / "results.json").read_text())["plan"]
    assert plan["attention"] == ["full", "local", "lowrank"] and plan["stages"] == [1, 2]


def test_stage_ratios_reach_the_cells_latent_length_exactly():
    from seqcompress.lengths import latent_length
    from seqcompress.probe import stage_ratios

    for n, ratio, count in [(512, 0.25, 2), (128, 0.5, 2), (128, 72 / 128, 2), (512, 0.25, 3)]:
        ratios = stage_ratios(n, ratio, count)
        length = n
        for r in ratios:
            length = latent_length(length, r)
        assert len(ratios) == count and length == latent_length(n, ratio)
    assert stage_ratios(512, 0.25, 2) == [0.5, 0.5]
