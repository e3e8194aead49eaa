"""sglora: SG-LoRA (semantic-guided LoRA parameter generation) as a library.

The Snakemake workflow in this repository calls the functions here through the
``sglora`` command line; nothing in this package imports Snakemake.
"""

__version__ = "0.1.0"
