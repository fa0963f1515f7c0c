"""``python -m agents.merge method=wudi base=<scaffold run> experts=[<run>,<run>] [options.<name>=...]``.

ACE-Brain-0's Reconcile stage at this project's scale: spatial-brain experts, each specialised on one
embodiment from the same scaffold, become one brain without data. Per tensor of the state dict
(parameters and buffers alike, e.g. the per-embodiment proprio statistics), by
:meth:`~policies.spatial_brain.SpatialBrain.owner_of`:

- owned by an embodiment one expert specialised on (``meta.extra["embodiment"]``): that expert's, exactly;
- owned by an embodiment no expert specialised on: the base's (no expert has learnt anything for it);
- shared (vision, text projector, trunk, QA head): merged from the experts' task vectors against the
  base by ``method`` (:func:`agents.merge_methods.merge`, options and defaults in ``DEFAULT_OPTIONS``).

The runs must all be spatial brains of one config, with one expert per embodiment. Every check that
needs no weights (settings, method and options, the runs' kinds, configs and embodiments) runs before
a file is written; a failure after that (damaged weights) removes the run directory again. Each is one
line. The run directory (default ``runs/merge_<method>/<time>``, claimed so that two merges started
together never share one) holds the resolved ``config.yaml``, ``checkpoints/final`` and
``summary.json``. The bundle carries the base's config and acts, as deployed, in the first expert's env
as that expert's embodiment; ``meta.extra["embodiments"]`` maps every specialised embodiment to its
expert's env config. The last line printed is
``method=... merged=... owned=... base_taken=... relative_norm_<embodiment>=... time_s=... run_dir=...``,
where a relative norm is ||merged task vector|| / ||that expert's|| over the shared tensors.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agents import merge_methods
from agents.errors import UserError, report_user_errors
from agents.overrides import run_hydra_cli
from agents.reporting import summary_line
from agents.schema import check, did_you_mean, setting, top_level
from policies import registry
from policies.bundle import Bundle, read_bundle, read_meta, save_bundle
from policies.protocol import PolicyError, PolicyMeta
from policies.run_dir import FINAL, RunDir

KIND = "spatial_brain"
STAGE = "merge"  # meta.extra["stage"] of a merged brain, beside scaffold and specialize


@dataclass
class MergeOptions:
    """``options.*``: a method's options (``merge_methods.DEFAULT_OPTIONS``); null takes the method's default."""

    scale: float | None = None  # task_arithmetic, ties: the factor on the merged task vector
    keep: float | None = None  # ties: the fraction of each task vector's largest entries kept
    steps: int | None = None  # wudi_adam: Adam iterations
    lr: float | None = None  # wudi_adam: Adam's learning rate


@dataclass
class MergeSettings:
    """The top-level keys of configs/merge.yaml."""

    method: str = "wudi"  # one of merge_methods.METHODS; checked by validate with a did-you-mean
    base: str | None = None  # the run (or bundle) the experts were fine-tuned from
    experts: list[str] = setting(factory=list)  # the specialised runs (or bundles), one per embodiment
    options: MergeOptions = setting(factory=MergeOptions)


@dataclass
class Source:
    """One run the merge reads: the argument that named it, its final bundle, and (for an expert) its embodiment."""

    label: str  # "base" or "experts[i]": how error lines name it
    path: Path  # as given, made absolute
    directory: Path  # its final bundle
    meta: PolicyMeta
    tensors: dict[str, torch.Tensor] | None = None  # None when only the metadata was read
    embodiment: str | None = None

    @property
    def name(self) -> str:
        return f"{self.label}={self.path}"

    def bundle(self) -> Bundle:
        """This source as a :class:`~policies.bundle.Bundle`, for :func:`registry.load_module` and its messages."""
        return Bundle(self.directory, self.meta, self.tensors)


# --- settings and runs, checked before any file is written -------------------------------------------


def given_options(cfg: DictConfig) -> dict[str, float | int]:
    """The options set on the command line (the others take the method's defaults)."""
    return {k: v for k, v in OmegaConf.to_container(cfg.options, resolve=True).items() if v is not None}


def validate(cfg: DictConfig) -> None:
    """Settings, method, options and the runs' metadata (kinds, configs, embodiments); UserError on the first fault."""
    check(top_level(cfg), MergeSettings, "")
    method = str(cfg.method)
    if method not in merge_methods.METHODS:
        raise UserError(f"unknown merge method {method!r}{did_you_mean(method, merge_methods.METHODS)} "
                        f"(methods: {', '.join(merge_methods.METHODS)})")
    try:  # merging empty state dicts checks the options alone
        merge_methods.merge({}, [{}], method, **given_options(cfg))
    except merge_methods.MergeError as e:
        raise UserError(f"options: {e}") from None
    if not cfg.base:
        raise UserError("base=<run> is required: the run (the scaffold) every expert was fine-tuned from")
    if not cfg.experts:
        raise UserError("experts=[<run>,...] is required: the runs specialised from the base, one per embodiment")
    check_sources(*read_sources(cfg, weights=False))


def _source(label: str, given: str, weights: bool) -> Source:
    path = Path(given).expanduser().absolute()
    try:
        directory = RunDir.find_policy(path, FINAL)
        if weights:
            bundle = read_bundle(directory)
            return Source(label, path, directory, bundle.meta, bundle.tensors)
        return Source(label, path, directory, read_meta(directory))
    except PolicyError as e:  # RunDirError and BundleError: a missing run, a damaged bundle
        raise UserError(f"{label}: {e}") from None


def read_sources(cfg: DictConfig, weights: bool) -> tuple[Source, list[Source]]:
    """(the base, the experts) with their metadata, and their tensors when ``weights``."""
    base = _source("base", str(cfg.base), weights)
    experts = [_source(f"experts[{i}]", str(p), weights) for i, p in enumerate(cfg.experts)]
    return base, experts


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_difference(a: dict, b: dict) -> str | None:
    """The first key at which two configs differ, as ``key (a, the base b)``; None when they are equal."""
    fa, fb = _flatten(a), _flatten(b)
    for key in sorted(set(fa) | set(fb)):
        if fa.get(key, "<unset>") != fb.get(key, "<unset>"):
            return f"{key} ({fa.get(key, '<unset>')}, the base {fb.get(key, '<unset>')})"
    return None


def check_sources(base: Source, experts: list[Source]) -> list[str]:
    """Kinds, configs, answer vocabularies and embodiments (one expert each); sets each expert's embodiment.

    Returns notes on provenance worth a warning (an expert not fine-tuned from this base), not errors:
    a run directory may have moved since its expert was trained.
    """
    from policies.brain_policy import embodiment_of

    for source in (base, *experts):
        if source.meta.kind != KIND:
            raise UserError(f"{source.name} is a {source.meta.kind} run, not a spatial brain; only spatial-brain "
                            "runs are merged")
    embodiments = base.meta.config.get("embodiments") or {}
    answers = base.meta.extra.get("answers")
    owner: dict[str, Source] = {}
    notes = []
    for expert in experts:
        difference = _config_difference(expert.meta.config, base.meta.config)
        if difference:
            raise UserError(f"{expert.name}: its spatial-brain config differs from the base's at {difference}; "
                            "merging needs one architecture")
        if answers is not None and expert.meta.extra.get("answers") not in (None, answers):
            raise UserError(f"{expert.name}: its QA answer vocabulary differs from the base's")
        embodiment = expert.meta.extra.get("embodiment")
        if not embodiment:
            try:
                embodiment = embodiment_of(str(expert.meta.env.get("id")))
            except PolicyError as e:
                raise UserError(f"{expert.name}: no embodiment in its bundle, and {e}") from None
        if embodiment not in embodiments:
            raise UserError(f"{expert.name} is specialised on {embodiment!r}, which the brain's config does not have "
                            f"(embodiments: {', '.join(embodiments)})")
        if embodiment in owner:
            raise UserError(f"{owner[embodiment].name} and {expert.name} are both specialised on {embodiment}; "
                            "merge one expert per embodiment")
        owner[embodiment] = expert
        expert.embodiment = embodiment
        stage, init_from = expert.meta.extra.get("stage"), expert.meta.extra.get("init_from")
        if stage != "specialize":
            notes.append(f"{expert.name} is a {stage} run, not a specialised one; its {embodiment} parameters are "
                         "taken as they are")
        elif not init_from:
            notes.append(f"{expert.name} was trained from scratch, not from the base: its task vector is measured "
                         "from weights it never started at")
        elif Path(str(init_from)).expanduser().resolve() not in (base.path.resolve(), base.directory.resolve()):
            notes.append(f"{expert.name} was fine-tuned from {init_from}, not from the base {base.path}")
    return notes


# --- the merge ---------------------------------------------------------------------------------------


@dataclass
class Plan:
    """Where each tensor of the merged state dict comes from."""

    owners: dict[str, int]  # key -> the index of the expert specialised on its embodiment
    from_base: list[str]  # keys of embodiments no expert specialised on
    shared: list[str]  # keys merged by the method

    @classmethod
    def of(cls, model, keys: list[str], experts: list[Source]) -> Plan:
        index = {e.embodiment: i for i, e in enumerate(experts)}
        owners, from_base, shared = {}, [], []
        for key in keys:
            embodiment = model.owner_of(key)
            if embodiment is None:
                shared.append(key)
            elif embodiment in index:
                owners[key] = index[embodiment]
            else:
                from_base.append(key)
        return cls(owners, from_base, shared)


def merge_state(base: Source, experts: list[Source], method: str, options: dict) -> tuple[dict, Plan]:
    """The merged state dict, in the base's key order, and the plan it followed."""
    try:
        model = registry.load_module(KIND, base.bundle(), base.tensors)
        for expert in experts:
            registry.load_module(KIND, expert.bundle(), expert.tensors)  # the weights fit the (common) config
    except PolicyError as e:
        raise UserError(str(e)) from None
    plan = Plan.of(model, list(base.tensors), experts)
    from_base = set(plan.from_base)
    kept = [k for k in base.tensors if k not in from_base]
    try:
        merged = merge_methods.merge({k: base.tensors[k] for k in kept},
                                     [{k: e.tensors[k] for k in kept} for e in experts],
                                     method, owners=plan.owners, **options)
    except merge_methods.MergeError as e:
        raise UserError(f"cannot merge: {e}") from None
    merged.update({k: base.tensors[k].clone() for k in plan.from_base})
    return {k: merged[k] for k in base.tensors}, plan


def relative_norms(base: Source, experts: list[Source], merged: dict, keys: list[str]) -> dict[str, float | None]:
    """Per expert's embodiment, ||merged - base|| / ||expert - base|| over ``keys`` (float64); None for a zero one."""

    def norm(state: dict) -> float:
        return math.sqrt(sum(float((state[k].double() - base.tensors[k].double()).pow(2).sum())
                             for k in keys if base.tensors[k].is_floating_point()))

    merged_norm = norm(merged)
    out = {}
    for expert in experts:
        own = norm(expert.tensors)
        out[expert.embodiment] = round(merged_norm / own, 6) if own > 0 else None
    return out


def merged_meta(base: Source, experts: list[Source], method: str, options: dict) -> PolicyMeta:
    """The first expert's meta (its env, observation and action bounds) with the base's config and the merge's record."""
    first = experts[0]
    extra = {
        "stage": STAGE, "method": method, "options": options,
        "base": str(base.path),
        "experts": [{"run": str(e.path), "embodiment": e.embodiment, "stage": e.meta.extra.get("stage"),
                     "decide_every": e.meta.extra.get("decide_every"), "decisions": e.meta.extra.get("decisions")}
                    for e in experts],
        "embodiments": {e.embodiment: dict(e.meta.env) for e in experts},
        # how the bundle deploys as it stands: the first expert's embodiment in its env, at its decision rate
        "embodiment": first.embodiment,
        **{k: first.meta.extra[k] for k in ("decide_every", "decisions") if k in first.meta.extra},
        "answers": base.meta.extra.get("answers"),
    }
    # a merge takes no training steps; each expert's count stays in its own run
    return dataclasses.replace(first.meta, config=dict(base.meta.config), steps=0, extra=extra)


def merge_runs(cfg: DictConfig, run: RunDir) -> dict:
    """Merge as configured into ``run`` (written only once everything has succeeded); returns the summary."""
    started = time.time()
    validate(cfg)
    method, options = str(cfg.method), given_options(cfg)
    options = {**merge_methods.DEFAULT_OPTIONS[method], **options}
    base, experts = read_sources(cfg, weights=True)
    notes = check_sources(base, experts)  # again: the files may have changed since validate read them
    merged, plan = merge_state(base, experts, method, options)
    meta = merged_meta(base, experts, method, options)
    try:  # the written bundle must load as the brain it claims to be
        registry.load_module(KIND, Bundle(run.checkpoint_dir(FINAL), meta, merged), merged)
    except PolicyError as e:
        raise UserError(f"the merged brain does not load: {e}") from None
    run.write_config(OmegaConf.to_yaml(cfg, resolve=True))
    run.write_checkpoint(FINAL, lambda tmp: save_bundle(tmp, meta, merged))
    summary = {
        "method": method, "options": options, "base": str(base.path),
        "experts": [{"run": str(e.path), "embodiment": e.embodiment} for e in experts],
        "merged": len(plan.shared), "owned": len(plan.owners), "base_taken": len(plan.from_base),
        "base_taken_embodiments": sorted({k.split(".")[1] for k in plan.from_base}),
        "relative_norm": relative_norms(base, experts, merged, plan.shared),
        "warnings": notes, "run_dir": str(run.path),
    }
    summary["time_s"] = round(time.time() - started, 3)
    run.write_summary(summary)
    for note in notes:  # printed, not logged: the CLI's Hydra logging config silences module loggers
        print(f"warning: {note}", file=sys.stderr, flush=True)
    return summary


@hydra.main(config_path="../configs", config_name="merge", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> dict:
    run = RunDir(HydraConfig.get().runtime.output_dir)
    if any(run.path.iterdir()):
        raise UserError(f"{run.path} already holds files; a merge writes a new run directory")
    try:
        summary = merge_runs(cfg, run)
    except BaseException:
        # the directory started empty, so all it holds is this merge's: leave no partial run behind
        shutil.rmtree(run.path, ignore_errors=True)
        raise
    flat = {k: v for k, v in summary.items() if not isinstance(v, dict | list)}
    flat.update({f"relative_norm_{k}": v for k, v in summary["relative_norm"].items()})
    print(summary_line(flat, ["method", "merged", "owned", "base_taken", *(f"relative_norm_{k}" for k in
                                                                          summary["relative_norm"]),
                              "time_s", "run_dir"]), flush=True)
    return summary


def cli() -> None:
    run_hydra_cli("merge", main, validate, claim_output=True)


if __name__ == "__main__":
    cli()
