# Export: each checkpoint to a Hugging Face model directory (safetensors, config, tokenizer).


rule export:
    input:
        checkpoint=paths.checkpoint_dir(RESULTS, "{run}", "{step}"),
        tokenizer=TOKENIZER,
    output:
        directory(paths.export_dir(RESULTS, "{run}", "{step}")),
    log:
        log("export", "{run}", "step{step}"),
    params:
        cli=CLI,
    conda:
        "../../envs/publish.yaml"
    shell:
        "{params.cli} export {input.checkpoint:q} --tokenizer {input.tokenizer:q} --output {output:q}"
        " 2> {log:q}"
