"""The built-in components: declared parameters, shape rules and where each implementation lives.

Torch-free on purpose: `mptc check` validates a spec against this table without importing torch.
A user adds a component the same way, e.g. `MODELS.register("mynet", [Param(...)], target=fn)`.

    >>> from mptc.components.registry import MODELS
    >>> [p.name for p in MODELS.get("mlp").params][:2]
    ['hidden', 'in']
"""
from __future__ import annotations

from mptc.components.registry import (AUGMENTATIONS, BASELINES, DATASETS, ESTIMATORS, FUNCTIONS, HEADS, MODELS, OPTIMIZERS,
                                   PROTOCOLS, SOLVERS, Param)
from mptc.components.shapes import (B, JK_MODES, POOLS, GraphFeatures, ShapeProblem, broadcast, features,
                                    fmt, gin_features, is_graph, is_tokens)


def _dense(out_key):
    def rule(args, in_shape):
        declared, got = args.get("in"), features(in_shape)
        if declared is not None and got is not None and declared != got:
            raise ShapeProblem(f"declared in: {declared} but its input has {got} features")
        return (B, out_key(args))
    return rule


# ---- models and heads ----------------------------------------------------------------------------
_ACTS = ("relu", "tanh", "gelu", "sigmoid", "identity")
MODELS.register("mlp", [
    Param("hidden", "ints", min=1, doc="widths of the hidden layers; the last is the feature size"),
    Param("in", "int", None, min=1, compile_only=True,
          doc="input features, checked against the data (inferred from it when left out)"),
    Param("activation", "choice", "relu", choices=_ACTS),
    Param("dropout", "float", 0.0, min=0, max=1),
    Param("last_activation", "bool", True, doc="apply the activation after the last layer too"),
], target="mptc.runtime.models:mlp", doc="A multi-layer perceptron, activation after every hidden layer.",
    shape=_dense(lambda a: a["hidden"][-1]))
MODELS.register("linear", [Param("out", "int", min=1), Param("in", "int", None, min=1, compile_only=True),
                           Param("bias", "bool", True)],
                target="mptc.runtime.models:linear", doc="One linear map.", shape=_dense(lambda a: a["out"]))


def _conv_shape(axes: int):
    """The shape rule of a CNN over `axes` spatial axes: [batch, channels, *axes] -> [batch, features]."""
    def rule(args, in_shape):
        if in_shape is not None and (len(in_shape) != 2 + axes or is_graph(in_shape)):
            want = "[batch, channels, length]" if axes == 1 else "[batch, channels, height, width]"
            raise ShapeProblem(f"expects inputs of shape {want}, got {fmt(in_shape)}")
        if args.get("out") is not None:
            return (B, args["out"])
        if args["pool"] != "flatten":
            return (B, args["channels"][-1])
        if in_shape is None:                      # flattened: the width depends on the input's size
            return None
        sizes = list(in_shape[2:])
        for _ in args["channels"]:
            sizes = [(n + 2 * (args["kernel"] // 2) - args["kernel"]) // args["stride"] + 1 for n in sizes]
        out = args["channels"][-1]
        for n in sizes:
            out *= n
        return (B, out)
    return rule


def _cnn_params(channels, kernel, stride):
    return [Param("channels", "ints", channels, min=1, doc="output channels of each conv layer"),
            Param("kernel", "int", kernel, min=1), Param("stride", "int", stride, min=1),
            Param("pool", "choice", "avg", choices=("avg", "max", "flatten"),
                  doc="global average/max over the spatial axes, or flatten them"),
            Param("activation", "choice", "relu", choices=_ACTS),
            Param("norm", "choice", "none", choices=("none", "batch")),
            Param("out", "int", None, min=1, doc="a final linear layer to this many features (e.g. 1: one "
                  "number per example, for a meta network)")]


MODELS.register("cnn2d", _cnn_params([16, 32, 32, 32], 3, 1), target="mptc.runtime.models:cnn2d",
                shape=_conv_shape(2), doc="A 2-D CNN for images [batch, channels, height, width].")
MODELS.register("cnn1d", _cnn_params([32, 32, 32, 32], 7, 2), target="mptc.runtime.models:cnn1d",
                shape=_conv_shape(1), doc="A 1-D CNN for signals [batch, channels, length] (e.g. 12-lead ECGs).")


def _gin_shape(args, in_shape):
    if in_shape is not None and not is_graph(in_shape):
        raise ShapeProblem(f"expects a batch of graphs (graphs.* data), got {fmt(in_shape)}")
    declared, got = args.get("in"), in_shape[1].nodes if in_shape is not None else None
    if declared is not None and got is not None and declared != got:
        raise ShapeProblem(f"declared in: {declared} but its graphs have {got} node features")
    return (B, gin_features(args["hidden"], args["layers"], args["jk"], args["pool"]))


MODELS.register("gin", [
    Param("layers", "int", 5, min=1), Param("hidden", "int", 300, min=1),
    Param("jk", "choice", "last", choices=JK_MODES, doc="jumping knowledge over the layers"),
    Param("pool", "choice", "mean_center", choices=POOLS, doc="mean_center: mean pool ++ centre node"),
    Param("dropout", "float", 0.2, min=0, max=1), Param("norm", "choice", "batch", choices=("batch", "none")),
    Param("in", "int", None, min=1, compile_only=True,
          doc="node features, checked against the data (inferred from it when left out)"),
    Param("edge_dim", "int", None, min=0, doc="edge features (inferred from the data when left out)"),
], target="mptc.runtime.graphs:gin", shape=_gin_shape,
    doc="The pretrain-gnns GIN (Hu et al. 2020) with edge features; graph readout, 2*hidden for mean_center.")
def hf_config(path: str) -> dict:
    """The `config.json` of a saved transformers model folder (read as JSON: no transformers import)."""
    import json
    import os
    file = os.path.join(path, "config.json")
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise ShapeProblem(f"has no config.json in {path} (a folder written by save_pretrained)") from None
    except (OSError, ValueError) as e:
        raise ShapeProblem(f"cannot read {file}: {e}") from None
    if not isinstance(config, dict):
        raise ShapeProblem(f"its config.json holds a JSON {type(config).__name__}, not an object of settings")
    return config


def hf_weights(path: str) -> None:
    """The weights file of a saved transformers folder, read at its header only (components/datafiles.py:
    nothing in it runs): a truncated or foreign `model.safetensors`, or a `pytorch_model.bin` whose pickle
    holds anything but tensors, is a ShapeProblem at check rather than a failure at run time."""
    from pathlib import Path
    from mptc.components.datafiles import DataProblem, weights_headers
    folder = Path(path)
    file = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()), None)
    if file is None:
        return                                          # sharded or another layout: transformers reads it
    try:
        weights_headers(file)
    except DataProblem as e:
        raise ShapeProblem(f"its weights: {e}") from None


HF_WIDTH_KEYS = ("hidden_size", "d_model", "n_embd", "dim")  # what configs call the hidden state's width


def _hf_shape(args, in_shape):
    config = hf_config(args["path"])
    width = next((config[k] for k in HF_WIDTH_KEYS if isinstance(config.get(k), int)), None)
    if width is None:
        named = next((k for k in HF_WIDTH_KEYS if k in config), None)
        raise ShapeProblem(f"its config.json's {named} is {config[named]!r}, not an integer" if named else
                           f"its config.json names no hidden size ({', '.join(HF_WIDTH_KEYS)})")
    hf_weights(args["path"])
    if in_shape is not None and args["input"] == "ids" and (len(in_shape) != 2 or is_graph(in_shape)):
        raise ShapeProblem(f"expects token ids of shape [batch, length], got {fmt(in_shape)}")
    if in_shape is not None and args["input"] == "embeds" and (len(in_shape) != 3 or in_shape[2] != width):
        raise ShapeProblem(f"expects embeddings of shape [batch, length, {width}], got {fmt(in_shape)}")
    if is_tokens(in_shape):                       # text data (text.jsonl): its ids must fit the model
        tokens, vocab, positions = in_shape[1], config.get("vocab_size"), config.get("max_position_embeddings")
        if isinstance(vocab, int) and tokens.vocab > vocab:
            raise ShapeProblem(f"has {vocab} token ids (config.json's vocab_size), its input's go up to "
                               f"{tokens.vocab - 1}: tokenize with the model's own tokenizer (tokenizer_path: ...)")
        if isinstance(positions, int) and tokens.length > positions:
            raise ShapeProblem(f"has {positions} positions (config.json's max_position_embeddings), its input "
                               f"{tokens.length} tokens: lower the data's max_length")
    return (B, width)


MODELS.register("hf", [
    Param("path", "path", doc="a folder written by transformers' save_pretrained (config.json and weights); "
          "loaded with local_files_only: no network"),
    Param("pool", "choice", "mean", choices=("mean", "first", "pooler"),
          doc="mean of the last hidden state over the unmasked tokens, its first token's ([CLS]), or the "
              "model's own pooler output"),
    Param("input", "choice", "ids", choices=("ids", "embeds"),
          doc="x holds token ids [batch, length] (integers, or floats that are integers), or input "
              "embeddings [batch, length, hidden] (inputs_embeds)"),
], target="mptc.runtime.hf:hf", shape=_hf_shape,
    doc="A pretrained transformers encoder from a local folder: AutoModel.from_pretrained, pooled to [batch, hidden].")
HEADS.register("linear", [Param("out", "int", min=1), Param("bias", "bool", True)],
               target="mptc.runtime.models:linear", doc="A linear task head.", shape=_dense(lambda a: a["out"]))
HEADS.register("mlp", [Param("hidden", "ints", min=1), Param("out", "int", min=1),
                       Param("activation", "choice", "relu", choices=_ACTS)],
               target="mptc.runtime.models:mlp_head", doc="An MLP head.", shape=_dense(lambda a: a["out"]))


# ---- data ----------------------------------------------------------------------------------------
def _planted(tasks: int, related: int, adversarial: int, of: str = "tasks"):
    if related + adversarial > tasks:
        raise ShapeProblem(f"related + adversarial = {related + adversarial} exceeds {of} = {tasks}")


def _multitask_shape(args, _):
    _planted(args["tasks"], args["related"], args["adversarial"])
    if args["related_factors"] >= args["factors"]:
        raise ShapeProblem(f"related_factors = {args['related_factors']} must be < factors = {args['factors']}")
    return {"x": (B, args["dim"]), "y": (B, args["tasks"])}


def _multitask_ft_shape(args, _):
    return {"x": args["of"]["x"], "y": (B, args["tasks"])}


def _synthetic_graphs_shape(args, _):
    _planted(args["pt_tasks"], args["related"], args["adversarial"], of="pt_tasks")
    if args["max_nodes"] < args["min_nodes"]:
        raise ShapeProblem(f"max_nodes = {args['max_nodes']} < min_nodes = {args['min_nodes']}")
    if args["task"] == "pretrain":
        return _graph_shape(args["node_dim"], args["edge_dim"], args["pt_tasks"])
    return _graph_shape(args["node_dim"], args["edge_dim"], args["ft_tasks"], ("train", "val", "test", "all"))


def _graph_shape(nodes, edges, tasks, splits=()):
    return {"x": (B, GraphFeatures(nodes, edges)), "y": (B, tasks), **({"splits": splits} if splits else {})}


_GRAPH_TASK = Param("task", "choice", "pretrain", choices=("pretrain", "finetune"),
                    doc="pretrain: split all with the PT targets; finetune: train/val/test (+all) with the FT ones")
# the published bio file's widths: 1 node feature; 7 evidence channels + the self-loop and masking flags
# pretrain-gnns reserves; 5000 GO pre-training and 40 downstream tasks
BIO_NODE_DIM, BIO_EDGE_DIM, BIO_TASKS = 1, 9, {"go_target_pretrain": 5000, "go_target_downstream": 40}
DATASETS.register("graphs.bio", [
    Param("root", "path", doc="the folder holding supervised/processed/geometric_data_processed.pt"),
    _GRAPH_TASK, Param("seed", "int", 42, doc="the published random_split seed"),
], target="mptc.runtime.graphs:bio",
    shape=lambda a, _: _graph_shape(BIO_NODE_DIM, BIO_EDGE_DIM, BIO_TASKS["go_target_pretrain"], ())
    if a["task"] == "pretrain" else _graph_shape(BIO_NODE_DIM, BIO_EDGE_DIM, BIO_TASKS["go_target_downstream"],
                                                 ("train", "val", "test", "test_easy", "all")),
    doc="pretrain-gnns bio ego-networks (PyG 1.x file converted and cached); species split, human = FT test.")
DATASETS.register("graphs.synthetic", [
    Param("graphs", "int", min=2, max=10 ** 7), Param("pt_tasks", "int", min=1, max=10 ** 5),
    Param("related", "int", min=0), Param("ft_tasks", "int", min=1, max=10 ** 5), Param("adversarial", "int", 0, min=0), _GRAPH_TASK,
    Param("related_motifs", "int", 3, min=1, max=5), Param("min_nodes", "int", 10, min=2),
    Param("max_nodes", "int", 20, min=2), Param("extra_edges", "float", 0.2, min=0),
    Param("max_count", "int", 3, min=1), Param("node_dim", "int", 3, min=1), Param("edge_dim", "int", 2, min=0),
    Param("noise", "float", 0.1, min=0), Param("ft_split", "floats", [0.2, 0.2, 0.6]), Param("seed", "int", 0),
], target="mptc.runtime.graphs:synthetic_graphs",
    shape=_synthetic_graphs_shape,
    doc="Random graphs with planted motifs; PT tasks on FT-related motifs, unrelated motifs or noise.")
DATASETS.register("synthetic.multitask", [
    Param("examples", "int", min=2, max=10 ** 8), Param("dim", "int", min=1, max=10 ** 5),
    Param("tasks", "int", min=1, max=10 ** 5), Param("related", "int", min=0), Param("adversarial", "int", 0, min=0),
    Param("factors", "int", 8, min=2, max=10 ** 4), Param("related_factors", "int", 3, min=1),
    Param("noise", "float", 0.1, min=0), Param("prototypes", "int", 5, min=1),
    Param("spread", "float", 0.5, min=0), Param("seed", "int", 0),
], target="mptc.runtime.datasets:synthetic_multitask", shape=_multitask_shape,
    doc="Multi-label PT tasks over planted latent factors; info['relevant'] marks the FT-related ones.")
DATASETS.register("synthetic.multitask_ft", [
    Param("of", "dataset"), Param("examples", "int", min=2, max=10 ** 8), Param("tasks", "int", min=1, max=10 ** 5),
    Param("seed", "int", 0),
], target="mptc.runtime.datasets:synthetic_multitask_ft", shape=_multitask_ft_shape,
    doc="The FT companion of a synthetic.multitask set: new tasks on its related factors.")

def heldout_columns(tasks: int, groups: int, fold: int) -> list[int]:
    """The task columns held out of meta-training: group ``fold mod groups`` of ``groups`` contiguous,
    near-equal groups (``numpy.array_split`` sizes), so varying ``fold`` with a seed cycles the groups.

        >>> heldout_columns(40, 4, 1), heldout_columns(5, 2, 2)
        ([10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [0, 1, 2])
    """
    return list(_heldout_range(tasks, groups, fold))


def _heldout_range(tasks: int, groups: int, fold: int) -> range:
    if not 2 <= groups <= tasks:
        raise ShapeProblem(f"groups must be in 2..{tasks} (the source's tasks), got {groups}")
    g, (size, extra) = fold % groups, divmod(tasks, groups)
    start = g * size + min(g, extra)
    return range(start, start + size + (g < extra))


def _heldout_shape(args, _):
    source = args["of"]
    tasks = source["y"][-1]
    held = _heldout_range(tasks, args["groups"], args["fold"])  # a range: no list of a huge spec's size
    kept = tasks - (held.stop - held.start)
    splits = tuple(source.get("splits", ("all",)))
    return {"x": source["x"], "y": (B, kept), "splits": (*splits, *(f"heldout_{s}" for s in splits))}


DATASETS.register("tasks.heldout", [
    Param("of", "dataset", doc="the FT dataset whose task columns are divided"),
    Param("groups", "int", 4, min=2, doc="contiguous groups of task columns (40 FT tasks / 4: 10 held out)"),
    Param("fold", "int", 0, min=0, doc="the group held out of meta-training (taken mod groups)"),
], target="mptc.runtime.data:heldout_tasks", shape=_heldout_shape,
    doc="Partial FT access: each split S of `of` with the seen task columns, and heldout_S with the held-out ones.")

# real data and their offline stand-ins (runtime/ecg.py, runtime/images.py; imported only when built)
def _ecg_shape(args, _):
    """12 leads x 10 s, channels first; 5 labels (PTB-XL's superclasses or the generator's planted ones)."""
    return {"x": (B, 12, 10 * args.get("sampling_rate", 100)), "y": (B, 5)}


def _image_shape(args, _):
    side = args["size"]
    return {"x": (B, side * side) if args.get("flatten") else (B, 1, side, side), "y": (B, 10)}


def _with_splits(rule, splits):
    """A shape rule that also names the splits the dataset comes with (the others have only "all")."""
    return lambda args, in_shape: {**rule(args, in_shape), "splits": splits}


def _ptbxl_shape(args, in_shape):
    if args.get("sampling_rate") not in (None, 100, 500):   # the two rates PTB-XL's records come at
        raise ShapeProblem(f"PTB-XL comes at sampling_rate 100 (records100) or 500 (records500), not "
                           f"{args['sampling_rate']}")
    return _ecg_shape(args, in_shape)


DATASETS.register("ecg.ptbxl", [
    Param("root", "path", doc="the unpacked PTB-XL folder (ptbxl_database.csv, scp_statements.csv, records100/)"),
    Param("sampling_rate", "int", 100, min=100, max=500, doc="100 (records100) or 500 (records500)"),
    Param("train_folds", "ints", [1, 2, 3, 4, 5, 6, 7, 8], min=1, max=10),
    Param("val_folds", "ints", [9], min=1, max=10), Param("test_folds", "ints", [10], min=1, max=10),
    Param("min_likelihood", "float", 0.0, min=0, max=100, doc="ignore scp codes below this likelihood"),
    Param("keep_unlabelled", "bool", False, doc="keep records with no diagnostic superclass"),
    Param("standardize", "bool", False, doc="scale each lead by the train split's mean and std"),
], target="mptc.runtime.ecg:ptbxl", shape=_with_splits(_ptbxl_shape, ("train", "val", "test")),
    doc="PTB-XL 12-lead ECGs, 5 diagnostic superclasses (multi-label); splits train/val/test by strat_fold.")
DATASETS.register("ecg.synthetic", [
    Param("examples", "int", min=2, max=10 ** 7), Param("seed", "int", 0, min=0),
    Param("noise", "float", 0.05, min=0, doc="standard deviation of the added noise (signals span ~1.6)"),
    Param("pool", "int", 6, min=2, doc="neurokit2 base records simulated per seed (even: half wide QRS)"),
], target="mptc.runtime.ecg:ecg_synthetic", shape=_ecg_shape,
    doc="Offline 12-lead ECGs in PTB-XL's shape with 5 planted labels (heart rate, ST shifts, voltage, QRS).")
DATASETS.register("images.digits", [
    Param("size", "int", 8, min=1, doc="side of the (bilinearly resampled) images"),
    Param("flatten", "bool", False, doc="x as [batch, size * size] vectors (for MLPs)"),
    Param("portion", "floats", [0.0, 1.0], min=0, max=1,
          doc="[start, stop): the slice of a seeded permutation of the 1797 images kept (disjoint PT/FT sets)"),
    Param("rotate", "float", 0.0, doc="rotate every image by an angle ~ N(rotate, rotate_sigma^2), degrees"),
    Param("rotate_sigma", "float", 0.0, min=0),
    Param("corrupt", "float", 0.0, min=0, max=1,
          doc="fraction of labels replaced by another class at random; info['clean'] marks the others"),
    Param("seed", "int", 0, min=0, doc="the permutation, the angles and the corruption"),
], target="mptc.runtime.images:digits", shape=_image_shape,
    doc="scikit-learn's 1797 8x8 handwritten digits (bundled), one-hot labels; split all.")
DATASETS.register("images.mnist", [
    Param("root", "path", doc="a folder with the four MNIST idx files (plain or .gz)"),
    Param("size", "int", 28, min=1), Param("flatten", "bool", False, doc="x as [batch, size * size] vectors"),
], target="mptc.runtime.images:mnist", shape=_with_splits(_image_shape, ("train", "test")),
    doc="MNIST (or Fashion-MNIST) from local idx files, one-hot labels; splits train/test.")


# ---- the loss-expression vocabulary --------------------------------------------------------------
def _same(args, shapes):
    return shapes[0]


def _pair(args, shapes):
    a, b = shapes
    if a is None or b is None:
        return a if a is not None else b
    out = broadcast(a, b)
    if out is None:
        raise ShapeProblem(f"cannot compare shapes {fmt(a)} and {fmt(b)}")
    return out


def _scalar(args, shapes):
    return ()


def _per_example(args, shapes):
    return None if shapes[0] is None else shapes[0][:1]


def _ce(args, shapes):
    """Logits [B, C] against one-hot targets [B, C] or class indices [B] / [B, 1]: a one-hot target of
    another width would train against the wrong classes (or fail on an index past C at run time)."""
    logits, target = shapes
    if logits is not None and target is not None and len(logits) == len(target) >= 2:
        c, t = logits[-1], target[-1]
        if isinstance(c, int) and isinstance(t, int) and t not in (1, c):
            raise ShapeProblem(f"has {c} classes (its logits {fmt(logits)}) but one-hot targets over {t} "
                               f"({fmt(target)}): make the head's out {t}")
    return _per_example(args, shapes)


_T = Param("input", "tensor")
for _name in ("sigmoid", "softmax", "log_softmax", "exp", "log", "tanh", "relu", "abs", "softplus", "sqrt",
              "detach"):
    FUNCTIONS.register(_name, [_T], target=f"mptc.runtime.functions:{_name}", shape=_same)
for _name, _doc in (("bce", "binary cross-entropy with logits, per element"),
                    ("mse", "squared error, per element")):
    FUNCTIONS.register(_name, [Param("logits", "tensor"), Param("target", "tensor")],
                       target=f"mptc.runtime.functions:{_name}", shape=_pair, doc=_doc)
def _contrastive(args, shapes):
    a, b, t = shapes
    if a is not None and b is not None and a != b:
        raise ShapeProblem(f"needs two views of the same shape, got {fmt(a)} and {fmt(b)}")
    if t is not None and t != ():
        raise ShapeProblem(f"temperature must be one number, got shape {fmt(t)}")
    return None if a is None else a[:1]


FUNCTIONS.register("nt_xent", [Param("a", "tensor"), Param("b", "tensor"), Param("temperature", "tensor")],
                   target="mptc.runtime.functions:nt_xent", shape=_contrastive,
                   doc="SimCLR's NT-Xent between two views' projections [B, D] at a temperature, per example")
FUNCTIONS.register("ce", [Param("logits", "tensor"), Param("target", "tensor")],
                   target="mptc.runtime.functions:ce", shape=_ce,
                   doc="softmax cross-entropy against one-hot targets [B, C] or class indices [B] / [B, 1], "
                       "per example")
for _name in ("mean", "sum"):
    FUNCTIONS.register(_name, [_T], target=f"mptc.runtime.functions:{_name}", shape=_scalar)
# a parameter of kind "module" takes a model or head by name (the checker checks the name, it has no shape);
# l2 is the one such function: lowering makes `l2(m)` the IR node Norm(m), which the Program sums from the params
FUNCTIONS.register("l2", [Param("module", "module", doc="a model or head, by name")],
                   target="mptc.runtime.functions:l2", shape=_scalar,
                   doc="the sum of the squares of a module's parameters (biases included), e.g. a learned "
                       "penalty exp(log_lambda) * l2(encoder)")


def _column(args, shapes):
    return None if shapes[0] is None else (*shapes[0], 1)


def _concat(args, shapes):
    a, b = shapes
    if a is None or b is None:
        return None
    if len(a) != len(b) or a[:-1] != b[:-1]:
        raise ShapeProblem(f"cannot put shapes {fmt(a)} and {fmt(b)} side by side (all but the last "
                           f"axis must agree)")
    return (*a[:-1], a[-1] + b[-1])


FUNCTIONS.register("column", [_T], target="mptc.runtime.functions:column", shape=_column,
                   doc="[batch] -> [batch, 1]: one number per example as a one-feature network input")
FUNCTIONS.register("concat", [Param("a", "tensor"), Param("b", "tensor")], target="mptc.runtime.functions:concat",
                   shape=_concat, doc="two inputs side by side along the last axis, e.g. concat(x, y)")


# ---- augmentations (the `augment` clause; "tensor" parameters take expressions: meta-parameters, ...) --
_PER_EXAMPLE = "one number, or one per example (e.g. a meta network's output)"
AUGMENTATIONS.register("rotate", [Param("mean", "tensor", 0.0, doc="degrees; " + _PER_EXAMPLE),
                                  Param("std", "tensor", 0.0, doc="degrees")],
                       target="mptc.runtime.augment:ROTATE",
                       doc="Images rotated by a ~ N(mean, std^2) degrees, a = mean + std * eps (affine grid + sampling).")
AUGMENTATIONS.register("jitter", [Param("std", "tensor", 0.01, doc=_PER_EXAMPLE)],
                       target="mptc.runtime.augment:JITTER", doc="x + std * eps, eps ~ N(0, I).")
AUGMENTATIONS.register("crop", [Param("keep", "tensor", 0.5, doc="fraction of the length kept; " + _PER_EXAMPLE),
                                Param("softness", "float", 2.0, min=0, min_exclusive=True,
                                      doc="width of the window's sigmoid edges, in samples"),
                                Param("mode", "choice", "keep", choices=("keep", "zero"),
                                      doc="keep the random window and zero the rest, or zero the window")],
                       target="mptc.runtime.augment:CROP",
                       doc="A random window along the last axis kept (the rest zeroed), differentiable in keep.")
AUGMENTATIONS.register("warp", [Param("strength", "tensor", 0.01, doc="displacement scale, fraction of the length; "
                                      + _PER_EXAMPLE),
                                Param("knots", "int", 8, min=2, doc="knots of the random displacement field")],
                       target="mptc.runtime.augment:WARP",
                       doc="Temporal warp: resampled at t + strength * d(t), d a smooth random field.")


# ---- optimizers ----------------------------------------------------------------------------------
_DECAY = Param("weight_decay", "float", 0.0, min=0, meta_expr=True,
               doc="coupled L2 decay (added to the gradient); in a stage's optimizer it may be an expression of "
                   "meta-parameters, e.g. exp(log_wd): a learned decay strength")
_LR = Param("lr", "float", min=0, min_exclusive=True)
_HALFLIFE = Param("halflife", "float", None, min=0, min_exclusive=True,
                  doc="halve the learning rate every this many steps (e.g. a meta-optimizer's, to settle)")
OPTIMIZERS.register("sgd", [_LR, Param("momentum", "float", 0.0, min=0, max=1),
                            _DECAY, _HALFLIFE],
                    target="mptc.runtime.optim:sgd", doc="SGD with optional heavy-ball momentum.")
OPTIMIZERS.register("adam", [Param("lr", "float", 1e-3, min=0, min_exclusive=True),
                             Param("beta1", "float", 0.9, min=0, max=1), Param("beta2", "float", 0.999, min=0, max=1),
                             Param("eps", "float", 1e-8, min=0, min_exclusive=True),
                             _DECAY, _HALFLIFE],
                    target="mptc.runtime.optim:adam", doc="Adam (bias-corrected).")


# ---- hypergradient estimators and their linear solvers -------------------------------------------
SOLVERS.register("neumann", [
    Param("terms", "int", 1, min=0),
    Param("scale", "float", None, min=0, min_exclusive=True, choices=("auto",),
          doc="alpha; defaults to the PT learning rate; auto = 1/lambda_max(H) by power iteration"),
    Param("rescale_every", "int", 50, min=1, doc="meta-steps between lambda_max estimates (scale: auto)"),
    Param("power_iters", "int", 10, min=1, doc="Hessian-vector products per lambda_max estimate (scale: auto)"),
], target="mptc.runtime.solvers:Neumann",
    doc="p = alpha * sum_{j<=J} (I - alpha H)^j v, a truncated Neumann series for H^-1 v.")
SOLVERS.register("cg", [Param("iters", "int", 20, min=1), Param("damping", "float", 0.0, min=0),
                        Param("tol", "float", 1e-10, min=0)],
                 target="mptc.runtime.solvers:CG", doc="Conjugate gradient on (H + damping I) p = v.")
SOLVERS.register("amortized", [
    Param("iters", "int", 2, min=1, max=10 ** 4, doc="Hessian-vector products per meta-step"),
    Param("method", "choice", "cg", choices=("cg", "richardson"),
          doc="cg: conjugate gradient from the warm start; richardson: p <- p - alpha (H p - v)"),
    Param("damping", "float", 0.0, min=0, doc="cg on (H + damping I) p = v"),
    Param("scale", "float", None, min=0, min_exclusive=True, doc="richardson's alpha (default: the PT learning rate)"),
], target="mptc.runtime.solvers:Amortized",
    doc="Amortized implicit differentiation: each solve warm-started from the previous meta-step's p, a few "
        "products each (Arbel & Mairal 2022).")
SOLVERS.register("identity", [], target="mptc.runtime.solvers:Identity",
                 doc="H^-1 ~ I: the first-order (T1-T2 / DARTS) form.")
HVP_MODES = ("reverse-over-reverse", "forward-over-reverse", "finite-difference", "auto")
ESTIMATORS.register("ift", [
    Param("solver", "call:solver", "neumann"),
    Param("hessian", "choice", "all", choices=("all", "encoder"), doc="the parameters H spans"),
    Param("hessian_batch", "int", None, min=1, doc="examples of the PT batch the Hessian products use"),
    Param("hvp", "choice", "reverse-over-reverse", choices=HVP_MODES,
          doc="how H u is formed; auto times the exact modes once and keeps the fastest"),
    Param("fused", "bool", False, doc="reuse the last PT step's gradient graph for H and the mixed term "
                                      "(one forward/backward less; H at theta_{P-1} instead of theta_P)"),
    Param("mixed_batches", "int", 1, min=1, doc="the last N PT batches the mixed term d2L_PT/dtheta dphi "
                                               "averages over (variance / N; H stays on the last one)"),
    Param("mixed_mode", "choice", "reverse-over-reverse", choices=("reverse-over-reverse", "finite-difference"),
          doc="how the mixed term is formed; finite-difference: two first-order passes per batch"),
], target="mptc.runtime.hypergradient:IFT", traits=("pretrain",),
    doc="Implicit function theorem through the PT stage: -v^T H^-1 d2L_PT/dtheta dphi.")
ESTIMATORS.register("unroll", [], target="mptc.runtime.hypergradient:Unroll", traits=("pretrain", "finetune"),
                    doc="Exact reverse mode: through the FT stage's K steps, or the PT stage's last P steps.")
ESTIMATORS.register("search", [
    Param("method", "choice", "random", choices=("random",)),
    Param("trials", "int", 8, min=1), Param("low", "float", -3.0), Param("high", "float", 3.0),
], target="mptc.runtime.hypergradient:Search", traits=("pretrain",),
    doc="Gradient-free: whole PT -> FT runs at random meta-parameters, the best on the meta-objective kept.")
ESTIMATOR_DEFAULTS = {"pretrain": "ift", "finetune": "unroll"}


# ---- evaluation ----------------------------------------------------------------------------------
PROTOCOLS.register("finetune", [
    Param("epochs", "int", 50, min=1), Param("metric", "choice", "auroc", choices=("auroc", "accuracy", "top1"),
          doc="auroc or accuracy per task (sigmoid heads), or top1: multi-class accuracy (a softmax head)"),
    Param("seeds", "int", 5, min=1), Param("lr", "float", 1e-3, min=0, min_exclusive=True),
    Param("batch", "int", 128, min=1), Param("mode", "choice", "full", choices=("full", "linear")),
    Param("patience", "int", 10, min=1),
    Param("tasks", "choice", "seen", choices=("seen", "heldout"),
          doc="heldout: fine-tune on the heldout_* splits (tasks.heldout data): partial FT access"),
    Param("labels", "ints", None, min=1, doc="fine-tune on this many labelled train examples each (a random "
          "subset per seed), one result per size in eval.json's by_labels; the first size is the headline"),
    Param("search_trials", "int", 2, min=1, doc="PT runs of the `search` baseline: for equal compute, the meta "
          "run's wall time over a PT run's (about 2 on the graph study)"),
    Param("resplit", "bool", False, doc="at each seed, pool the meta-objective data's train, val and test and "
          "split them again at random (the sizes as declared): seeds then vary the split too"),
    Param("head_init", "float", 0.01, min=0, doc="the fresh FT head's initial values: PyTorch's default times "
          "this (near zero, seeds differ); 0: a zero head (docs/runtime.md, Evaluation)"),
], target="mptc.runtime.evaluate:finetune", traits=("baselines", "splits"),
    doc="Fine-tune the pre-trained encoder and each baseline's with a fresh head per seed, early-stopped on FT-val.")
PROTOCOLS.register("restarts", [
    Param("inits", "floats", doc="initial values of the scalar meta-parameter, one meta-training run each"),
    Param("meta", "str", None, doc="which scalar meta-parameter (default: the only one)"),
], target="mptc.runtime.headlines:restarts",
    doc="Meta-train again from each initial value and report where each ends (rotation_error_deg when the "
        "meta-objective's data is rotated).")
BASELINES.register("no_pretrain", [], target="mptc.runtime.baselines:no_pretrain",
                   doc="The encoder at its initialisation.")
BASELINES.register("pretrain", [], target="mptc.runtime.baselines:plain_pretrain",
                   doc="The same PT budget with the meta-parameters fixed at their initial values.")
BASELINES.register("search", [], target="mptc.runtime.search:search_baseline",
                   doc="Random search over the meta-parameters: the best of finetune's search_trials PT runs at "
                       "meta-parameters drawn uniformly in [-3, 3] (or their bounds), by the meta-objective.")
BASELINES.register("cotrain", [], target="mptc.runtime.baselines:cotrain",
                   doc="One network on PT and FT labels, alternating batches, the same budget.")
BASELINES.register("cotrain_pcgrad", [], target="mptc.runtime.baselines:cotrain_pcgrad",
                   doc="Co-training with PCGrad projection between the PT and FT gradients.")


# ---- your own data: arrays and tables from files (docs/data.md) ----------------------------------
# The shape rules read the files' headers only (components/datafiles.py); runtime/userdata.py loads them.
from mptc.components.datafiles import DataProblem, array_pair, split_files, table_layout  # noqa: E402


def _own_data(args, per_file):
    """The shapes of data read from `path` or one file per split: `per_file(file) -> (x shape, tasks)`,
    equal for every file; "splits" when the files or a `split_by` column bring their own."""
    try:
        files = split_files(args)
        found = {s: per_file(f) for s, f in files.items()}
    except DataProblem as e:
        raise ShapeProblem(str(e)) from None
    (first, (x, tasks)), *others = found.items()
    for split, (x2, tasks2) in others:
        if (x2[1:], tasks2) != (x[1:], tasks):
            raise ShapeProblem(f"the {split} file has x {fmt(x2)} and {tasks2} tasks, the {first} file "
                               f"x {fmt(x)} and {tasks} tasks")
    if args.get("tasks") is not None and len(args["tasks"]) != tasks:
        raise ShapeProblem(f"tasks names {len(args['tasks'])} tasks, the data has {tasks}")
    if args.get("splits") not in (None, ["train", "val", "test"]) and not args.get("split_by"):
        raise ShapeProblem("splits names the values of a split_by column: give split_by too")
    splits = tuple(args["splits"]) if args.get("split_by") else tuple(files) if "all" not in files else ()
    return {"x": x, "y": (B, tasks), **({"splits": splits} if splits else {})}


def _arrays_file(args):
    def read(path):
        hx, hy = array_pair(path, args["x"], args["y"])
        return (B, *hx.shape[1:]), hy.shape[1] if len(hy.shape) == 2 else 1
    return read


def _table_file(args):
    first = []  # the first file's features: the split files after it are read by these names

    def read(path):
        features, targets = table_layout(path, args["targets"], first[0] if first else args["features"],
                                         args["split_by"])
        first[:] = first or [features]
        return (B, len(features)), len(targets)
    return read


_OWN_SPLIT_FILES = [Param(s, "path", "", doc=f"the {s} split's file (instead of path)") for s in ("train", "val", "test")]
_OWN_COMMON = [
    Param("tasks", "strs", None, doc="a name per y column (default: the target columns, or y[0], y[1], ...)"),
    Param("labels", "choice", "binary", choices=("binary", "any"),
          doc="binary: every y is 0 or 1 (what bce and auroc need), else a named error; any: real targets"),
    Param("seed", "int", 0, doc="the random split of the spec's split clause"),
]
DATASETS.register("arrays", [
    Param("path", "path", "", doc="a .npz, .pt (dict of tensors) or .safetensors file, or a folder of .npy files"),
    Param("x", "str", "x", doc="the inputs' array: [examples, features...] (in a folder: X.npy or X)"),
    Param("y", "str", "y", doc="the labels' array: [examples] or [examples, tasks]"),
    *_OWN_SPLIT_FILES, *_OWN_COMMON,
], target="mptc.runtime.userdata:arrays", shape=lambda a, _: _own_data(a, _arrays_file(a)),
    doc="Your arrays: x and y from .npz, .npy, .pt or .safetensors files; split all, or one file per split.")
DATASETS.register("table", [
    Param("path", "path", "", doc="a .csv, .tsv, .parquet or .jsonl file"),
    Param("targets", "strs", doc="the label columns (the tasks)"),
    Param("features", "strs", None, doc="the input columns (default: every other numeric column)"),
    Param("split_by", "str", None, doc="a column whose values name each row's split (train, val, test)"),
    Param("splits", "strs", ["train", "val", "test"], doc="the split names split_by's column holds"),
    *_OWN_SPLIT_FILES, *_OWN_COMMON,
], target="mptc.runtime.userdata:table", shape=lambda a, _: _own_data(a, _table_file(a)),
    doc="Your table: feature and target columns of a csv, parquet or jsonl file; split all, by a column, or by file.")
from mptc.components import catalog_aang  # noqa: E402,F401  (AANG primitives: components/catalog_aang.py)
from mptc.components import catalog_text  # noqa: E402,F401  (text data and encoders: components/catalog_text.py)
