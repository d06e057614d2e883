rule prepare_data:
    """Tokenizer and train/val token shards of one dataset, built once before any training job."""
    output:
        manifest="results/data/{dataset}/manifest.json",
        tokenizer="results/data/{dataset}/tokenizer.json",
        train="results/data/{dataset}/train.bin",
        val="results/data/{dataset}/val.bin",
    params:
        dataset=lambda wc: config["datasets"][wc.dataset],
        args=lambda wc: " ".join(
            arg
            for arg in (
                f"--vocab {config['datasets'][wc.dataset]['vocab_size']}",
                f"--max-docs {config['datasets'][wc.dataset]['max_docs']}"
                if config["datasets"][wc.dataset].get("max_docs")
                else "",
                f"--hf-dataset {shlex.quote(config['datasets'][wc.dataset]['hf_dataset'])}"
                if config["datasets"][wc.dataset].get("hf_dataset")
                else "",
                f"--root {shlex.quote(config['data_root'])}" if config.get("data_root") else "",
            )
            if arg
        ),
    log:
        "results/logs/prepare_data/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_data/{dataset}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/mhc.yaml"
    shell:
        "python -m models.prepare_data {params.args} --out results/data/{wildcards.dataset} > {log} 2>&1"
