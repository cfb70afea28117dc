"""`mptc report`: the page and its images from run directories (hand-written and real), the named errors,
the run artifacts it plots (planted relevance, per-example weights) and the page in headless Chromium."""
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mptc.cli import main
from mptc.compiler.lower import compile_spec
from mptc.report import load_run, write_report
from mptc.runtime.artifacts import example_weights, weighting_expr
from mptc.runtime.data import Data
from mptc.runtime.program import Ctx, Program

from tests.conftest import tiny_spec  # noqa: E402

TINY = tiny_spec(meta_steps=4, log_every=1, against="pretrain")

NET = """
spec net "a weighting network"
data pt = images.digits(flatten: true, portion: [0.0, 0.3], corrupt: 0.5, seed: 0)
data ft = images.digits(flatten: true, portion: [0.5, 1.0], seed: 1) split train 0.5, val 0.5
model encoder = mlp(hidden: [8])
head pt_head = linear(out: 10)
head ft_head = linear(out: 10)
meta n: network mlp(hidden: [4, 1], last_activation: false)
LETS
pretrain { data pt batch 16  loss LOSS  steps 1 }
finetune { data ft.train batch 16  loss mean(bce(ft_head(encoder(x)), y)) }
meta_objective mean(bce(ft_head(encoder(x)), y)) on ft.val
train meta_steps 2 warmup 1 seed 0 device cpu
"""
WEIGHT_LETS = """let losses = column(ce(pt_head(encoder(x)), y))
let weight = 2 * sigmoid(n(log(detach(losses) + 0.000001)))"""
WEIGHT_LOSS = "mean(weight * losses) / mean(weight)"

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src"));
  const out = document.createElement("pre");
  out.id = "mptc-check";
  out.textContent = JSON.stringify({images: images.length, broken: broken});
  document.body.appendChild(out);
});
</script>"""


# ---- hand-written run directories -------------------------------------------------------------------
def fake_run(path: Path, *, evals=True, scalar=True, vector=True, weights=False, steps=12) -> Path:
    """A run directory written by hand: every file `mptc report` reads, each optional part switchable."""
    path.mkdir(parents=True)
    metas = [{"name": "phi", "kind": "scalar"}] * scalar + [{"name": "w", "kind": "vector"}] * vector
    (path / "ir.json").write_text(json.dumps({"node": "Plan", "name": "demo", "doc": "A <demo> run", "metas": metas}))
    (path / "spec.mpt").write_text('spec demo "A <demo> run"\n')
    rows = [{"meta_step": m, "pt_loss": 1 / m, "ft_val_loss": 2 / m, "hypergrad_norm": 10.0 ** -m,
             "solver_residual": None, "skipped": False, **({"meta.phi": 3.0 * m} if scalar else {}),
             "meta.n.2.bias": 0.1} for m in range(1, steps + 1)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "meta.json").write_text(json.dumps({"w": [0.5, -1.0, 2.0, 0.0]} if vector else {}))
    (path / "diagnostics.json").write_text(json.dumps(
        {"w_vs_relevant_auroc": 0.75, "planted": {"w": [0, 1, 1, 0]},
         "planted_kind": {"w": ["unrelated", "related", "related", "adversarial"]}} if vector else {}))
    if evals:
        (path / "eval.json").write_text(json.dumps({
            "meta": {"metric": "auroc", "mean": 0.8, "stderr": 0.01, "seeds": 3, "values": [0.79, 0.8, 0.81]},
            "pretrain": {"metric": "auroc", "mean": 0.7, "stderr": 0.02, "seeds": 3, "values": [0.68, 0.7, 0.72]},
            "rotation_error_deg": {"mean": 4.0, "stderr": 1.0, "values": [3.0, 5.0], "target": 90.0},
            "restarts": {"meta": "phi", "inits": [0.0, 120.0], "finals": [86.0, 95.0],
                         "paths": [[40.0, 86.0], [100.0, 95.0]]}}))
    if weights:
        (path / "example_weights.json").write_text(json.dumps({"n": {
            "of": "weight", "dataset": "pt", "split": "all", "values": [0.1, 0.2, 1.9, 1.8, 2.0, 0.15],
            "clean": [0, 0, 1, 1, 1, 0]}}))
    return path


def images_of(page: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page.read_text())


def test_one_run_gets_every_section_with_images_beside_the_page(tmp_path):
    run = fake_run(tmp_path / "run", weights=True)
    assert main(["report", str(run)]) == 0
    page = run / "report.html"
    text = page.read_text()
    assert images_of(page) == ["loss.png", "hypergradient.png", "meta_scalars.png", "weights_w.png",
                               "example_weights_n.png", "restarts.png", "eval.png"]
    assert all((run / name).stat().st_size > 1000 for name in images_of(page))
    assert "A &lt;demo&gt; run" in text and "<demo>" not in text      # the spec's text is escaped
    assert '<a href="metrics.jsonl">' in text and 'href="report.html"' not in text
    assert "0.8 ± 0.01 (3 seeds)" in text and "rotation_error_deg" in text and "w_vs_relevant_auroc" in text


def test_scalar_panels_are_the_plans_scalars_only(tmp_path):
    run = load_run(fake_run(tmp_path / "run"))
    assert run.scalars == ["phi"]                         # not the network's one-element bias meta.n.2.bias


def test_missing_files_omit_their_sections(tmp_path):
    run = fake_run(tmp_path / "run", evals=False, scalar=False, vector=False)
    (run / "ir.json").unlink()
    page = write_report([run])
    assert images_of(page) == ["loss.png", "hypergradient.png"]  # no residual logged: one panel, not an empty one
    assert "Evaluation" not in page.read_text() and "demo" in page.read_text()   # name from spec.mpt


def test_a_search_run_plots_its_trials(tmp_path):
    run = fake_run(tmp_path / "search", evals=False, scalar=False, vector=False)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"trial": t, "ft_val_loss": 1.0 / (t + 1)}) + "\n"
                                               for t in range(4)))
    page = write_report([run])
    assert images_of(page) == ["loss.png"] and "<td>trial</td><td>3</td>" in page.read_text()


def test_several_runs_share_plots_and_default_to_their_parent_folder(tmp_path):
    a = fake_run(tmp_path / "sweep" / "000-lr=1", weights=True)
    b = fake_run(tmp_path / "sweep" / "001-lr=2", steps=5)
    assert main(["report", str(a), str(b), str(a)]) == 0
    page = tmp_path / "sweep" / "report.html"
    assert all((page.parent / name).is_file() for name in images_of(page))
    text = page.read_text()
    assert '<a href="000-lr=1/metrics.jsonl">' in text and text.count("<th>001-lr=2</th>") == 4
    assert text.count('<div class="run">') == 2 and not (a / "report.html").exists()
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "elsewhere")]) == 0
    assert '<a href="../sweep/000-lr=1/metrics.jsonl">' in (tmp_path / "elsewhere" / "report.html").read_text()


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "is not a run directory: no such folder"),
    (lambda d: (d / "file.txt").write_text("x") and d / "file.txt", "is not a run directory: not a folder"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "is not a run directory (it has none of ir.json"),
    (lambda d: fake_run(d / "runs" / "r1").parent, "it holds run directories (r1): mptc report"),
    (lambda d: (fake_run(d / "bad") / "eval.json").write_text("{oops") and d / "bad", "eval.json' is not valid JSON"),
    (lambda d: (fake_run(d / "bad2") / "metrics.jsonl").write_text('{"meta_step": 1}\n{\n') and d / "bad2",
     "metrics.jsonl' line 2 is not valid JSON"),
    (lambda d: (fake_run(d / "bad3") / "ir.json").write_text("[1]") and d / "bad3", "ir.json' is not a JSON object"),
])
def test_a_non_run_folder_is_a_named_error(tmp_path, capsys, make, message):
    assert main(["report", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mptc: error: ") and message in err and "Traceback" not in err


# ---- a real run, `mptc run --report` ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    (root / "tiny.mpt").write_text(TINY)
    assert main(["run", str(root / "tiny.mpt"), "--out", str(root / "run"), "--quiet", "--report"]) == 0
    return root / "run"


def test_run_report_flag_writes_the_page_into_the_run_directory(tiny_run):
    assert images_of(tiny_run / "report.html") == ["loss.png", "hypergradient.png", "weights_w.png",
                                                   "weights_task_weight.png", "eval.png"]
    diagnostics = json.loads((tiny_run / "diagnostics.json").read_text())
    planted = diagnostics["planted"]["w"]
    assert planted == diagnostics["planted"]["task_weight"] and sum(planted) == 4 and len(planted) == 12
    assert diagnostics["planted_kind"]["w"].count("adversarial") == 2
    assert "w_vs_relevant_auroc" in diagnostics


# ---- per-example weights (runtime/artifacts.py) -----------------------------------------------------
def _program(text: str):
    plan = compile_spec(text)
    torch.manual_seed(0)
    prog, data = Program(plan, torch.device("cpu")), Data(plan, torch.device("cpu"))
    return plan, prog, data


def test_example_weights_are_the_weight_let_on_every_pt_example():
    plan, prog, data = _program(NET.replace("LETS", WEIGHT_LETS).replace("LOSS", WEIGHT_LOSS))
    params, metas = prog.init_params(), prog.init_metas()
    rng = torch.get_rng_state()
    found = example_weights(plan, prog, data, params, metas)["n"]
    assert torch.equal(torch.get_rng_state(), rng)
    x, y = data.splits("pt")["all"]
    with torch.no_grad():
        expected = prog.lets["weight"](Ctx(params, metas, x, y)).flatten().double()
    assert found["of"] == "weight" and (found["dataset"], found["split"]) == ("pt", "all")
    assert len(found["values"]) == len(x) == 539                   # 30% of the 1797 digits
    assert torch.allclose(torch.tensor(found["values"], dtype=torch.float64), expected, rtol=1e-5)
    assert found["clean"] == [int(c) for c in data.info("pt")["clean"]] and 0 < sum(found["clean"]) < len(x)


@pytest.mark.parametrize("lets, loss, expected", [
    (WEIGHT_LETS, WEIGHT_LOSS, "weight"),
    ("let raw = n(x)\nlet weight = 2 * sigmoid(raw)\nlet unused = 3 * sigmoid(raw)",
     "mean(weight * column(ce(pt_head(encoder(x)), y)))", "weight"),     # outermost, and the one PT uses
    ("", "mean(n(x) * column(ce(pt_head(encoder(x)), y)))", "n(...)"),   # applied in the loss: its output
])
def test_weighting_expr_is_the_outermost_let_else_the_network_itself(lets, loss, expected):
    plan = compile_spec(NET.replace("LETS", lets).replace("LOSS", loss))
    assert weighting_expr(plan, "n")[0] == expected


def test_inline_network_output_is_written_per_example():
    inline = "mean(n(x) * column(ce(pt_head(encoder(x)), y)))"
    plan, prog, data = _program(NET.replace("LETS", "").replace("LOSS", inline))
    found = example_weights(plan, prog, data, prog.init_params(), prog.init_metas())
    assert found["n"]["of"] == "n(...)" and len(found["n"]["values"]) == 539


def test_no_network_no_example_weights():
    plan, prog, data = _program(TINY)
    assert example_weights(plan, prog, data, prog.init_params(), prog.init_metas()) == {}


# ---- the page in headless Chromium ----------------------------------------------------------------------
def browser_check(page: Path, extra: str = "") -> tuple[dict, list[str]]:
    """({"images", "broken"}, console lines) of `page` in headless Chromium: a copy beside it with a script
    that writes each image's state into the DOM, dumped after load; console messages come on stderr."""
    copy = page.with_name("report.check.html")
    copy.write_text(page.read_text().replace("</body>", extra + CHECK + "</body>"))
    profile = page.parent / ".chromium-profile"
    try:
        done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                               "--no-first-run", "--disable-background-networking", "--disable-component-update",
                               "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                               "--virtual-time-budget=5000", "--dump-dom", copy.as_uri()],
                              capture_output=True, text=True, timeout=120, check=False)
    finally:
        copy.unlink()
        shutil.rmtree(profile, ignore_errors=True)
    found = re.search(r'<pre id="mptc-check">(.*?)</pre>', done.stdout, re.DOTALL)
    assert found, f"chromium wrote no check result (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found[1])), [line for line in done.stderr.splitlines() if "CONSOLE" in line]


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (bash .ci/setup installs "
                                                              "Debian's chromium package): the page is not opened")


@needs_chromium
def test_the_page_loads_every_image_without_console_errors(tiny_run, tmp_path):
    state, console = browser_check(tiny_run / "report.html")
    assert state == {"images": 5, "broken": []} and console == []
    page = write_report([fake_run(tmp_path / "a", weights=True), fake_run(tmp_path / "b")])
    state, console = browser_check(page)
    assert state == {"images": 7, "broken": []} and console == []


@needs_chromium
def test_the_browser_check_sees_a_missing_image_and_a_throwing_script(tmp_path):
    page = write_report([fake_run(tmp_path / "run")])
    (page.parent / "eval.png").unlink()
    state, console = browser_check(page, '<script>throw new Error("boom")</script>')
    assert state["broken"] == ["eval.png"]
    assert any("Uncaught Error: boom" in line for line in console)
