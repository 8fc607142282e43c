"""--resume continues a run with the settings it began with, whatever today's defaults are."""
import json

import pytest
import typer.main
from typer.testing import CliRunner

from mbq.cli._common import explicit_params
from mbq.cli.app import app
from mbq.cli.train import build_config, resolve_config
from mbq.core.methods import list_methods, options_class
from mbq.core.resume import method_options

runner = CliRunner()


def _saved_run(tmp_path, argv, edit=lambda doc: None):
    """A run's files at tmp_path/r.safetensors, its record made from ``argv`` and ``edit``."""
    out = tmp_path / "r.safetensors"
    cfg = resolve_config(argv + ["--out", str(out)])
    doc = dict(cfg.model_dump(mode="json"), options=method_options(cfg))
    edit(doc)
    out.write_bytes(b"")
    out.with_name("r.state.pt").write_bytes(b"")
    out.with_name("r.config.json").write_text(json.dumps(doc))
    return out


def _resolve(argv):
    ctx = typer.main.get_command(app).commands["train"].make_context("train", list(argv))
    notes: list[str] = []
    cfg = build_config(dict(ctx.params), explicit_params(ctx), {}, list(ctx.args), notes)
    return cfg, notes


def _before_kd_was_recorded(doc):
    """An anyprec run begun when it distilled by default and did not cap the gradient."""
    doc["options"].pop("kd")
    doc["optim"]["grad_clip"] = None


def test_a_run_begun_under_older_defaults_continues_under_them(tmp_path):
    out = _saved_run(tmp_path, ["--method", "anyprec", "--bits", "2,4,8", "--epochs", "2"],
                     _before_kd_was_recorded)
    cfg, notes = _resolve(["--out", str(out), "--resume"])  # the method and flags come from the run
    assert cfg.method == "anyprec" and cfg.bits == [2, 4, 8] and cfg.epochs == 2
    assert method_options(cfg)["kd"] == "recursive" and cfg.optim.grad_clip is None
    assert len(notes) == 1 and "--kd recursive (this command alone: none)" in notes[0]
    assert "--grad-clip none" in notes[0]
    # a fresh run with the same flags gets today's defaults
    fresh = resolve_config(["--method", "anyprec", "--bits", "2,4,8", "--epochs", "2"])
    assert method_options(fresh)["kd"] == "none" and fresh.optim.grad_clip == 2.0


def test_a_mebqat_pn_run_begun_on_the_raw_weight_keeps_it(tmp_path):
    out = _saved_run(tmp_path, ["--method", "mebqat-pn", "--arch", "cnn", "--bits", "2,4,8"],
                     lambda doc: doc["options"].pop("fp_path"))
    cfg, notes = _resolve(["--out", str(out), "--resume"])
    assert method_options(cfg)["fp_path"] == "identity" and "--fp-path identity" in notes[0]


def test_an_emq_run_begun_before_final_bn_measures_only_its_untrained_widths(tmp_path):
    out = _saved_run(tmp_path, ["--method", "emq", "--bits", "2,4,8", "--epochs", "2"],
                     lambda doc: doc["options"].pop("final_bn"))
    cfg, notes = _resolve(["--out", str(out), "--resume"])
    assert method_options(cfg)["final_bn"] == "untrained" and "--final-bn untrained" in notes[0]
    assert method_options(resolve_config(["--method", "emq", "--bits", "2,4,8"]))["final_bn"] == "all"


def test_a_maml_run_begun_at_the_papers_outer_step_keeps_it(tmp_path):
    """A resnet20 fomaml run from before the outer step followed the model: 4 episodes at 1e-4
    (its record lacks the option left at default; its LR is always recorded)."""
    def before(doc):
        doc["options"].pop("meta_batch")
        doc["optim"]["lr"] = 1e-4

    out = _saved_run(tmp_path, ["--method", "fomaml", "--epochs", "2"], before)
    cfg, notes = _resolve(["--out", str(out), "--resume"])
    assert method_options(cfg)["meta_batch"] == 4 and cfg.optim.lr == pytest.approx(1e-4)
    assert "--meta-batch 4 (this command alone: 1)" in notes[0] and "--lr 0.0001" in notes[0]
    fresh = resolve_config(["--method", "fomaml", "--epochs", "2"])
    assert (method_options(fresh)["meta_batch"], fresh.optim.lr) == (1, pytest.approx(3e-3))


def test_a_mebqat_maml_run_begun_at_3e3_keeps_its_step(tmp_path):
    """Its LR is recorded, so the 1e-2 default does not reach a run begun before it."""
    out = _saved_run(tmp_path, ["--method", "mebqat-maml", "--bits", "2,4,8", "--epochs", "2"],
                     lambda doc: doc["optim"].update(lr=3e-3))
    cfg, notes = _resolve(["--out", str(out), "--resume"])
    assert cfg.optim.lr == pytest.approx(3e-3) and "--lr 0.003 (this command alone: 0.01)" in notes[0]
    assert resolve_config(["--method", "mebqat-maml", "--bits", "2,4,8"]).optim.lr == pytest.approx(1e-2)


def test_repeating_the_command_and_lengthening_the_run_is_allowed(tmp_path):
    argv = ["--method", "emq", "--bits", "2,4", "--train-subset", "512"]
    out = _saved_run(tmp_path, argv + ["--epochs", "2"])
    cfg, notes = _resolve(argv + ["--epochs", "4", "--out", str(out), "--resume", "--device", "cpu"])
    assert cfg.epochs == 4 and cfg.device == "cpu" and cfg.resume
    # the coreset fraction, step and cap the 2-epoch run resolved, not the 4-epoch rule's
    assert method_options(cfg)["coreset_fraction"] == 1.0
    assert "--coreset-fraction 1 (this command alone: 0.5)" in notes[0] and "--bits" not in notes[0]


@pytest.mark.parametrize("flags,needle", [
    (["--kd", "none"], "--kd none (the run: recursive)"),
    (["--lr", "0.1"], "--lr 0.1 (the run: 0.2)"),
    (["--method", "emq"], "--method emq (the run: anyprec)"),
    (["--bits", "2,4"], "--bits 2,4 (the run: 2,4,8)"),
])
def test_a_flag_that_changes_the_run_is_refused_in_one_line(tmp_path, flags, needle):
    out = _saved_run(tmp_path, ["--method", "anyprec", "--bits", "2,4,8"], _before_kd_was_recorded)
    before = out.with_name("r.config.json").read_text()
    r = runner.invoke(app, ["train", "--out", str(out), "--resume", *flags])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert out.with_name("r.config.json").read_text() == before  # nothing touched


def test_an_unreadable_record_is_one_line(tmp_path):
    out = _saved_run(tmp_path, ["--method", "qat"])
    out.with_name("r.config.json").write_text("{not json")
    r = runner.invoke(app, ["train", "--out", str(out), "--resume"])
    assert r.exit_code == 2 and "is not a run configuration" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("method", sorted(list_methods()))
def test_every_methods_record_reads_back_as_it_was(method):
    cfg = resolve_config(["--method", method, "--epochs", "3"])
    recorded = method_options(cfg)
    assert set(recorded) == set(options_class(method).model_fields)
    again = json.loads(json.dumps(recorded))
    assert options_class(method).model_validate(again).model_dump(mode="json") == recorded


def test_a_run_records_every_option_and_resumes_from_the_out_path_alone(tmp_path):
    from mbq.core.checkpoint import read_checkpoint

    out = tmp_path / "a.safetensors"
    r = runner.invoke(app, ["train", "--method", "anyprec", "--bits", "2,8", "--arch", "cnn",
                            "--train-subset", "256", "--val-size", "0", "--epochs", "1", "--quiet",
                            "--no-health-check", "--out", str(out)])
    assert r.exit_code == 0, r.output
    record = json.loads(out.with_name("a.config.json").read_text())
    assert record["options"]["kd"] == "none" and "calib_batches" in record["options"]
    _, meta = read_checkpoint(out)
    assert meta["mbq.config"]["options"] == record["options"]
    r = runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "2", "--json",
                            "--no-health-check"])
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.stdout)["top1"]) == {"2", "8"}
    assert "--bits 2,8 (this command alone: 4)" in r.stderr and "--arch cnn" in r.stderr
    assert "num-classes" not in r.stderr  # set from the data, not by a flag: no news
    lines = out.with_name("a.metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2]


def test_a_resumed_run_does_not_need_its_init_file(tmp_path):
    tiny = ["--arch", "cnn", "--train-subset", "256", "--val-size", "0", "--quiet", "--no-health-check"]
    start = tmp_path / "start.safetensors"
    assert runner.invoke(app, ["train", "--method", "fp", *tiny, "--epochs", "1", "--out", str(start)]).exit_code == 0
    out = tmp_path / "q.safetensors"
    r = runner.invoke(app, ["train", "--method", "qat", *tiny, "--epochs", "1", "--init", str(start), "--out", str(out)])
    assert r.exit_code == 0, r.output
    start.unlink()  # the checkpoint being resumed holds the weights now
    r = runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet", "--no-health-check"])
    assert r.exit_code == 0, r.output
    assert len(out.with_name("q.metrics.jsonl").read_text().splitlines()) == 2
