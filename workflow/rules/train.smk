rule train:
    """One (scale, variant, seed) training run. The run folder (checkpoints, metrics.jsonl, the final model) is a
    param, not an output: Snakemake deletes the outputs of a failed job, and the checkpoints must survive a failure
    or a kill so that the rerun resumes. Only final.json, written once the run has ended, is the output."""
    input:
        manifest=lambda wc: f"results/data/{dataset_of(wc)}/manifest.json",
        tracking=tracking_input,
    output:
        summary=f"{RUN}/final.json",
    params:
        run_dir=run_folder,
        launcher=train_launcher,
        tracking=lambda wildcards, input: f"--tracking-file {input.tracking}",
        args=train_args,
    log:
        f"{RESULTS}/logs/train/{RUN_LOG}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{RUN_LOG}.tsv"
    threads: 1
    resources:
        gpu=lambda wc: int(config["scales"][wc.scale].get("gpus", 0)),
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/mhc.yaml"
    shell:
        "{params.launcher} {params.args} --set run.threads={threads} --out {params.run_dir} --replace-stale "
        "--summary {output.summary} {params.tracking} > {log} 2>&1"
