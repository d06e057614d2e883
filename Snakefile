# The mHC replication workflow: the paper's whole experiment DAG (README, "The workflow").
#
#   snakemake --cores all                                  # default tier (config/config.yaml), ~2 h on 2 cores
#   snakemake --cores all --configfile config/smoke.yaml   # every rule on a unit-test model, minutes
#   snakemake -n --configfile config/paper.yaml            # plan the paper's 3B/9B/27B experiment set
#   snakemake --workflow-profile profiles/slurm --configfile config/gpu.yaml   # a SLURM cluster
#   snakemake --report results/report.html                 # figures and tables with captions, after a run
#
# Results go to results/<tier>/ (runs, tables, figures, report.md); tokenised data to results/data/; the MLflow
# store to results/mlflow.db. Training is resumable: a killed or failed job resumes from its last checkpoint when
# rerun, because the checkpoints live in the run folder, which is never a declared (deleted-on-failure) output.

# A tier given with --configfile replaces the default tier rather than being merged into it: Snakemake merges
# config files key by key, which would leave default-tier sections (its LR sweep, init ablation, power plan) in a
# tier that does not define them. `--config key=value` still edits whichever tier is loaded.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        rules.report.output,
        rules.tables.output,
        rules.figures.output,
        # every run's own outputs too: Snakemake does not rebuild a missing intermediate file whose consumers are up
        # to date, so without these, deleting one run would not retrain it
        run_files("final.json"),
        run_files("eval.json", "evaluation"),
        run_files("checkpoint_losses.json", "token_scaling"),
        run_files("mappings.json", "mappings"),
        run_files("jacobian_gain.json", "depth_sweep"),
        run_files("jacobian_gain.json", "stress"),
