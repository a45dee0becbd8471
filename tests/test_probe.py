"""`seqcompress probe`: outputs and their schema, valid PNG plots, resuming, baselines side by side, the
classical codecs' registry, the chronological split and the default budget."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from seqcompress.baselines import BASELINES, Baseline, baselines_for, register_baseline, unavailable_baselines
from seqcompress.cli.main import app
from seqcompress.cli.options import ratio_list
from seqcompress.domain import bundled
from seqcompress.domains.audio_opus import opus_problem
from seqcompress.errors import InputError
from seqcompress.probe import DEFAULT_BUDGET, Probe, ProbePlan, parse_cells, shifted_windows, tail_split

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
TINY = ["--d-model", "16", "--heads", "2", "--layers", "1", "--max-steps", "2", "--batch-size", "4"]
TINY_MODEL = {"d_model": 16, "heads": 2, "layers": 1, "ffn_dim": 32, "latent_dim": 16}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CO2 = bundled("co2_sample.csv")  # weekly Mauna Loa CO2: 2,284 rows, one channel, 59 missing values


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
    result = probe("--domain", "text", text_file, "--ratios", "0.5,0.25", "--seq-len", "16,32", "--seeds", "2",
                   *TINY, "-o", out, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads(result.stdout)
    assert {r["method"] for r in summary["rows"]} == {"attention"}
    assert {(r["seq_len"], r["ratio"]) for r in summary["rows"]} == {(16, 0.5), (16, 0.25), (32, 0.5), (32, 0.25)}

    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "seqcompress-probe/2" and results["metric"] == "token_accuracy"
    assert results["plan"]["cells"] == [[16, 0.5], [16, 0.25], [32, 0.5], [32, 0.25]]
    assert "split" not in results["plan"] and "train_shifts" not in results["plan"]  # defaults: old probes resume
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
    result = probe("--domain", "text", text_file, "--ratios", "0.5", "--seq-len", "16", "--seeds", "1", *TINY,
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
    out = tmp_path / "r"
    result = probe("--domain", "timeseries", CO2, "--ratios", "0.25", "--seq-len", "8", "--seeds", "1",
                   *TINY, "--latent-dim", "8", "--baselines", "-o", out, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    cells = json.loads((out / "results.json").read_text())["cells"]
    by = {c["method"]: c for c in cells}
    assert set(by) == {"attention", "perceiver", "linformer", "meanpool", "dct", "pca"}
    assert by["dct"]["kind"] == "classical" and by["dct"]["seed"] is None
    assert by["dct"]["latent_floats_per_symbol"] == by["attention"]["latent_floats_per_symbol"]
    # 2 latents x 8 floats per 64 time steps of the one co2 channel: a quarter of the DCT keeps most of it
    assert 0 < by["dct"]["metrics"]["nrmse"] < 0.2
    # PCA fits on the probe's training windows (the model holds 2 % of them out for validation); the DCT on none
    assert by["dct"]["train_windows"] == 0 and by["pca"]["train_windows"] > by["attention"]["train_windows"] > 0


def test_a_killed_probe_resumes_without_redoing_finished_cells(tmp_path, text_file, monkeypatch):
    from seqcompress.domains import get_domain

    plan = ProbePlan(domain="text", domain_state={}, data=[str(text_file)], cells=[(16, 0.5), (16, 0.25)], seeds=2,
                     model=TINY_MODEL, training={"max_steps": 1, "epochs": None, "batch_size": 4})
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
    assert probe("--domain", "text", text_file, "--ratios", "0.5", "--seq-len", "16", "--seeds", "1", *TINY,
                 "-o", out, "-q").exit_code == 0
    again = probe("--domain", "text", text_file, "--ratios", "0.25", "--seq-len", "16", "--seeds", "1", *TINY,
                  "-o", out, "-q")
    assert again.exit_code == 1
    assert again.stderr.strip().splitlines() == [
        f"error: {out} holds a probe with different settings; use another output directory, or force to start over"]
    forced = probe("--domain", "text", text_file, "--ratios", "0.25", "--seq-len", "16", "--seeds", "1", *TINY,
                   "-o", out, "-q", "--force")
    assert forced.exit_code == 0
    assert [c["ratio"] for c in json.loads((out / "results.json").read_text())["cells"]] == [0.25]


def test_paper_cells_and_ratio_lists_parse():
    assert parse_cells("512:256,512:128,128:64,128:72") == [(512, 0.5), (512, 0.25), (128, 0.5), (128, 0.5625)]
    assert ratio_list("1/2, 0.25,1/16", "--ratios") == [0.5, 0.25, 0.0625]
    for bad in ("512", "512:0", "128:256", "a:b"):
        with pytest.raises(InputError, match="cells"):
            parse_cells(bad)
    with pytest.raises(InputError, match="--ratios takes numbers"):
        ratio_list("half", "--ratios")
    with pytest.raises(InputError, match="--stages is empty"):
        ratio_list(" , ", "--stages")


@pytest.mark.parametrize("args,expected", [
    (["--ratios", "2", "--max-steps", "1"], "ratio must be in (0, 1], got 2.0"),
    (["--seq-len", "0", "--max-steps", "1"], "--seq-len must be positive, got 0"),
    (["--seeds", "0", "--max-steps", "1"], "seeds must be at least 1"),
    (["--dtype", "int4", "--max-steps", "1"], "unknown dtype 'int4'"),
    (["--methods", "attention,lstm", "--max-steps", "1"], "unknown method(s) ['lstm']"),
    (["--split", "future"], "unknown split 'future'; choose one of random, chronological"),
    (["--train-shifts", "4"], "--train-shifts cuts whole training files at several offsets"),
    (["--train-shifts", "0", "--split", "chronological"], "--train-shifts must be at least 1, got 0"),
    (["--val-fraction", "1"], "--val-fraction must be in (0, 1), got 1.0"),
    (["--seq-len", "16,x"], "--seq-len takes whole numbers"),
    (["-D", "nonsense=1"], "unknown domain option 'nonsense'"),
])
def test_bad_probe_options_give_one_clear_line(tmp_path, args, expected):
    result = probe("--domain", "text", *args, "-o", tmp_path / "r")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "r").exists()  # refused before anything ran


def test_a_chronological_split_with_test_files_is_refused(tmp_path, text_file):
    result = probe("--domain", "text", text_file, "--split", "chronological", "--test", text_file, "-o", tmp_path)
    assert result.exit_code == 1
    assert "split 'chronological' holds out the tail of each training file; give it or test files, not both" \
        in result.stderr


def test_library_errors_name_parameters_not_flags():
    for changes, expected in [({"cells": [(16, 1.5)]}, "ratio must be in (0, 1], got 1.5"),
                              ({"cells": [(-1, 0.5)]}, "seq_len must be positive, got -1"),
                              ({"batch_tokens": 0}, "batch_tokens must be positive, got 0"),
                              ({"stages": [0]}, "stages counts stages and must be at least 1"),
                              ({"cells": []}, "at least one (seq_len, ratio) cell")]:
        with pytest.raises(InputError) as info:
            ProbePlan(**{"domain": "text", "domain_state": {}, "data": [], "cells": [(16, 0.5)], **changes})
        assert expected in str(info.value) and "--" not in str(info.value)


def test_a_plan_without_a_budget_trains_each_run_for_two_minutes():
    plan = ProbePlan(domain="text", domain_state={}, data=[], cells=[(16, 0.5)], training={"batch_size": 4})
    assert DEFAULT_BUDGET == {"epochs": None, "max_minutes": 2.0}
    assert plan.training == {"batch_size": 4, "epochs": None, "max_minutes": 2.0}
    assert plan.as_json()["training"] == plan.training  # saved, so a resumed probe keeps its budget
    given = ProbePlan(domain="text", domain_state={}, data=[], cells=[(16, 0.5)],
                      training={"epochs": None, "max_minutes": None, "max_steps": 5})
    assert given.training == {"epochs": None, "max_minutes": None, "max_steps": 5}  # a budget given is kept


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
    other = probe("--paper", "cpu", "--domain", "dna", "-o", tmp_path / "y")
    assert other.exit_code == 1 and "--paper reproduces the paper's table on text" in other.stderr


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


# ---- the chronological split -----------------------------------------------------------------------
def test_tail_split_and_shifted_windows_cut_a_stream_exactly():
    stream = torch.arange(10)
    head, tail = tail_split(stream, 0.25)
    assert head.tolist() == list(range(8)) and tail.tolist() == [8, 9]  # round(10 * 0.75) = 8
    with pytest.raises(InputError, match="a.csv holds 1 symbol"):
        tail_split(torch.arange(1), 0.25, "a.csv")
    assert [w.tolist() for w in shifted_windows(stream, 4, 1)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # offsets 0 and 4 // 2 = 2: the second cut drops the first two symbols
    assert [w.tolist() for w in shifted_windows(stream, 4, 2)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9],
                                                                  [2, 3, 4, 5], [6, 7, 8, 9]]
    # 8 shifts of 4 give offsets 0, 1, 2, 3 (the others repeat them): 10, 9, 8 and 7 symbols
    assert [len(w) for w in shifted_windows(stream, 4, 8)] == [4, 4, 2, 4, 4, 1, 4, 4, 4, 3]
    vectors = torch.arange(12.0).reshape(6, 2)  # (S, F) streams are cut along S
    assert [w.shape for w in shifted_windows(vectors, 4, 2)] == [(4, 2), (2, 2), (4, 2)]


def test_a_chronological_split_holds_out_the_end_of_each_file(tmp_path, text_file):
    from seqcompress.domains import get_domain

    second = tmp_path / "second.txt"
    second.write_text(text_file.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    domain = get_domain("text")
    plan = ProbePlan(domain="text", domain_state={}, data=[str(text_file), str(second)], cells=[(16, 0.5)],
                     split="chronological", held_out=0.25, train_shifts=2, training={"max_steps": 1})
    split = Probe(plan, domain, tmp_path / "r").split(16)
    streams = [torch.cat(domain.load_windows([path], 16)) for path in (text_file, second)]
    cuts = [round(len(s) * 0.75) for s in streams]
    # held out: the last quarter of each file's tokens, in order, cut into windows of at most 16
    assert torch.equal(torch.cat(split.test), torch.cat([s[c:] for s, c in zip(streams, cuts)]))
    assert all(len(w) <= 16 for w in split.test)
    # trained on: each file's first three quarters cut at offsets 0 and 8
    expected = [w for s, c in zip(streams, cuts) for w in shifted_windows(s[:c], 16, 2)]
    assert len(split.train) == len(expected) and all(torch.equal(a, b) for a, b in zip(split.train, expected))
    assert sum(len(w) for w in split.train) == sum(2 * c - 8 for c in cuts)
    # a classical codec that learns gets every full window of the training part, at every offset
    codec = split.codec_windows(16)
    assert len(codec) == sum(c - 15 for c in cuts) and all(len(w) == 16 for w in codec)
    assert torch.equal(codec[1], streams[0][1:17])


def test_a_chronological_split_learns_the_normalisation_from_the_training_rows_only(tmp_path):
    from seqcompress.domains import get_domain

    domain = get_domain("timeseries", {"patch": 4})
    plan = ProbePlan(domain="timeseries", domain_state={"patch": 4}, data=[str(CO2)], cells=[(16, 0.5)],
                     split="chronological", held_out=0.25, training={"max_steps": 1})
    probe_ = Probe(plan, domain, tmp_path / "r")
    learned = probe_.learned_domain().settings
    # 2,284 rows = 571 patches of 4; the models train on the first round(571 * 0.75) = 428 patches = 1,712 rows
    lines = CO2.read_text(encoding="utf-8").splitlines(keepends=True)
    head = tmp_path / "head.csv"
    head.write_text("".join(lines[: 1 + 428 * 4]), encoding="utf-8")
    alone = domain.learn([head]).settings
    assert learned.mean == alone.mean and learned.scale == alone.scale
    assert learned.mean != domain.learn([CO2]).settings.mean  # the held-out tail (a rising trend) is left out
    # the training stream is exactly the head file's patches, normalised alike
    split = probe_.split(16)
    assert torch.equal(split.streams[0], torch.cat(domain.learn([head]).load_windows([head], 16)))
    # a random split still learns from the whole files
    whole = Probe(ProbePlan(domain="timeseries", domain_state={"patch": 4}, data=[str(CO2)], cells=[(16, 0.5)],
                            training={"max_steps": 1}), domain, tmp_path / "w")
    assert whole.learned_domain().settings == domain.learn([CO2]).settings


def test_a_chronological_time_series_probe_scores_the_future_next_to_the_classical_codecs(tmp_path):
    out = tmp_path / "r"
    result = probe("--domain", "timeseries", CO2, "-D", "patch=4", "--split", "chronological", "--val-fraction", "0.25",
                   "--train-shifts", "4", "--ratios", "0.25", "--seq-len", "16", "--seeds", "1", *TINY,
                   "--latent-dim", "4", "-o", out, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["plan"]["split"] == "chronological" and results["plan"]["train_shifts"] == 4
    assert results["plan"]["domain_state"]["patch"] == 4
    by = {c["method"]: c for c in results["cells"]}
    assert set(by) == {"attention", "dct", "pca"}
    patches = -(-2284 // 4)  # 571 patches of 4 weeks; the last quarter (143 patches) is held out
    held = patches - round(patches * 0.75)
    assert {c["test_symbols"] for c in by.values()} == {held}
    assert {c["test_windows"] for c in by.values()} == {-(-held // 16)}
    past = round(patches * 0.75)
    assert by["pca"]["train_windows"] == past - 15  # every full window of the past, at every offset
    assert by["dct"]["train_windows"] == 0
    # the model trains on the past cut at offsets 0, 4, 8 and 12, less its own 2 % validation share
    cut = sum(-(-(past - offset) // 16) for offset in (0, 4, 8, 12))
    assert cut == 107 and 0.95 * cut <= by["attention"]["train_windows"] < cut
    # 4 latents of 4 floats per 64 weeks: both codecs keep the smooth seasonal cycle almost exactly
    assert 0 < by["dct"]["value"] < 0.05 and 0 < by["pca"]["value"] < 0.05


# ---- the classical codecs --------------------------------------------------------------------------
def series_windows():
    """Windows of 6 patches of 2 steps x 2 channels: fully observed training windows; test windows with gaps
    and a short last one. Seeded: the expected values below were computed by the codecs' previous home
    (TimeSeriesDomain.classical_baselines, git 4e94bc2) on exactly these windows."""
    g = torch.Generator().manual_seed(7)

    def window(length, gaps):
        values = torch.randn(length, 4, generator=g)
        observed = (torch.rand(length, 4, generator=g) > gaps).float()
        return torch.cat([values * observed, observed], 1)

    train = [window(6, 0.0) for _ in range(12)]
    test = [window(6, 0.2), window(6, 0.0), window(3, 0.2)]
    return train, test, [6, 12, 2]


def audio_windows():
    """Windows of 16-sample frames (the last frame of the second holds 5 real samples). Expected values from
    AudioDomain.classical_baselines at git 4e94bc2 with scale 0.05."""
    g = torch.Generator().manual_seed(11)

    def window(frames, last_real):
        x = torch.randn(frames, 16, generator=g)
        x[-1, last_real:] = 0
        real = torch.ones(frames, 1)
        real[-1] = last_real / 16
        return torch.cat([x, real], 1)

    return [window(4, 16), window(3, 5)], [20, 7]


def test_each_domain_registers_its_classical_codecs():
    from seqcompress.domains import get_domain

    assert {name: sorted(table) for name, table in BASELINES.items() if table} == {
        "timeseries": ["dct", "pca"], "audio": ["dct", "mu_law_8bit", "opus"]}
    assert baselines_for(get_domain("text")) == {} and baselines_for(get_domain("dna")) == {}
    found = baselines_for(get_domain("timeseries"))
    assert list(found) == ["dct", "pca"] and [b.learns for b in found.values()] == [False, True]


def test_a_new_baseline_is_one_class_and_one_registration(monkeypatch):
    from seqcompress.domains import get_domain

    monkeypatch.setitem(BASELINES, "text", {})

    @register_baseline("text", "copy")
    class Copy(Baseline):
        def reconstruct(self, train, test, floats):
            return list(test)

    assert Copy.name == "copy" and list(baselines_for(get_domain("text"))) == ["copy"]
    with pytest.raises(ValueError, match="'copy' is registered twice"):
        register_baseline("text", "copy")(Copy)


def test_time_series_codecs_rebuild_what_they_did_inside_the_domain():
    from seqcompress.domains import get_domain

    train, test, floats = series_windows()
    codecs = baselines_for(get_domain("timeseries").with_settings(patch=2))
    expected = {  # per test window: sum |value| over the values half; the first patch of the first window
        "dct": ([9.329587, 8.38775, 3.884778], [-0.040885, 0.427664, 0.046167, 0.279773]),
        "pca": ([8.572384, 10.216094, 4.527366], [-0.691905, 0.092706, 0.236173, -0.808]),
    }
    for name, (sums, first) in expected.items():
        out = codecs[name].reconstruct(train if codecs[name].learns else [], test, floats)
        assert [o.shape for o in out] == [w.shape for w in test], name
        assert [float(o[:, :4].abs().sum()) for o in out] == pytest.approx(sums, abs=1e-5), name
        assert out[0][0, :4].tolist() == pytest.approx(first, abs=1e-6), name
        assert all(torch.equal(o[:, 4:], w[:, 4:]) for o, w in zip(out, test)), name  # the mask half is kept
    # the full budget of a fully observed window is lossless
    full = codecs["dct"].reconstruct([], test[1:2], [24])[0]
    torch.testing.assert_close(full, test[1], atol=1e-5, rtol=0)


def test_audio_codecs_rebuild_what_they_did_inside_the_domain():
    from seqcompress.domains import get_domain

    test, floats = audio_windows()
    codecs = baselines_for(get_domain("audio").with_settings(sample_rate=8000, frame_ms=2.0, scale=0.05))
    expected = {  # per test window: sum |sample|; samples 0..5 of the short last frame (5 real, then padding)
        "dct": ([25.896748, 10.911916], [-0.040724, -0.219992, -0.3719, -0.481606, -0.539003, 0.0]),
        "mu_law_8bit": ([26.134178, 11.852206], [-0.283974, -0.464764, -0.54825, -0.535245, -0.447884, 0.0]),
    }
    for name, (sums, last) in expected.items():
        out = codecs[name].reconstruct([], test, floats)
        assert [float(o[:, :16].abs().sum()) for o in out] == pytest.approx(sums, abs=1e-5), name
        assert out[1][2, :6].tolist() == pytest.approx(last, abs=1e-6), name
        assert all(torch.equal(o[:, 16:], w[:, 16:]) for o, w in zip(out, test)), name  # real shares kept


def test_audio_codecs_keep_the_budget_and_improve_with_it(tmp_path):
    import soundfile as sf

    from seqcompress.domains import get_domain
    from seqcompress.lengths import length_mask
    from seqcompress.train import collate

    t = np.arange(8000) / 16000
    path = tmp_path / "t.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 300.0 * t) + 0.01 * np.random.default_rng(0).standard_normal(8000), 16000)
    domain = get_domain("audio")
    windows = domain.load_windows([path], 25)
    x, lengths = collate(windows)
    mask = length_mask(lengths, x.shape[1])
    for name, codec in baselines_for(domain).items():
        scores = []
        for budget in (400, 4000):
            rec = codec.reconstruct([], windows, [budget] * len(windows))
            assert [r.shape for r in rec] == [w.shape for w in windows]
            scores.append(domain.objective.values(domain.objective.totals(collate(rec)[0], x, mask))["si_sdr"])
        assert scores[0] < scores[1] and scores[1] > 15, name  # 4000 of 8000 samples keep a 300 Hz tone
    kept = baselines_for(domain)["dct"].reconstruct([], windows, [8000] * len(windows))
    torch.testing.assert_close(kept[0], windows[0], atol=1e-5, rtol=0)  # the full budget is lossless


def test_cells_in_worker_processes_score_what_one_process_scores(tmp_path, text_file):
    """--jobs 2: the same cells, the same numbers (each cell is seeded; workers rebuild the same splits), and the
    results.json of the serial run plus nothing."""
    runs = {}
    for jobs in (1, 2):
        out = tmp_path / f"j{jobs}"
        result = probe("--domain", "text", text_file, "--ratios", "0.5,0.25", "--seq-len", "16", "--seeds", "2",
                       "--baselines", *TINY, "-o", out, "--jobs", jobs, "--json")
        assert result.exit_code == 0, result.output + result.stderr
        runs[jobs] = {c["key"]: c for c in json.loads((out / "results.json").read_text())["cells"]}
    assert runs[1].keys() == runs[2].keys() and len(runs[1]) == 16
    for key, cell in runs[1].items():
        assert runs[2][key]["value"] == pytest.approx(cell["value"], abs=1e-6), key
        assert runs[2][key]["steps"] == cell["steps"]


# ---- Opus, the reference codec at the model's bit rate -------------------------------------------------------
def _speech_windows(seconds: float = 2.0, seq_len: int = 25):
    """The bundled speech's first `seconds` as windows of seq_len 20 ms frames (whole windows for 2 s at 25)."""
    import soundfile as sf

    from seqcompress.domains import get_domain

    domain = get_domain("audio")
    speech = bundled("speech_sample.flac")
    domain = domain.learn([speech])
    data, rate = sf.read(speech, frames=int(seconds * 16000))
    return domain, data, rate, seq_len


needs_opus = pytest.mark.skipif(opus_problem() is not None, reason=str(opus_problem()))


@needs_opus
def test_opus_reference_gives_finite_metrics_that_improve_with_the_bit_rate(tmp_path):
    import soundfile as sf

    from seqcompress.lengths import length_mask
    from seqcompress.train import collate

    domain, data, rate, seq_len = _speech_windows()
    path = tmp_path / "speech.wav"
    sf.write(path, data, rate, subtype="PCM_16")
    windows = domain.load_windows([path], seq_len)
    assert [len(w) for w in windows] == [25] * 4  # 2 s: four windows of 0.5 s
    x, lengths = collate(windows)
    mask = length_mask(lengths, x.shape[1])
    opus = baselines_for(domain)["opus"]
    scores, stored = [], []
    for kbps in (8, 16, 32):
        floats = [kbps * 1000 // 2 // 16] * 4  # float16 numbers per 0.5 s window at kbps
        rec = opus.reconstruct([], windows, floats)
        assert [r.shape for r in rec] == [w.shape for w in windows]
        assert all(torch.equal(r[:, -1], w[:, -1]) for r, w in zip(rec, windows))  # real shares kept
        metrics = domain.objective.values(domain.objective.totals(collate(rec)[0], x, mask))
        assert all(np.isfinite(metrics[k]) for k in ("si_sdr", "snr", "log_mel_distance", "mae")), metrics
        assert f"asked for {kbps:.2f} kbit/s" in opus.note
        scores.append(metrics["si_sdr"])
        stored.append(opus.stored_bits / 2.0 / 1000)  # kbit/s produced over the 2 s
    # measured here: SI-SDR 4.0, 12.4, 19.3 dB; 8.04, 16.02, 29.49 kbit/s produced (VBR, packets only)
    assert scores[0] < scores[1] < scores[2] and scores[2] > 12, scores
    assert all(0.6 * k < s < 1.3 * k for k, s in zip((8, 16, 32), stored)), stored
    # the budget is bits: the same floats stored as int8 ask for half the rate
    half = baselines_for(domain, bits_per_float=8)["opus"]
    half.reconstruct([], windows, [500] * 4)
    assert "asked for 8.00 kbit/s" in half.note


@needs_opus
def test_opus_runs_at_any_rate_and_holds_the_rate_it_asks_for_to_libsndfiles_range():
    from seqcompress.domains.audio_opus import opus_round_trip

    t = torch.arange(11025) / 22050  # 0.5 s at 22.05 kHz: resampled to Opus's 24 kHz and back
    x = 0.3 * torch.sin(2 * np.pi * 440 * t) + 0.1 * torch.sin(2 * np.pi * 1234 * t)
    low, high = opus_round_trip(x, 22050, 1000), opus_round_trip(x, 22050, 10**6)
    assert low.samples.shape == high.samples.shape == x.shape and (low.opus_rate, high.opus_rate) == (24000, 24000)
    assert (low.asked_bps, high.asked_bps) == (6000, 256000) and "held to libsndfile's 6-256" in low.describe()
    residual = float((high.samples - x).square().sum() / x.square().sum())
    assert residual < 0.001  # 256 kbit/s, aligned with the input (measured 6.2e-5: 42 dB)
    assert 0 < low.packet_bytes < high.packet_bytes


def test_a_codec_this_machine_lacks_is_left_out_and_named(monkeypatch):
    import soundfile as sf

    from seqcompress.domains import get_domain

    monkeypatch.setattr(sf, "available_subtypes", lambda fmt=None: {"VORBIS": "Vorbis"})
    domain = get_domain("audio")
    assert list(baselines_for(domain)) == ["dct", "mu_law_8bit"]
    assert unavailable_baselines(domain) == {"opus": f"the libsndfile here ({sf.__libsndfile_version__}) was built "
                                                      "without Ogg/Opus"}
    assert unavailable_baselines(get_domain("timeseries")) == {}


@pytest.mark.parametrize("lacks_opus", [False, True])
def test_an_audio_probe_reports_opus_next_to_the_budget_or_why_it_did_not_run(tmp_path, monkeypatch, lacks_opus):
    import soundfile as sf

    from seqcompress.domains import get_domain

    if not lacks_opus and opus_problem():
        pytest.skip(opus_problem())
    if lacks_opus:
        monkeypatch.setattr(sf, "available_subtypes", lambda fmt=None: {"VORBIS": "Vorbis"})
    plan = ProbePlan(domain="audio", domain_state={}, data=[], cells=[(25, 0.5)], seeds=1, classical=True,
                     model={**TINY_MODEL, "latent_dim": 64}, training={"max_steps": 1, "epochs": None, "batch_size": 4})
    probe_ = Probe(plan, get_domain("audio"), tmp_path)
    results = probe_.run()
    probe_.write_reports()
    by = {c["method"]: c for c in results["cells"]}
    report = (tmp_path / "report.md").read_text()
    if lacks_opus:
        assert set(by) == {"attention", "dct", "mu_law_8bit"}
        assert results["skipped"] == {"opus": f"the libsndfile here ({sf.__libsndfile_version__}) was built without "
                                               "Ogg/Opus"}
        assert "- opus: not run, the libsndfile here" in report
        return
    assert set(by) == {"attention", "dct", "mu_law_8bit", "opus"} and "skipped" not in results
    opus = by["opus"]
    # 13 latents x 64 float16 numbers per 25 frames: 532.5 bits a frame, 26.6 kbit/s (less for a short window)
    assert opus["bits_per_symbol"] == by["dct"]["bits_per_symbol"]
    assert 0.6 < opus["actual_bits_per_symbol"] / opus["bits_per_symbol"] < 1.3
    assert np.isfinite(opus["value"]) and opus["value"] > by["attention"]["value"]
    assert opus["note"].startswith("Opus at 16 kHz asked for ")
    assert f"({opus['actual_bits_per_symbol']:.2f} stored)" in report and "- opus at n = 25, ratio 1/2: Opus" in report
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert {r["method"]: r["actual_bits_per_symbol"] for r in rows}["dct"] == ""


def test_revin_windows_cut_anew_by_a_chronological_split_get_their_own_level(tmp_path):
    from seqcompress.domains import get_domain

    path = tmp_path / "s.csv"
    t = np.arange(300)
    path.write_text("t,v\n" + "".join(f"{i},{10 + 0.05 * i + np.sin(i / 5):.4f}\n" for i in t), encoding="utf-8")
    plan = ProbePlan(domain="timeseries", domain_state={"patch": 1, "revin": True}, data=[str(path)],
                     split="chronological", held_out=0.25, train_shifts=4, cells=[(64, 0.5)], seeds=1,
                     model={"d_model": 16, "heads": 2, "layers": 1, "ffn_dim": 32, "latent_dim": 1})
    probe_ = Probe(plan, get_domain("timeseries", {"patch": 1, "revin": True}), tmp_path / "out")
    split = probe_.split(64)
    for window in split.train + split.test + split.codec_windows(64)[:5]:
        values = window[:, 0].double()
        assert float(values.mean()) == pytest.approx(0.0, abs=1e-5)
        if len(values) > 1:  # (one value: its own mean, scale 1)
            assert float(values.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    # the tail starts a window of its own: its level is that of the test rows only
    first = split.test[0]
    domain = probe_.learned_domain()
    level = (float(first[0, 2]) * domain.settings.scale[0]) + domain.settings.mean[0]
    assert level == pytest.approx(float(np.mean(10 + 0.05 * t[225:289] + np.sin(t[225:289] / 5))), abs=1e-3)
    budget = probe_._budget(probe_.config("attention", 64, 0.5), split.test)
    assert budget["latent_floats_per_symbol"] == pytest.approx((32 + 2 + 6 + 2) / 75)  # 64 + 11 steps, 2 per window
