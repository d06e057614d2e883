rule mlflow_init:
    """Create the MLflow store and experiment (tagged as a model-training experiment) once, before any tracking job:
    concurrent jobs opening a fresh SQLite store race on its schema migration. With tracking off it only writes a
    file saying so, which the training jobs read (switching tracking on or off retrains nothing)."""
    output:
        f"{RESULTS}/mlflow_experiment.json",
    params:
        uri=config["tracking"].get("tracking_uri", "sqlite:///results/mlflow.db"),
        experiment=config["tracking"].get("experiment", "mhc-replication"),
        disabled="" if config["tracking"]["enabled"] else "--disabled",
    log:
        "results/logs/mlflow_init.log",
    benchmark:
        f"{RESULTS}/benchmarks/mlflow_init.tsv"
    conda:
        "../../envs/mhc.yaml"
    shell:
        "python -m training.tracking init --uri {params.uri:q} --experiment {params.experiment:q} {params.disabled} "
        '--artifact-location "$PWD/results/mlflow/artifacts" --out {output} > {log} 2>&1'


localrules:
    mlflow_init,
