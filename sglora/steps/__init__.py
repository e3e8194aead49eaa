"""Every pipeline step as one typed function: explicit input files and settings objects
in, explicit output files out, a JSON-able summary returned.

One module per rules file of ``workflow/rules/`` (``data``, ``images``, ``backbone``,
``loras``, ``sglora``, ``evaluate``, ``report``, ``baselines``, ``generators``, ``controls``) and one for
``workflow/studies/`` (``studies``); each step is a thin call into its stage of the library.
The Snakemake rules reach them through ``sglora <step>`` (``sglora/cli.py`` builds each
subcommand from the function's signature: a parameter ``image_cache`` is the flag
``--image-cache``, a settings object ``lora: LoraSpec`` is ``--lora JSON``, the config
section of the same name); benchmarks and notebooks call them directly. A step knows
nothing of the results folder's layout: every path it reads or writes is a parameter.

Layers (tests/test_imports.py): ``cli`` -> ``steps`` -> stages -> core.
"""

from . import data, images, backbone, loras, sglora, evaluate, report, baselines, studies, generators, controls  # noqa: F401
from .registry import DEFAULT, SETTINGS_HOME, STEPS, device_of, hints, settings_class, step

__all__ = ["DEFAULT", "SETTINGS_HOME", "STEPS", "device_of", "hints", "settings_class", "step"]
