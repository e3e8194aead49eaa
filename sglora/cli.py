"""``sglora``: one subcommand per pipeline step. The Snakemake rules call these; each
also runs on its own (``sglora <step> --help``).

Each subcommand is built from its function in ``sglora/steps/``: a parameter
``image_cache`` is the flag ``--image-cache``. A settings object arrives as a JSON string
under the name of its config section (``--lora '{"rank": 2}'``), so a rule passes exactly
its section, and Snakemake reruns a step when, and only when, that section changes.
Lists take several values (``--loras a b``; task lists also ``--tasks a,b``), maps take
``KEY=VALUE`` items (``--manifest world=m.parquet``).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
import types
import typing

from . import steps
from .devices import tune_allocator
from .io import SGLoraError, Settings, json_object
from .warm import delegate


def _unpack(hint) -> tuple[type, str, dict]:
    """``Annotated[T | None, "help", {argparse kwargs}]`` -> ``(T, help, kwargs)``."""
    help_text, extra = "", {}
    if typing.get_origin(hint) is typing.Annotated:
        hint, *meta = typing.get_args(hint)
        help_text = next((m for m in meta if isinstance(m, str)), "")
        extra = {k: v for m in meta if isinstance(m, dict) for k, v in m.items()}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint, help_text, extra


def _add(sp: argparse.ArgumentParser, name: str, param: inspect.Parameter, hint) -> None:
    kind, help_text, extra = _unpack(hint)
    origin, flag = typing.get_origin(kind), "--" + name.replace("_", "-")
    required = param.default is inspect.Parameter.empty
    kw = {"help": help_text, "default": None if param.default is inspect.Parameter.empty else param.default}
    if isinstance(kind, type) and issubclass(kind, Settings):
        names = ", ".join(f.name for f in dataclasses.fields(kind))
        kw.update(metavar="JSON", default=None, help=f"JSON: config section {kind.section} ({names})")
        required = False
    elif kind is dict:
        kw["metavar"] = "JSON"
    elif origin in (list, dict):
        kw.update(nargs="*", action="extend", default=None)  # "extend" would add to a default list
    elif kind is bool:
        kw["action"] = argparse.BooleanOptionalAction
    else:
        kw["type"] = kind
    kw.update({k: v for k, v in extra.items() if k not in ("positional", "split")})
    kw["help"] = kw["help"].replace("%", "%%")
    if extra.get("positional"):
        sp.add_argument(name, **{k: v for k, v in kw.items() if k != "default"})
    else:
        sp.add_argument(flag, dest=name, required=required, **kw)


def arguments(args: argparse.Namespace) -> dict:
    """The parsed flags of a step as its function's typed arguments (settings objects
    built and checked, ``KEY=VALUE`` items as dicts); an error names the flag."""
    fn, out = args.step, {}
    params = inspect.signature(fn).parameters
    for name, hint in steps.hints(fn).items():
        if name == "return":
            continue
        kind, _, extra = _unpack(hint)
        value, flag = getattr(args, name), "--" + name.replace("_", "-")
        if isinstance(kind, type) and issubclass(kind, Settings):
            value = kind.from_dict(json_object(value, flag))
        elif kind is dict and value is not None:
            value = json_object(value, flag)
        elif typing.get_origin(kind) is dict and value is not None:
            value = dict(_pair(item, flag, typing.get_args(kind)[1]) for item in value)
        elif typing.get_origin(kind) is list and value is not None:
            cast = typing.get_args(kind)[0]
            value = [cast(v) for item in value for v in (item.split(",") if "split" in extra else [item]) if v]
        if value is None and params[name].default is not inspect.Parameter.empty:
            continue  # not given: the function's own default
        out[name] = value
    return out


def _pair(item: str, flag: str, cast) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SGLoraError(f"{flag}: {item!r} is not KEY=VALUE")
    return key, cast(value)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every step's subcommand, or only the step ``only`` (what a run needs: the other
    steps' settings classes, and torch with most of them, are not imported)."""
    p = argparse.ArgumentParser(prog="sglora", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="STEP")
    for name, fn in ((n, f) for n, f in steps.STEPS.items() if only not in steps.STEPS or n == only):
        doc = inspect.getdoc(fn) or name
        sp = sub.add_parser(name, help=doc.split("\n\n")[0].replace("\n", " ").replace("%", "%%"), description=doc)
        sp.set_defaults(step=fn)
        hints = steps.hints(fn)
        for pname, param in inspect.signature(fn).parameters.items():
            _add(sp, pname, param, hints[pname])
    return p


def device_setting(args: argparse.Namespace) -> str | None:
    """The device setting ("auto", "cuda", "cpu" ...) a parsed heavy step will run on,
    read from its flags and settings the way the step reads them; ``None`` for light steps."""
    return steps.device_of(args.step, arguments(args)) if args.step.device_of else None


def step_device(argv: list[str]):
    """The torch device the step ``argv`` (``["train-lora", ...]``) would run on, unrun."""
    from .devices import pick_device

    setting = device_setting(build_parser(argv[0] if argv else None).parse_args(argv))
    return None if setting is None else pick_device(setting)


def claim_gpu(args: argparse.Namespace):
    """On a local run with GPU slots (``SGLORA_GPU_SLOTS``), give a step that will use a
    GPU its own device before CUDA starts; the slot is held until the process exits."""
    from .devices import SLOTS_ENV, acquire_gpu_slot, wants_gpu

    setting = device_setting(args)
    if not os.environ.get(SLOTS_ENV) or setting is None or not wants_gpu(setting):
        return None
    slot = acquire_gpu_slot(os.environ[SLOTS_ENV])
    print(f"sglora {args.command}: GPU slot CUDA_VISIBLE_DEVICES={slot.device}", file=sys.stderr, flush=True)
    return slot


def main(argv: list[str] | None = None, warm: bool = True) -> int:
    """Run ``sglora <step> ...`` (with ``warm``, in a child of the run's warm server if there is
    one: :mod:`sglora.warm`); returns the exit status (2 on an error the step reports)."""
    argv = sys.argv[1:] if argv is None else argv
    if warm and (code := delegate(argv, run=main, prepare=build_parser)) is not None:
        return code
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    tune_allocator()
    try:
        slot = claim_gpu(args)  # noqa: F841 (held, with its lock, until the process exits)
        result = args.step(**arguments(args))
    except SGLoraError as err:
        print(f"sglora {args.command}: error: {err}", file=sys.stderr)
        return 2
    if (text := args.step.show(result) if args.step.show else json.dumps(result, default=str)) is not None:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
