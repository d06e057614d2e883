# The paper's artifacts rebuilt from the files under results/<tier>/ (never from the MLflow database).

from analysis.artifacts import FIGURE_NAMES, TABLE_NAMES  # the one list of table and figure names


rule tables:
    """The tables of analysis/artifacts.py: Tables 1-5, overhead, per-item benchmarks (CSV + Markdown)."""
    input:
        index=rules.index.output,
        measurements=rules.measure.output,
    output:
        [
            report(
                f"{RESULTS}/tables/{name}.md",
                caption="../report/tables.rst",
                category="Tables",
                labels={"table": name},
            )
            for name in TABLE_NAMES
        ],
        [f"{RESULTS}/tables/{name}.csv" for name in TABLE_NAMES],
    params:
        out=lambda wildcards, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/tables.tsv"
    conda:
        "../../envs/mhc.yaml"
    shell:
        "python -m analysis.tables --index {input.index} --measurements {input.measurements} "
        "--out {params.out} > {log} 2>&1"


rule figures:
    """The figures of analysis/artifacts.py: Fig. 2, 3, 5-8 and our two checks, as PNG and PDF."""
    input:
        index=rules.index.output,
    output:
        [
            report(
                f"{RESULTS}/figures/{name}.png",
                caption=f"../report/{name}.rst",
                category="Figures",
                labels={"figure": name},
            )
            for name in FIGURE_NAMES
        ],
        [f"{RESULTS}/figures/{name}.pdf" for name in FIGURE_NAMES],
    params:
        out=lambda wildcards, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/figures.tsv"
    conda:
        "../../envs/mhc.yaml"
    shell:
        "MPLBACKEND=Agg python -m analysis.figures --index {input.index} --out {params.out} > {log} 2>&1"


rule report:
    """The replication report: every claim of the paper, our measurement at this tier, and a verdict."""
    input:
        index=rules.index.output,
        tables=rules.tables.output,
        figures=rules.figures.output,
    output:
        report=report(f"{RESULTS}/report.md", caption="../report/report.rst", category="Report"),
        summary=f"{RESULTS}/summary.md",
    params:
        tables=lambda wildcards, input: os.path.dirname(input.tables[0]),
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    conda:
        "../../envs/mhc.yaml"
    shell:
        "python -m analysis.report --index {input.index} --tables {params.tables} --out {output.report} > {log} 2>&1"


localrules:
    tables,
    figures,
    report,
