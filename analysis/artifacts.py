"""The one list of the tables and figures the analysis writes: their file names, what of the paper each rebuilds and
the report's caption. Everything else derives its names from here: the builders (analysis/tables.py,
analysis/figures.py), the report's sections (analysis/report.py), the Snakemake rules' outputs and report captions
(workflow/rules/report.smk, one workflow/report/NAME.rst per figure) and the tests.

Imported by the Snakefile when it parses, so this module imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Artifact:
    """One table or figure: `name` is the file stem (NAME.csv + NAME.md, or NAME.png + NAME.pdf); `paper` the part
    of the paper it rebuilds (empty for our own checks); `caption` the report's heading of a figure."""

    name: str
    paper: str = ""
    caption: str = ""


TABLES: tuple[Artifact, ...] = (
    Artifact("table1_ablation", "Table 1"),
    Artifact("benchmarks_items"),
    Artifact("table2_memory_access", "Table 2"),
    Artifact("table3_recompute", "Table 3"),
    Artifact("table4_benchmarks", "Table 4"),
    Artifact("table5_configs", "Table 5"),
    Artifact("overhead", "§4.3"),
    Artifact("beyond_paper"),
)
"""The tables, in the order the report embeds them (the per-item benchmark table right after the ablation)."""

FIGURES: tuple[Artifact, ...] = (
    Artifact("fig_mechanism", "", "Mechanism: stream spread, H_res movement and the gradient reaching H_res"),
    Artifact("fig_lr_sweep", "", "Stability under a learning-rate stress test"),
    Artifact("fig2_hc_instability", "Fig. 2", "Fig. 2: training loss gap HC − mHC and gradient norms"),
    Artifact("fig3_hc_amax", "Fig. 3", "Fig. 3: HC Amax gain, single-layer and composite"),
    Artifact("fig5_mhc_stability", "Fig. 5", "Fig. 5: training loss gap to the baseline and gradient norms"),
    Artifact("fig6_scaling", "Fig. 6", "Fig. 6: compute and token scaling"),
    Artifact("fig7_mhc_amax", "Fig. 7", "Fig. 7: mHC Amax gain, single-layer and composite"),
    Artifact("fig8_mappings", "Fig. 8", "Fig. 8: learned H_res matrices"),
    Artifact("fig_beyond_depth", "", "Beyond the paper: loss gap and gains against depth"),
    Artifact("fig_beyond_stress", "", "Beyond the paper: the LR stress test for every variant"),
)
"""The figures, in the order the report shows them (our two checks first)."""

TABLE_NAMES: tuple[str, ...] = tuple(t.name for t in TABLES)
FIGURE_NAMES: tuple[str, ...] = tuple(f.name for f in FIGURES)
PAPER_TABLES: tuple[str, ...] = tuple(t.name for t in TABLES if t.paper)
PAPER_FIGURES: tuple[str, ...] = tuple(f.name for f in FIGURES if f.paper)
