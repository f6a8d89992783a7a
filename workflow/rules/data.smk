# Data preparation: Pile shards -> dedup (deduped variant) -> tokenizer -> tokenized shards ->
# one Megatron mmap dataset per variant -> GPT-NeoX index maps; or Pythia's pre-tokenized Pile
# (idxmaps: fetch, verify, unshard into that dataset); or Pythia's preshuffled sets.


rule fetch_shard:
    output:
        paths.corpus_shard(RESULTS, "standard", "{shard}"),
    log:
        log("data", "fetch_shard", "{shard}"),
    params:
        cli=CLI,
    conda:
        "../../envs/data.yaml"
    shell:
        "{params.cli} fetch-shard {wildcards.shard:q} --output {output:q} 2> {log:q}"


rule dedup_signatures:
    input:
        paths.corpus_shard(RESULTS, "standard", "{shard}"),
    output:
        paths.dedup_signatures(RESULTS, "{shard}"),
    log:
        log("data", "dedup_signatures", "{shard}"),
    params:
        cli=CLI,
    conda:
        "../../envs/data.yaml"
    shell:
        "{params.cli} dedup-signatures {input:q} --shard-index {wildcards.shard}"
        " --output {output:q} 2> {log:q}"


rule dedup_buckets:
    input:
        [paths.dedup_signatures(RESULTS, shard) for shard in RAW_SHARDS],
    output:
        paths.dedup_edges(RESULTS, "{band}"),
    log:
        log("data", "dedup_buckets", "{band}"),
    params:
        cli=CLI,
    conda:
        "../../envs/data.yaml"
    shell:
        "{params.cli} dedup-buckets {input:q} --band-group {wildcards.band}"
        " --output {output:q} 2> {log:q}"


rule dedup_cluster:
    input:
        [paths.dedup_edges(RESULTS, band) for band in BAND_GROUPS],
    output:
        paths.dedup_removals(RESULTS),
    log:
        log("data", "dedup_cluster"),
    params:
        cli=CLI,
    conda:
        "../../envs/data.yaml"
    shell:
        "{params.cli} dedup-cluster {input:q} --output {output:q} 2> {log:q}"


rule dedup_filter:
    input:
        shard=paths.corpus_shard(RESULTS, "standard", "{shard}"),
        removals=paths.dedup_removals(RESULTS),
    output:
        shard=paths.corpus_shard(RESULTS, "deduped", "{shard}"),
        report=paths.dedup_shard_report(RESULTS, "{shard}"),
    log:
        log("data", "dedup_filter", "{shard}"),
    params:
        cli=CLI,
    conda:
        "../../envs/data.yaml"
    shell:
        "{params.cli} dedup-filter {input.shard:q} --shard-index {wildcards.shard}"
        " --removals {input.removals:q} --output {output.shard:q} --report {output.report:q}"
        " 2> {log:q}"


rule dedup_report:
    input:
        reports=[paths.dedup_shard_report(RESULTS, shard) for shard in RAW_SHARDS],
        shards=corpus_shards("standard"),
        removals=paths.dedup_removals(RESULTS),
        edges=[paths.dedup_edges(RESULTS, band) for band in BAND_GROUPS],
    output:
        report(paths.dedup_report(RESULTS), category="Data", labels={"stage": "dedup"}),
    log:
        log("data", "dedup_report"),
    params:
        cli=CLI,
    conda:
        "../../envs/data.yaml"
    shell:
        "{params.cli} dedup-report --reports {input.reports:q} --shards {input.shards:q}"
        " --removals {input.removals:q} --edges {input.edges:q} --output {output:q} 2> {log:q}"


if config["data"]["tokenizer"]["kind"] == "train":

    rule train_tokenizer:
        input:
            corpus_shards("standard"),
        output:
            TOKENIZER,
        log:
            log("data", "train_tokenizer"),
        params:
            cli=CLI,
        conda:
            "../../envs/data.yaml"
        shell:
            "{params.cli} train-tokenizer {input:q} --output {output:q} 2> {log:q}"

else:

    rule fetch_tokenizer:
        output:
            TOKENIZER,
        log:
            log("data", "fetch_tokenizer"),
        params:
            cli=CLI,
        conda:
            "../../envs/data.yaml"
        shell:
            "{params.cli} fetch-tokenizer --output {output:q} 2> {log:q}"


rule tokenize_shard:
    input:
        shard=paths.corpus_shard(RESULTS, "{variant}", "{shard}"),
        tokenizer=TOKENIZER,
    output:
        multiext(paths.tokenized_prefix(RESULTS, "{variant}", "{shard}"), ".bin", ".idx"),
        documents=paths.shard_document_table(RESULTS, "{variant}", "{shard}"),
    log:
        log("data", "tokenize", "{variant}", "{shard}"),
    params:
        cli=CLI,
        prefix=lambda wc: paths.tokenized_prefix(RESULTS, wc.variant, wc.shard),
    threads: 2
    conda:
        "../../envs/data.yaml"
    shell:
        "{params.cli} tokenize {input.shard:q} --tokenizer {input.tokenizer:q}"
        " --output-prefix {params.prefix:q} --documents {output.documents:q}"
        " --workers {threads} 2> {log:q}"


if config["data"]["source"] == "idxmaps":

    rule fetch_idxmaps:
        output:
            paths.idxmaps_file(RESULTS, "{variant}", "{idxmaps_file}"),
        log:
            log("data", "fetch_idxmaps", "{variant}", "{idxmaps_file}"),
        params:
            cli=CLI,
        conda:
            "../../envs/data.yaml"
        shell:
            "{params.cli} fetch-idxmaps {wildcards.variant:q} {wildcards.idxmaps_file:q}"
            " --output {output:q} 2> {log:q}"

    rule unshard_idxmaps:
        input:
            lambda wc: idxmaps_files(wc.variant),
        output:
            multiext(paths.dataset_prefix(RESULTS, "{variant}"), ".bin", ".idx"),
        log:
            log("data", "unshard_idxmaps", "{variant}"),
        params:
            cli=CLI,
            prefix=lambda wc: paths.dataset_prefix(RESULTS, wc.variant),
        conda:
            "../../envs/data.yaml"
        shell:
            "{params.cli} unshard-idxmaps {wildcards.variant:q} --files {input:q}"
            " --output-prefix {params.prefix:q} 2> {log:q}"

else:

    rule merge_dataset:
        input:
            lambda wc: [
                path
                for shard in RAW_SHARDS
                for path in multiext(paths.tokenized_prefix(RESULTS, wc.variant, shard), ".bin", ".idx")
            ],
        output:
            multiext(paths.dataset_prefix(RESULTS, "{variant}"), ".bin", ".idx"),
        log:
            log("data", "merge", "{variant}"),
        params:
            cli=CLI,
            shards=lambda wc: [paths.tokenized_prefix(RESULTS, wc.variant, s) for s in RAW_SHARDS],
            prefix=lambda wc: paths.dataset_prefix(RESULTS, wc.variant),
        conda:
            "../../envs/data.yaml"
        shell:
            "{params.cli} merge-datasets {params.shards:q} --output-prefix {params.prefix:q} 2> {log:q}"


rule build_order:
    input:
        multiext(paths.dataset_prefix(RESULTS, "{variant}"), ".bin", ".idx"),
    output:
        directory(paths.order_dir(RESULTS, "{variant}", "{seed}")),
    log:
        log("data", "order", "{variant}", "seed{seed}"),
    params:
        cli=CLI,
        prefix=lambda wc: paths.dataset_prefix(RESULTS, wc.variant),
    conda:
        "../../envs/data.yaml"
    shell:
        "{params.cli} build-order --dataset-prefix {params.prefix:q} --seed {wildcards.seed}"
        " --output {output:q} 2> {log:q}"


rule fetch_preshuffled:
    output:
        multiext(paths.preshuffled_prefix(RESULTS, "{variant}"), ".bin", ".idx"),
    log:
        log("data", "preshuffled", "{variant}"),
    params:
        cli=CLI,
        prefix=lambda wc: paths.preshuffled_prefix(RESULTS, wc.variant),
    conda:
        "../../envs/data.yaml"
    shell:
        "{params.cli} fetch-preshuffled {wildcards.variant:q} --output-prefix {params.prefix:q}"
        " 2> {log:q}"


rule eval_tasks:
    input:
        heldout=config["data"]["raw"]["heldout"] or [],
        tokenizer=paths.tokenizer(RESULTS),  # distractors cost as many tokens as the answer
    output:
        directory(paths.eval_tasks_dir(RESULTS)),
    log:
        log("data", "eval_tasks"),
    params:
        cli=CLI,
    conda:
        "../../envs/evaluate.yaml"
    shell:
        "{params.cli} build-eval-tasks {input.heldout:q} --tokenizer {input.tokenizer:q}"
        " --output {output:q} 2> {log:q}"
