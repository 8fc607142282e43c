"""The end-of-run health check: near-chance trained widths and a climbing loss fail the run."""
import json

from typer.testing import CliRunner

from mbq.cli.app import app
from mbq.core.health import check_run, loss_rising, near_chance_floor


def test_near_chance_floor_scales_with_the_chance_level():
    assert near_chance_floor(10.0) == 28.0       # 10 classes
    assert near_chance_floor(25.0) == 40.0       # 4-way episodes
    assert abs(near_chance_floor(1.0) - 20.8) < 1e-9


def test_twenty_percent_on_ten_classes_did_not_learn():
    # anyprec --kd none at lr 0.2, 2 epochs: every width at 19-20% on MNIST, "healthy" under a
    # floor of a tenth of the way (19%)
    problems = check_run({"8": 20.15, "2": 19.06, "4": 19.98}, ["8", "4", "2"], 10.0, [2.82, 1.97])
    assert [p.split(" ended")[0] for p in problems] == ["width 8", "width 4", "width 2"]
    assert check_run({"8": 29.0}, ["8"], 10.0, [2.0, 1.8]) == []


def test_only_trained_widths_near_chance_are_problems():
    top1 = {"8": 97.0, "2": 12.0, "3": 11.0}
    problems = check_run(top1, trained=["8", "2"], chance=10.0, losses=[1.0, 0.5])
    assert len(problems) == 1 and problems[0].startswith("width 2 ended at 12.00%")
    assert check_run({"8": 97.0, "3": 11.0}, ["8"], 10.0, [1.0, 0.5]) == []


def test_a_width_far_under_its_training_accuracy_is_a_problem():
    # msq at 2 epochs used to prune 8 -> 2 bits after the last step: trained at 95%, tested far under
    problems = check_run({"mixed": 40.0}, ["mixed"], 10.0, [1.2, 0.16], train_acc=95.2)
    assert len(problems) == 1 and "under half the last epoch's training accuracy (95.2%)" in problems[0]
    assert check_run({"mixed": 50.0}, ["mixed"], 10.0, [1.2, 0.16], train_acc=95.2) == []
    assert check_run({"mixed": 40.0}, ["mixed"], 10.0, [1.2, 0.16]) == []           # not known
    assert check_run({"2": 15.0}, ["2"], 10.0, [2.2, 2.1], train_acc=18.0)[0].endswith(
        "did not learn at this width")                                              # one problem, not two


def test_loss_rising_needs_a_sustained_climb_above_the_best_epoch():
    assert loss_rising([2.0, 0.5, 0.7, 0.9])
    assert not loss_rising([2.0, 0.5, 0.52, 0.55])   # a climb, but within noise of the best
    assert not loss_rising([2.0, 0.5, 0.9, 0.8])     # not monotone
    assert not loss_rising([0.5, 0.9])               # too short to judge
    problems = check_run({"fp": 90.0}, ["fp"], 10.0, [2.0, 0.5, 0.7, 0.9])
    assert len(problems) == 1 and "diverging" in problems[0]


def test_a_run_made_to_diverge_reports_the_width_and_exits_1(tmp_path):
    out = tmp_path / "d.safetensors"
    res = CliRunner().invoke(app, ["train", "--method", "fp", "--arch", "cnn", "--train-subset", "512",
                                   "--val-size", "0", "--epochs", "2", "--lr", "1000", "--grad-clip", "1",
                                   "--out", str(out), "--quiet", "--json"])
    assert res.exit_code == 1, res.output
    doc = json.loads(res.stdout)
    assert doc["healthy"] is False and doc["problems"][0].startswith("width fp ended at")
    assert "error: width fp ended at" in res.stderr
    assert out.exists()  # kept for inspection


def test_a_healthy_run_says_so_and_exits_0(tmp_path):
    out = tmp_path / "h.safetensors"
    res = CliRunner().invoke(app, ["train", "--method", "fp", "--arch", "cnn", "--train-subset", "1024",
                                   "--val-size", "0", "--epochs", "1", "--out", str(out), "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["healthy"] is True and doc["problems"] == []


def test_resume_judges_the_loss_of_the_whole_run(tmp_path):
    from mbq.core.engine import _logged_losses, metrics_path

    out = tmp_path / "r.safetensors"
    lines = [json.dumps({"epoch": e, "train_loss": v}) for e, v in [(1, 2.0), (2, 1.0), (3, 0.5)]]
    metrics_path(out).write_text("\n".join(lines) + "\n{\"epoch\": 4, \"train_lo")  # a torn last line
    assert _logged_losses(out, 2) == [2.0, 1.0]
    assert _logged_losses(out, 3) == [2.0, 1.0, 0.5]


def test_no_health_check_reports_but_exits_0(tmp_path):
    out = tmp_path / "d.safetensors"
    res = CliRunner().invoke(app, ["train", "--method", "fp", "--arch", "cnn", "--train-subset", "512",
                                   "--val-size", "0", "--epochs", "1", "--lr", "1000", "--grad-clip", "1",
                                   "--out", str(out), "--quiet", "--json", "--no-health-check"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["healthy"] is False
    assert "warning: width fp ended at" in res.stderr


def test_the_methods_advice_goes_once_on_the_first_width_near_chance():
    problems = check_run({"fp": 30.0, "2": 26.0, "4": 60.0}, ["fp", "2", "4"], 25.0, [1.3, 1.2],
                         advice="try --lr 3e-3")
    assert len(problems) == 2
    assert problems[0].endswith("did not learn at this width; try --lr 3e-3")
    assert problems[1].endswith("did not learn at this width")
    assert check_run({"fp": 60.0}, ["fp"], 25.0, [1.3, 1.2], advice="try --lr 3e-3") == []


def test_a_maml_run_near_chance_names_its_outer_steps_and_what_to_try(tmp_path):
    out = tmp_path / "m.safetensors"
    res = CliRunner().invoke(app, ["train", "--method", "fomaml", "--arch", "cnn", "--train-subset", "600",
                                   "--val-size", "0", "--epochs", "1", "--episodes-per-epoch", "4",
                                   "--test-episodes", "20", "--inner-steps", "1", "--lr", "1000",
                                   "--out", str(out), "--quiet", "--json"])
    assert res.exit_code == 1, res.output
    problem = json.loads(res.stdout)["problems"][0]
    assert problem.startswith("width fp ended at") and problem.endswith(
        "the run did not learn at this width; MAML took 1 outer step at Adam 1000; try --meta-batch 1 "
        "(4x the outer steps), a lower --lr, more --epochs, and a lower --inner-lr (now 0.1) if the training "
        "loss sits above ln(4) = 1.386 (docs/mebqat.md, \"MAML's outer step\")")
