# The paper's artifacts rebuilt from the files under results/<tier>/ (never from the MLflow database).

TABLES = ["table1_ablation", "table2_memory_access", "table3_recompute", "table4_benchmarks", "table5_configs",
          "overhead", "benchmarks_items"]  # fmt: skip
FIGURES = ["fig2_hc_instability", "fig3_hc_amax", "fig5_mhc_stability", "fig6_scaling", "fig7_mhc_amax",
           "fig8_mappings", "fig_mechanism", "fig_lr_sweep"]  # fmt: skip


rule tables:
    """Tables 1-5 and the overhead table, each with the paper's values beside ours (CSV + Markdown)."""
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
            for name in TABLES
        ],
        [f"{RESULTS}/tables/{name}.csv" for name in TABLES],
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
    """Fig. 2, 3, 5, 6, 7 and 8 as PNG and PDF."""
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
            for name in FIGURES
        ],
        [f"{RESULTS}/figures/{name}.pdf" for name in FIGURES],
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
