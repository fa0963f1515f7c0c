"""Validate Hydra overrides before Hydra runs, so a typo costs one clear line, not a page.

Hydra's own messages for an unknown key or group option span several lines with a hint about
``HYDRA_FULL_ERROR``; here the same composition is attempted first and its failure is reduced
to one sentence naming the bad override and, for groups, the valid choices.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agents.errors import UserError, report_user_errors
from policies.run_dir import RunDir

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
CLAIMED_DIR_ENV = "EMBODIED_CLAIMED_OUTPUT_DIR"  # the output directory this command created for itself
_SWEEP = re.compile(r",|^\w+\(|\brange\(|\bchoice\(|\binterval\(|\bglob\(")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _plain_overrides(argv: list[str]) -> list[str]:
    """Overrides without Hydra flags, and without sweeps in a multirun (validated per value by Hydra itself).

    Outside a multirun a sweep-like value (``run=a,b``) stays: composing it gives Hydra's own
    complaint, in one line.
    """
    multirun = any(a in ("-m", "--multirun") for a in argv)
    out = []
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        if key.lstrip("+~").startswith("hydra") or (multirun and _SWEEP.search(value)):
            continue
        out.append(arg)
    return out


OPEN_NODES = ("algo.sb3",)  # passed on as keyword arguments: a '+' key there reaches the library


def _flat_keys(node, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        out += _flat_keys(v, f"{key}.") if isinstance(v, dict) else [key]
    return out


def unknown_key(config_name: str, key: str, overrides: list[str]) -> str:
    """One line for an unknown key: the closest key the composed config has, and the '+' prefix only where an
    added key has an effect."""
    import difflib

    rest = [o for o in overrides if o.lstrip("+~").partition("=")[0] != key]
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            known = _flat_keys(OmegaConf.to_container(compose(config_name=config_name, overrides=rest)))
    except Exception:  # noqa: BLE001 - the suggestion is a courtesy; the error line stands without it
        known = []
    hints = []
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        hints.append(f"did you mean {close[0]}?")
    if key.startswith("env.") and not any(o.startswith("env=") for o in overrides):
        hints.append("is it another env's key? name the env too, e.g. env=uav_hover")
    parent = key.rpartition(".")[0]
    if parent in OPEN_NODES:
        hints.append(f"{parent} takes the library's keyword arguments: add one with +{key}=...")
    return f"unknown config key '{key}'" + (f" ({'; '.join(hints)})" if hints else "")


def check_overrides(config_name: str, argv: list[str], validate: Callable | None = None):
    """Compose the config as Hydra will and run ``validate`` on it, before any run dir exists; returns it
    (with the ``hydra`` node)."""
    overrides = _plain_overrides(argv)
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except OverrideParseException as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), str(e))
        raise UserError(f"cannot read the override {first.split(': ', 1)[-1]!s}: quote a value with spaces or "
                        "symbols, key='...'") from None
    except MissingConfigException as e:
        m = re.search(r"Could not find '([\w/]+)/([\w.-]+)'", str(e))
        if m:
            group, name = m.groups()
            raise UserError(f"unknown {group} '{name}' (choose from: {', '.join(group_options(group))})") from None
        raise UserError(str(e).splitlines()[0]) from None
    except (ConfigCompositionException, OmegaConfBaseException) as e:
        text = " ".join(f"{e} {e.__cause__ or ''}".split())
        if "not in struct" in text:
            m = re.search(r"full_key: (\S+)", text) or re.search(r"Could not override '([^']+)'", text)
            key = m.group(1) if m else re.search(r"Key '([^']+)'", text).group(1)
            raise UserError(unknown_key(config_name, key, overrides)) from None
        cause = e.__cause__ or e
        raise UserError(" ".join(str(cause).split())[:300]) from None
    if validate is not None:
        validate(cfg)
    return cfg


def claim_output_dir(cfg, argv: list[str]) -> list[str]:
    """Create this command's output directory now, under a name no other run has, and return the
    override that hands it to Hydra; none when the command line chose the directory itself.

    Hydra names run directories by the second they start in, so two runs started together would
    share one; ``mkdir`` decides atomically which gets the name and which gets ``<name>-2``.
    """
    multirun = any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if any(a.lstrip("+").startswith(f"{key}=") for a in argv):
        return []
    try:
        run = RunDir.claim(OmegaConf.select(cfg, key))
    except OSError as e:
        raise UserError(f"cannot create the run directory {OmegaConf.select(cfg, key)}: {e.strerror}") from None
    os.environ[CLAIMED_DIR_ENV] = str(run.path.resolve())
    return [f"{key}={run.path}"]


def run_hydra_cli(config_name: str, hydra_main: Callable[[], object], validate: Callable | None = None,
                  claim_output: bool = False) -> None:
    """Validate the command line's overrides (one-line errors), claim the output directory, then hand over to Hydra."""
    cfg = report_user_errors(check_overrides)(config_name, sys.argv[1:], validate)
    if claim_output:
        sys.argv += report_user_errors(claim_output_dir)(cfg, sys.argv[1:])
    hydra_main()
