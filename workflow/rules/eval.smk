rule evaluate:
    """The benchmark suite (lm-eval, local data) on one run's final model; an MLflow child run of the training run.
    A diverged run gets a results file that says so instead of scores."""
    input:
        summary=f"{RUN}/final.json",
    output:
        f"{RUN}/eval.json",
    params:
        run_dir=run_folder,
        tasks=lambda wc: ""
        if config["evaluation"]["tasks"] == "paper"
        else f"--tasks {shlex.quote(','.join(config['evaluation']['tasks']))}",
        limit=lambda wc: f"--limit {config['evaluation']['limit']}" if config["evaluation"].get("limit") else "",
        data_root=lambda wc: f"--data-root {shlex.quote(config['data_root'])}" if config.get("data_root") else "",
        batch_size=config["evaluation"].get("batch_size", 8),
        per_item="--per-item" if config["evaluation"].get("per_item") else "",
    log:
        f"{RESULTS}/logs/evaluate/{RUN_LOG}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{RUN_LOG}.tsv"
    threads: 1
    resources:
        gpu=one_gpu,
        mem_mb=8000,
        runtime=240,
    conda:
        "../../envs/mhc.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m eval.run --checkpoint {params.run_dir} --skip-unfinished "
        "{params.tasks} {params.limit} {params.data_root} --batch-size {params.batch_size} {params.per_item} "
        "--out {output} > {log} 2>&1"
