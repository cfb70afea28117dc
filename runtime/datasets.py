"""Synthetic multitask data whose structure makes pre-training (PT) task weights matter.

The planted mechanism (all randomness from ``torch.Generator`` streams derived from ``seed``; never
the global RNG):

* **Latents.** Each example has ``z ~ N(0, I_factors)``. The first ``related_factors`` coordinates,
  ``z_rel``, are the ones every fine-tuning (FT) task depends on; the other
  ``factors - related_factors`` coordinates, ``z_unrel``, matter to no FT task.
* **Inputs.** ``x = standardise(sin(z A1 + c1) A2) + noise * eps``: a fixed random 2-layer network
  with ``H = 4 * dim`` sine units, ``A1 ~ N(0, GAIN^2 / factors)`` (``GAIN = 1.25``),
  ``c1 ~ U[0, 2 pi)``, ``A2 ~ N(0, 1 / H)``, per-coordinate standardisation with statistics of a
  fixed reference sample, and Gaussian input noise. Every input coordinate mixes every factor, and
  the sine is not monotone: a least-squares read-out of ``z`` from ``x`` explains only 65-85% of
  each factor's variance, so an encoder has to *learn* to extract the factors, which few FT
  examples do badly.
* **PT tasks.** ``tasks = related + unrelated + adversarial``; the adversarial tasks come out of the
  non-related budget, ``unrelated = tasks - related - adversarial``. With unit vectors ``u, v``
  drawn per task and ``eps ~ N(0, 1)``:

  - *related*: ``y = 1[u . z_rel + ((v . z_rel)^2 - 1) + noise * eps > 0]``, mildly nonlinear in
    ``z_rel``; learning them needs the 3 linear and the 6 quadratic features of ``z_rel``;
  - *unrelated*: ``y = 1[u . z_unrel + noise * eps > 0]``, a linear threshold on ``z_unrel`` only;
  - *adversarial*: random bits, Bernoulli(1/2) fixed per example and independent of everything:
    pure label noise that an encoder can only fit by memorising, which wastes capacity.

* **FT tasks** (:func:`synthetic_multitask_ft`): same latent-to-input map, fresh examples, and the
  related family ``y = 1[u . z_rel + ((v . z_rel)^2 - 1) + noise * eps > 0]`` with new ``u, v``.

Why task weights matter (capacity competition in a narrow encoder, e.g. width 8, with the defaults
``factors=6, related_factors=3`` and proportions like 100 tasks = 20 related (20%), 70 unrelated
(70%), 10 adversarial (10%)). Roughly, the PT loss rewards a feature by how many tasks need it:
each of the 3 unrelated factors is needed by ~70/3 = 23 tasks, each linear ``z_rel`` feature by
~20/3 = 7, each quadratic ``z_rel`` feature by fewer. Uniform weights therefore fill the bottleneck
with the unrelated factors first and keep little room (about 8 - 3 - 3 = 2 dims) for the quadratic
``z_rel`` features that FT needs; oracle weights (related only) spend all of it on ``z_rel``; no
PT leaves FT to learn the sine inversion from a few examples. Hence FT quality
oracle > uniform > none, as ``benchmarks/oracle_weights.py`` measures.
The task kinds are shuffled with the seed, so the related tasks are not just the
first ones; ``info["kind"]`` and ``info["relevant"]`` record the planted truth.

    >>> pt = synthetic_multitask(examples=256, dim=16, tasks=10, related=3, adversarial=2)
    >>> pt.splits["all"][0].shape, pt.splits["all"][1].shape, sum(pt.info["relevant"])
    (torch.Size([256, 16]), torch.Size([256, 10]), 3)
    >>> ft = synthetic_multitask_ft(of=pt, examples=64, tasks=2)
    >>> ft.splits["all"][1].shape
    torch.Size([64, 2])
"""
from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

__all__ = ["Dataset", "LatentGenerator", "latents", "split", "synthetic_multitask", "synthetic_multitask_ft"]

GAIN = 1.25  # scale of the first layer of the input map: its degree of nonlinearity
_REFERENCE = 8192  # examples used to fix the standardisation of the input map
_SALT = {"map": 1, "pt": 2, "ft": 3, "split": 4}


@attrs.frozen(eq=False)
class Dataset:
    """Named splits ``name -> (x [N, dim] float32, y [N, T] float32 0/1)`` plus metadata ``info``."""

    splits: dict[str, tuple[Tensor, Tensor]]
    info: dict


@attrs.frozen(eq=False)
class LatentGenerator:
    """The fixed random map from latents ``z`` to inputs ``x`` (shared by PT and FT data)."""

    factors: int
    related_factors: int
    noise: float
    a1: Tensor
    c1: Tensor
    a2: Tensor
    mean: Tensor
    std: Tensor
    proto_u: Tensor  # [prototypes, related_factors] unit rows: the shared task directions
    proto_v: Tensor
    spread: float

    def directions(self, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(u, v)`` of one related task: prototype ``k`` perturbed by ``spread``, renormalised."""
        def near(p: Tensor) -> Tensor:
            d = p + self.spread * torch.randn(p.shape, generator=gen) / math.sqrt(p.numel())
            return d / d.norm()
        return near(self.proto_u[k]), near(self.proto_v[k])

    def latents(self, n: int, gen: torch.Generator) -> Tensor:
        """``n`` latent vectors ``z ~ N(0, I)``."""
        return torch.randn(n, self.factors, generator=gen)

    def clean(self, z: Tensor) -> Tensor:
        """The noiseless, standardised inputs for latents ``z``."""
        return ((torch.sin(z @ self.a1 + self.c1) @ self.a2) - self.mean) / self.std

    def inputs(self, z: Tensor, gen: torch.Generator) -> Tensor:
        """Noisy inputs ``x`` for latents ``z``."""
        x = self.clean(z)
        return x + self.noise * torch.randn(x.shape, generator=gen)


def _rng(seed: int, salt: str) -> torch.Generator:
    """An independent generator stream for ``(seed, salt)``."""
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + _SALT[salt] * 0xBF58476D1CE4E5B9) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def _units(n: int, d: int, gen: torch.Generator) -> Tensor:
    """``n`` random unit vectors in ``R^d`` as rows."""
    v = torch.randn(n, d, generator=gen)
    return v / v.norm(dim=1, keepdim=True)


def _make_generator(dim: int, factors: int, related_factors: int, noise: float, prototypes: int, spread: float,
                    seed: int) -> LatentGenerator:
    """Draw the random 2-layer sine map and the prototypes, and fix the standardisation on a reference sample."""
    gen, hidden = _rng(seed, "map"), 4 * dim
    a1 = torch.randn(factors, hidden, generator=gen) * (GAIN / math.sqrt(factors))
    c1 = 2 * math.pi * torch.rand(hidden, generator=gen)
    a2 = torch.randn(hidden, dim, generator=gen) / math.sqrt(hidden)
    ones, zeros = torch.ones(dim), torch.zeros(dim)
    pu, pv = _units(prototypes, related_factors, gen), _units(prototypes, related_factors, gen)
    raw = LatentGenerator(factors, related_factors, noise, a1, c1, a2, zeros, ones, pu, pv, spread)
    ref = raw.clean(raw.latents(_REFERENCE, gen))
    return attrs.evolve(raw, mean=ref.mean(0), std=ref.std(0))


def _kinds(tasks: int, related: int, adversarial: int, gen: torch.Generator) -> list[str]:
    """The task kinds, shuffled by ``gen``."""
    kinds = ["related"] * related + ["adversarial"] * adversarial
    kinds += ["unrelated"] * (tasks - len(kinds))
    return [kinds[i] for i in torch.randperm(tasks, generator=gen).tolist()]


def _related(z_rel: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Scores ``u . z + ((v . z)^2 - 1)`` of the related family, one column per row of ``u``/``v``."""
    return z_rel @ u.T + ((z_rel @ v.T) ** 2 - 1)


def _score(kind: str, k: int, z: Tensor, g: LatentGenerator, gen: torch.Generator) -> Tensor:
    """The noiseless score of one PT task of ``kind`` (the ``k``-th related task uses prototype
    ``k mod prototypes``), drawing its directions (module docstring)."""
    rel = g.related_factors
    if kind == "related":
        u, v = g.directions(k % len(g.proto_u), gen)
        return _related(z[:, :rel], u[None], v[None])[:, 0]
    if kind == "unrelated":
        return z[:, rel:] @ _units(1, z.shape[1] - rel, gen)[0]
    return torch.randn(z.shape[0], generator=gen)  # adversarial: random bits per example


def _labels(kinds: list[str], z: Tensor, g: LatentGenerator, gen: torch.Generator) -> Tensor:
    """PT labels ``[N, T]`` for latents ``z``."""
    related = [kinds[:i].count("related") for i in range(len(kinds))]  # index among the related tasks
    scores = [_score(kind, k, z, g, gen) + g.noise * torch.randn(len(z), generator=gen)
              for kind, k in zip(kinds, related)]
    return (torch.stack(scores, 1) > 0).float()


def _check(examples: int, dim: int, tasks: int, related: int, adversarial: int, factors: int,
           related_factors: int) -> None:
    """Raise ``ValueError`` on inconsistent sizes."""
    if min(examples, dim, tasks, factors, related_factors) < 1 or min(related, adversarial) < 0:
        raise ValueError("sizes must be positive (related, adversarial non-negative)")
    if related + adversarial > tasks:
        raise ValueError(f"related + adversarial = {related + adversarial} exceeds tasks = {tasks}")
    if related_factors >= factors:
        raise ValueError(f"related_factors = {related_factors} must be < factors = {factors}")


def synthetic_multitask(*, examples: int, dim: int, tasks: int, related: int, adversarial: int = 0,
                        factors: int = 8, related_factors: int = 3, noise: float = 0.1,
                        prototypes: int = 5, spread: float = 0.5, seed: int = 0) -> Dataset:
    """The PT dataset (split ``"all"``) with planted task relevance; see the module docstring.

        >>> ds = synthetic_multitask(examples=100, dim=8, tasks=5, related=2, seed=1)
        >>> ds.info["kind"].count("related"), ds.info["relevant"] == [k == "related" for k in ds.info["kind"]]
        (2, True)
    """
    _check(examples, dim, tasks, related, adversarial, factors, related_factors)
    if prototypes < 1 or spread < 0:
        raise ValueError("prototypes must be >= 1 and spread >= 0")
    generator = _make_generator(dim, factors, related_factors, noise, prototypes, spread, seed)
    gen = _rng(seed, "pt")
    kinds = _kinds(tasks, related, adversarial, gen)
    z = generator.latents(examples, gen)
    x, y = generator.inputs(z, gen), _labels(kinds, z, generator, gen)
    info = {"kind": kinds, "relevant": [k == "related" for k in kinds], "generator": generator,
            "stream": "pt", "seed": seed, "examples": examples, "factors": factors,
            "related_factors": related_factors, "noise": noise}
    return Dataset({"all": (x, y)}, info)


def synthetic_multitask_ft(*, of: Dataset, examples: int, tasks: int, seed: int = 0) -> Dataset:
    """FT companion of the PT dataset ``of``: same input map, fresh examples, labels from ``z_rel`` only.

        >>> pt = synthetic_multitask(examples=100, dim=8, tasks=5, related=2)
        >>> ft = synthetic_multitask_ft(of=pt, examples=50, tasks=3, seed=7)
        >>> ft.splits["all"][0].shape, ft.info["relevant"]
        (torch.Size([50, 8]), [True, True, True])
    """
    if examples < 1 or tasks < 1:
        raise ValueError("examples and tasks must be positive")
    g: LatentGenerator = of.info["generator"]
    gen = _rng(seed, "ft")
    z = g.latents(examples, gen)
    x, z_rel = g.inputs(z, gen), z[:, : g.related_factors]
    uv = [g.directions(i % len(g.proto_u), gen) for i in range(tasks)]
    score = _related(z_rel, torch.stack([u for u, _ in uv]), torch.stack([v for _, v in uv]))
    y = (score + g.noise * torch.randn(score.shape, generator=gen) > 0).float()
    info = {"kind": ["finetune"] * tasks, "relevant": [True] * tasks, "generator": g,
            "stream": "ft", "seed": seed, "examples": examples, "factors": g.factors,
            "related_factors": g.related_factors, "noise": g.noise}
    return Dataset({"all": (x, y)}, info)


def latents(ds: Dataset) -> Tensor:
    """The true latents ``z [N, factors]`` behind split ``"all"`` of a generated dataset (recomputed
    from its seed, so ``info`` stays JSON-serialisable apart from ``"generator"``).

        >>> ds = synthetic_multitask(examples=10, dim=8, tasks=4, related=2)
        >>> latents(ds).shape
        torch.Size([10, 8])
    """
    info = ds.info
    gen = _rng(info["seed"], info["stream"])
    if info["stream"] == "pt":
        torch.randperm(len(info["kind"]), generator=gen)  # replay the kind shuffle
    return info["generator"].latents(info["examples"], gen)


def split(ds: Dataset, fractions: dict[str, float], seed: int) -> Dataset:
    """Random disjoint splits of ``ds.splits["all"]`` with the given fractions (summing to 1).

        >>> ds = synthetic_multitask(examples=100, dim=8, tasks=5, related=2)
        >>> {k: len(v[0]) for k, v in split(ds, {"train": 0.6, "test": 0.4}, seed=0).splits.items()}
        {'train': 60, 'test': 40}
    """
    x, y = ds.splits["all"]
    sizes = _sizes(len(x), fractions)
    perm = torch.randperm(len(x), generator=_rng(seed, "split"))
    out, start = {}, 0
    for name, size in sizes.items():
        idx = perm[start:start + size]
        out[name], start = (x[idx], y[idx]), start + size
    return Dataset(out, ds.info)


def _sizes(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """Split sizes summing to ``n`` (largest remainders); ``ValueError`` on bad fractions."""
    if not fractions or any(f <= 0 for f in fractions.values()):
        raise ValueError(f"fractions must be positive and non-empty: {fractions}")
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {sum(fractions.values())}")
    raw = {k: f * n for k, f in fractions.items()}
    sizes = {k: int(math.floor(r)) for k, r in raw.items()}
    for k in sorted(raw, key=lambda k: sizes[k] - raw[k])[: n - sum(sizes.values())]:
        sizes[k] += 1
    if min(sizes.values()) < 1:
        raise ValueError(f"a split of {n} examples by {fractions} would be empty")
    return sizes
