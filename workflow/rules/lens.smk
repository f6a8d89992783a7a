# The data lens: each raw dataset's document table (shard, record, Pile subset) and, per
# (variant, data seed), what every training step and checkpoint reads (pythia_suite.data.lens).


rule document_table:
    input:
        tables=lambda wc: [paths.shard_document_table(RESULTS, wc.variant, s) for s in RAW_SHARDS],
        dataset=multiext(paths.dataset_prefix(RESULTS, "{variant}"), ".bin", ".idx"),
        standard=lambda wc: standard_document_table(wc.variant),
    output:
        directory(paths.document_table(RESULTS, "{variant}")),
    log:
        log("data", "document_table", "{variant}"),
    params:
        cli=CLI,
        prefix=lambda wc: paths.dataset_prefix(RESULTS, wc.variant),
        standard=lambda wc, input: f"--standard {shlex.quote(input.standard)}" if input.standard else "",
    conda:
        "../../envs/data.yaml"
    shell:
        "{params.cli} document-table {input.tables:q} --dataset-prefix {params.prefix:q}"
        " {params.standard} --output {output:q} 2> {log:q}"


rule data_lens:
    input:
        dataset=multiext(paths.dataset_prefix(RESULTS, "{variant}"), ".bin", ".idx"),
        order=paths.order_dir(RESULTS, "{variant}", "{seed}"),
        documents=lambda wc: lens_documents(wc.variant),
    output:
        directory(paths.lens_dir(RESULTS, "{variant}", "{seed}")),
    log:
        log("data", "lens", "{variant}", "seed{seed}"),
    params:
        cli=CLI,
        prefix=lambda wc: paths.dataset_prefix(RESULTS, wc.variant),
        documents=lambda wc, input: f"--documents {shlex.quote(input.documents)}" if input.documents else "",
    conda:
        "../../envs/data.yaml"
    shell:
        "{params.cli} build-lens --variant {wildcards.variant} --dataset-prefix {params.prefix:q}"
        " --order {input.order:q} {params.documents} --seed {wildcards.seed}"
        " --output {output:q} 2> {log:q}"
