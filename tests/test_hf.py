"""`hf(path: "DIR")`: a pretrained transformers model from a local folder as an encoder. A tiny BERT is saved in
tmp_path (no network): the checker reads its hidden size from config.json, the runtime loads it with
local_files_only, feeds it token ids (as mptc's float data) or embeddings, and pools its last hidden state."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from mptc.cli import main  # noqa: E402
from mptc.compiler.lower import compile_spec  # noqa: E402
from mptc.errors import RunError, SpecErrors  # noqa: E402
from mptc.runtime.hf import hf  # noqa: E402

SPEC = """spec hf_tiny
data pt = arrays(path: "pt.npz")
data ft = arrays(path: "ft.npz") split train 0.4, val 0.3, test 0.3
model encoder = hf(path: "bert"{args})
head pt_head = linear(out: 4)
head ft_head = linear(out: 2)
meta w: vector[4] = 0.0
pretrain {{
  data pt batch 32
  loss mean(2 * sigmoid(w) * bce(pt_head(encoder(x)), y))
  steps 2
}}
finetune {{
  data ft.train batch 32
  loss mean(bce(ft_head(encoder(x)), y))
  unroll 1 update ft_head
}}
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
train meta_steps 2 warmup 1 seed 0 device cpu
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder with a tiny BERT (hidden 8, pad token 0) and token-id data of length 6."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                     vocab_size=50, max_position_embeddings=16)
    transformers.BertModel(config).save_pretrained(root / "bert")
    rng = np.random.default_rng(0)
    x = rng.integers(1, 50, size=(200, 6))
    y = (rng.normal(size=(200, 4)) > 0).astype("float32")
    np.savez(root / "pt.npz", x=x, y=y)
    np.savez(root / "ft.npz", x=x[:120], y=y[:120, :2])
    return root


def write(root, args="", name="s.mpt"):
    (root / name).write_text(SPEC.format(args=args))
    return root / name


def test_the_checker_reads_the_hidden_size_without_importing_transformers(project):
    write(project)
    probe = ("import sys; from mptc.cli import main; rc = main(['check', 's.mpt']); "
             "print(rc, 'transformers' in sys.modules, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=project, capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-3:] == ["0", "False", "False"]
    plan = compile_spec(write(project).read_text(), str(project / "s.mpt"))
    assert [(m.name, m.in_dim) for m in plan.modules] == [("encoder", 6), ("pt_head", 8), ("ft_head", 8)]
    assert plan.modules[0].component.args == {"path": str(project / "bert"), "pool": "mean", "input": "ids"}


@pytest.mark.parametrize("path, message", [
    ('"nothing"', "'path': no such file or folder 'nothing'"),
    ('"."', "encoder has no config.json in"),
])
def test_a_missing_folder_or_config_is_located(project, path, message):
    text = write(project).read_text().replace('hf(path: "bert")', f"hf(path: {path})")
    with pytest.raises(SpecErrors) as info:
        compile_spec(text, str(project / "s.mpt"))
    e = info.value.errors[0]
    assert e.span.line in (4, 10) and message in e.message


def test_embeddings_input_is_checked_against_the_hidden_size(project):
    with pytest.raises(SpecErrors) as info:
        compile_spec(write(project, ", input: embeds").read_text(), str(project / "s.mpt"))
    assert info.value.errors[0].message == "encoder expects embeddings of shape [batch, length, 8], got [batch, 6]"


def test_pooling_and_inputs(project):
    torch.manual_seed(0)
    ids = torch.tensor([[5.0, 7.0, 9.0, 0.0], [3.0, 4.0, 0.0, 0.0]])   # floats holding ids; 0 is the pad token
    encoders = {pool: hf(str(project / "bert"), pool=pool).eval() for pool in ("mean", "first", "pooler")}
    bert = encoders["mean"].model
    with torch.no_grad():
        hidden = bert(input_ids=ids.long(), attention_mask=(ids != 0).long()).last_hidden_state
        assert torch.allclose(encoders["mean"](ids)[0], hidden[0, :3].mean(0), atol=1e-6)   # pads left out
        assert torch.allclose(encoders["first"](ids), hidden[:, 0], atol=1e-6)
        assert encoders["pooler"](ids).shape == (2, 8)
        embeds = torch.randn(2, 4, 8)
        out = hf(str(project / "bert"), input="embeds").eval()(embeds)
    assert out.shape == (2, 8)


def test_loading_never_reaches_the_network(project, tmp_path):
    (tmp_path / "config.json").write_text((project / "bert" / "config.json").read_text())   # no weights
    with pytest.raises(RunError, match="hf: cannot load a model from"):
        hf(str(tmp_path))


def test_meta_training_through_a_pretrained_encoder(project):
    """`pool: pooler` reaches every parameter of the BERT: the run goes through the IFT hypergradient."""
    path = write(project, ", pool: pooler", "pooler.mpt")
    assert main(["run", str(path), "--out", str(project / "run-pooler"), "--quiet"]) == 0
    w = json.loads((project / "run-pooler" / "meta.json").read_text())["w"]["values"]
    assert len(w) == 4 and all(np.isfinite(w)) and w != [0.0] * 4


def test_parameters_the_loss_does_not_reach_get_zero_gradients(project):
    path = write(project, ", pool: mean", "mean.mpt")
    from mptc.runtime.executor import run_plan
    out = run_plan(compile_spec(path.read_text(), str(path)), path.read_text(), project / "run-mean", progress=False)
    params = torch.load(out / "checkpoint.pt")["params"]
    initial = transformers.BertModel.from_pretrained(project / "bert").state_dict()
    assert torch.equal(params["encoder.model.pooler.dense.weight"], initial["pooler.dense.weight"])


class _Hostile:
    def __reduce__(self):
        import os
        return (os.system, ("echo ran",))


def _damaged(project, tmp_path, how):
    """A copy of the tiny BERT's folder, damaged by `how(folder)`; the spec's path names it."""
    import shutil
    folder = tmp_path / "bert"
    shutil.copytree(project / "bert", folder)
    how(folder)
    for name in ("pt.npz", "ft.npz"):
        shutil.copy(project / name, tmp_path / name)
    return write(tmp_path)


def _bin_instead(folder, obj):
    import pickle
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump(obj, f)


@pytest.mark.parametrize("how, message", [
    (lambda f: (f / "config.json").write_text("[1, 2, 3]"), "its config.json holds a JSON list, not an object"),
    (lambda f: (f / "config.json").write_text(json.dumps({**json.loads((f / "config.json").read_text()),
                                                           "hidden_size": "8"})),
     "its config.json's hidden_size is '8', not an integer"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:len((f / "model.safetensors").read_bytes()) // 2]),
     "its weights: bert/model.safetensors: truncated"),
    (lambda f: (f / "model.safetensors").write_bytes(bytes(100)), "its weights: bert/model.safetensors: cannot read it"),
    (lambda f: _bin_instead(f, {"w": _Hostile()}), "its weights: bert/pytorch_model.bin: holds a posix.system"),
], ids=["config-list", "hidden-str", "truncated", "garbage", "hostile-bin"])
def test_a_damaged_or_hostile_model_folder_is_a_located_error_at_check(project, tmp_path, monkeypatch, capsys, how,
                                                                        message):
    spec = _damaged(project, tmp_path, how)
    monkeypatch.chdir(tmp_path)
    assert main(["check", spec.name]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s.mpt:10:42: error: encoder ") and message in err.splitlines()[0], err


def test_weights_of_another_shape_are_one_named_line_at_run(project, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    def shrink(folder):
        weights = load_file(folder / "model.safetensors")
        weights["embeddings.word_embeddings.weight"] = weights["embeddings.word_embeddings.weight"][:10].clone()
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    spec = _damaged(project, tmp_path, shrink)
    assert main(["run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another shape than its config.json describes" in err, err
