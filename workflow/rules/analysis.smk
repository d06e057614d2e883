# Analyses of finished runs and the measurements; they write small JSON files next to the runs.


rule checkpoint_losses:
    """Validation loss of every kept intermediate checkpoint of a token-scaling run (Fig. 6b)."""
    input:
        summary=f"{RUN}/final.json",
    output:
        f"{RUN}/checkpoint_losses.json",
    params:
        run_dir=run_folder,
        batches=config["token_scaling"].get("val_batches", 16),
    log:
        f"{RESULTS}/logs/checkpoint_losses/{RUN_LOG}.log",
    benchmark:
        f"{RESULTS}/benchmarks/checkpoint_losses/{RUN_LOG}.tsv"
    threads: 1
    resources:
        gpu=one_gpu,
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/mhc.yaml"
    shell:
        "python -m analysis.checkpoint_losses --run {params.run_dir} --batches {params.batches} "
        "--threads {threads} --out {output} > {log} 2>&1"


rule mappings:
    """Learned H_pre / H_post / H_res of a trained HC or mHC model on one validation sequence (Fig. 8)."""
    input:
        summary=f"{RUN}/final.json",
    output:
        f"{RUN}/mappings.json",
    params:
        run_dir=run_folder,
    log:
        f"{RESULTS}/logs/mappings/{RUN_LOG}.log",
    benchmark:
        f"{RESULTS}/benchmarks/mappings/{RUN_LOG}.tsv"
    threads: 1
    resources:
        gpu=one_gpu,
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/mhc.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m analysis.mappings --run {params.run_dir} --out {output} > {log} 2>&1"


rule jacobian_gain:
    """Jacobian gains (forward and backward, per sub-layer and through the whole depth) of a run of the section beyond
    the paper, after training and at initialisation, and whether its residual path is the identity at init."""
    input:
        summary=f"{RUN}/final.json",
    output:
        f"{RUN}/jacobian_gain.json",
    params:
        run_dir=run_folder,
        gain=lambda wc: " ".join(
            f"--{key} {value}" for key, value in ((config.get("beyond_paper") or {}).get("gain") or {}).items()
        ),
    log:
        f"{RESULTS}/logs/jacobian_gain/{RUN_LOG}.log",
    benchmark:
        f"{RESULTS}/benchmarks/jacobian_gain/{RUN_LOG}.tsv"
    threads: 1
    resources:
        gpu=one_gpu,
        mem_mb=4000,
        runtime=30,
    conda:
        "../../envs/mhc.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m analysis.jacobian_gain --run {params.run_dir} {params.gain} "
        "--out {output} > {log} 2>&1"


rule measure:
    """Step-time overhead (HC, mHC vs baseline), saved activations with and without recomputation (Table 3) and
    memory traffic per token (Table 2). Takes every core so that nothing else of this workflow runs during the timing
    (another process on the machine, even one, makes multi-threaded CPU timings meaningless)."""
    output:
        f"{RESULTS}/analysis/measurements.json",
    params:
        scales=" ".join(config["measurements"]["scales"]),
        overrides=json.dumps({s: config["scales"][s].get("model", {}) for s in config["measurements"]["scales"]}),
        batch=config["measurements"].get("batch", 8),
        seq=config["measurements"].get("seq", 128),
        steps=config["measurements"].get("steps", 5),
    log:
        f"{RESULTS}/logs/measure.log",
    benchmark:
        f"{RESULTS}/benchmarks/measure.tsv"
    threads: workflow.cores
    resources:
        gpu=1 if any(int(config["scales"][s].get("gpus", 0)) for s in config["measurements"]["scales"]) else 0,
        mem_mb=8000,
        runtime=60,
    conda:
        "../../envs/mhc.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m analysis.measure --scales {params.scales} "
        "--model-overrides {params.overrides:q} "
        "--batch {params.batch} --seq {params.seq} --steps {params.steps} --out {output} > {log} 2>&1"


rule plan:
    """The experiment plan as JSON: which runs exist and what each is for (analysis/plan.py)."""
    output:
        f"{RESULTS}/analysis/plan.json",
    params:
        plan=PLAN,
    log:
        f"{RESULTS}/logs/plan.log",
    benchmark:
        f"{RESULTS}/benchmarks/plan.tsv"
    conda:
        "../../envs/mhc.yaml"
    run:
        with open(output[0], "w") as fh:
            json.dump(params.plan, fh, indent=1)


rule index:
    """Plan + what every run left on disk -> the index all tables, figures and the report read."""
    input:
        plan=rules.plan.output,
        summaries=run_files("final.json"),
        evals=run_files("eval.json", "evaluation"),
        checkpoint_losses=run_files("checkpoint_losses.json", "token_scaling"),
        mappings=run_files("mappings.json", "mappings"),
        jacobian_gains=sorted({*run_files("jacobian_gain.json", "depth_sweep"), *run_files("jacobian_gain.json", "stress")}),
    output:
        f"{RESULTS}/analysis/runs.json",
    log:
        f"{RESULTS}/logs/index.log",
    benchmark:
        f"{RESULTS}/benchmarks/index.tsv"
    conda:
        "../../envs/mhc.yaml"
    shell:
        "python -m analysis.index --plan {input.plan} --out {output} > {log} 2>&1"


localrules:
    plan,
    index,
