# Data preparation: Pile shards -> dedup (deduped variant) -> tokenizer -> tokenized shards ->
# one Megatron mmap dataset per variant -> GPT-NeoX index maps; or Pythia's preshuffled sets.


rule fetch_shard:
    output:
        f"{RESULTS}/data/corpus/standard/{{shard}}.jsonl.zst",
    log:
        f"{RESULTS}/logs/data/fetch_shard/{{shard}}.log",
    shell:
        "{CLI} fetch-shard {wildcards.shard:q} --output {output:q} 2> {log:q}"


rule dedup_signatures:
    input:
        f"{RESULTS}/data/corpus/standard/{{shard}}.jsonl.zst",
    output:
        f"{RESULTS}/data/dedup/signatures/{{shard}}.npz",
    log:
        f"{RESULTS}/logs/data/dedup_signatures/{{shard}}.log",
    shell:
        "{CLI} dedup-signatures {input:q} --shard-index {wildcards.shard} --output {output:q} 2> {log:q}"


rule dedup_buckets:
    input:
        expand(f"{RESULTS}/data/dedup/signatures/{{shard}}.npz", shard=RAW_SHARDS),
    output:
        f"{RESULTS}/data/dedup/edges/group{{band}}.npz",
    log:
        f"{RESULTS}/logs/data/dedup_buckets/{{band}}.log",
    shell:
        "{CLI} dedup-buckets {input:q} --band-group {wildcards.band} --output {output:q} 2> {log:q}"


rule dedup_cluster:
    input:
        expand(
            f"{RESULTS}/data/dedup/edges/group{{band}}.npz",
            band=[f"{i:03d}" for i in range(config["data"]["dedup"]["band_groups"])],
        ),
    output:
        f"{RESULTS}/data/dedup/removals.npz",
    log:
        f"{RESULTS}/logs/data/dedup_cluster.log",
    shell:
        "{CLI} dedup-cluster {input:q} --output {output:q} 2> {log:q}"


rule dedup_filter:
    input:
        shard=f"{RESULTS}/data/corpus/standard/{{shard}}.jsonl.zst",
        removals=f"{RESULTS}/data/dedup/removals.npz",
    output:
        shard=f"{RESULTS}/data/corpus/deduped/{{shard}}.jsonl.zst",
        report=f"{RESULTS}/data/dedup/reports/{{shard}}.json",
    log:
        f"{RESULTS}/logs/data/dedup_filter/{{shard}}.log",
    shell:
        "{CLI} dedup-filter {input.shard:q} --shard-index {wildcards.shard}"
        " --removals {input.removals:q} --output {output.shard:q} --report {output.report:q}"
        " 2> {log:q}"


rule dedup_report:
    input:
        reports=expand(f"{RESULTS}/data/dedup/reports/{{shard}}.json", shard=RAW_SHARDS),
        signatures=expand(f"{RESULTS}/data/dedup/signatures/{{shard}}.npz", shard=RAW_SHARDS),
        standard=corpus_shards("standard"),
        removals=f"{RESULTS}/data/dedup/removals.npz",
    output:
        report(f"{RESULTS}/data/dedup/report.json", category="Data", labels={"stage": "dedup"}),
    log:
        f"{RESULTS}/logs/data/dedup_report.log",
    shell:
        "{CLI} dedup-report --reports {input.reports:q} --shards {input.standard:q}"
        " --removals {input.removals:q} --output {output:q} 2> {log:q}"


if config["data"]["tokenizer"]["kind"] == "train":

    rule train_tokenizer:
        input:
            corpus_shards("standard"),
        output:
            TOKENIZER,
        log:
            f"{RESULTS}/logs/data/train_tokenizer.log",
        shell:
            "{CLI} train-tokenizer {input:q} --output {output:q} 2> {log:q}"

else:

    rule fetch_tokenizer:
        output:
            TOKENIZER,
        log:
            f"{RESULTS}/logs/data/fetch_tokenizer.log",
        shell:
            "{CLI} fetch-tokenizer --output {output:q} 2> {log:q}"


rule tokenize_shard:
    input:
        shard=f"{RESULTS}/data/corpus/{{variant}}/{{shard}}.jsonl.zst",
        tokenizer=TOKENIZER,
    output:
        multiext(f"{RESULTS}/data/tokenized/{{variant}}/{{shard}}_text_document", ".bin", ".idx"),
    log:
        f"{RESULTS}/logs/data/tokenize/{{variant}}/{{shard}}.log",
    params:
        prefix=lambda wc: tokenized_prefix(wc.variant, wc.shard),
    threads: 2
    shell:
        "{CLI} tokenize {input.shard:q} --tokenizer {input.tokenizer:q}"
        " --output-prefix {params.prefix:q} --workers {threads} 2> {log:q}"


rule merge_dataset:
    input:
        lambda wc: expand(
            f"{RESULTS}/data/tokenized/{wc.variant}/{{shard}}_text_document.{{ext}}",
            shard=RAW_SHARDS,
            ext=["bin", "idx"],
        ),
    output:
        multiext(f"{RESULTS}/data/datasets/{{variant}}/{{variant}}_text_document", ".bin", ".idx"),
    log:
        f"{RESULTS}/logs/data/merge/{{variant}}.log",
    params:
        shards=lambda wc: [tokenized_prefix(wc.variant, shard) for shard in RAW_SHARDS],
        prefix=lambda wc: dataset_prefix(wc.variant),
    shell:
        "{CLI} merge-datasets {params.shards:q} --output-prefix {params.prefix:q} 2> {log:q}"


rule build_order:
    input:
        multiext(f"{RESULTS}/data/datasets/{{variant}}/{{variant}}_text_document", ".bin", ".idx"),
    output:
        directory(f"{RESULTS}/data/order/{{variant}}/seed{{seed}}"),
    log:
        f"{RESULTS}/logs/data/order/{{variant}}/seed{{seed}}.log",
    params:
        prefix=lambda wc: dataset_prefix(wc.variant),
    shell:
        "{CLI} build-order --dataset-prefix {params.prefix:q} --seed {wildcards.seed}"
        " --output {output:q} 2> {log:q}"


rule fetch_preshuffled:
    output:
        multiext(f"{RESULTS}/data/preshuffled/{{variant}}/document", ".bin", ".idx"),
    log:
        f"{RESULTS}/logs/data/preshuffled/{{variant}}.log",
    params:
        prefix=lambda wc: preshuffled_prefix(wc.variant),
    shell:
        "{CLI} fetch-preshuffled {wildcards.variant:q} --output-prefix {params.prefix:q} 2> {log:q}"


rule eval_tasks:
    input:
        heldout=config["data"]["raw"]["heldout"] or [],
    output:
        directory(f"{RESULTS}/data/eval_tasks"),
    log:
        f"{RESULTS}/logs/data/eval_tasks.log",
    shell:
        "{CLI} build-eval-tasks {input.heldout:q} --output {output:q} 2> {log:q}"
