"""`mptc run --tensorboard DIR` (issue 17, section 4): every metrics.jsonl field and each scalar meta-parameter
as TensorBoard scalars at their meta-step; metrics.jsonl unchanged."""
import json

import pytest

from mptc.cli import main
from tests.conftest import tiny_spec

pytest.importorskip("tensorboard")


def test_tensorboard_scalars_match_metrics_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    spec = tmp_path / "t.mpt"
    spec.write_text(tiny_spec(meta_steps=4, log_every=1).replace("meta w: vector[12] = 0.0",
                                                                  "meta w: vector[12] = 0.0\nmeta s: scalar = 0.0")
                    .replace("mean(task_weight *", "mean(exp(s) * task_weight *"))
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet", "--tensorboard",
                 str(tmp_path / "tb")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"pt_loss", "ft_val_loss", "hypergrad_norm", "meta.s"} <= tags
    for key in ("ft_val_loss", "meta.s"):
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert got == [(r["meta_step"], pytest.approx(r[key], rel=1e-6)) for r in rows]


def test_without_the_package_it_is_a_named_error(tmp_path, monkeypatch, capsys):
    import builtins
    real = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    spec = tmp_path / "t.mpt"
    spec.write_text(tiny_spec())
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet", "--tensorboard", str(tmp_path / "tb")]) == 2
    assert "needs the tensorboard package" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_file_where_the_folder_should_be_is_a_named_error(tmp_path, capsys):
    spec = tmp_path / "t.mpt"
    spec.write_text(tiny_spec())
    (tmp_path / "tb").write_text("not a folder")
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet", "--tensorboard",
                 str(tmp_path / "tb")]) == 2
    err = capsys.readouterr().err
    assert "--tensorboard" in err and "cannot write a folder there" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
