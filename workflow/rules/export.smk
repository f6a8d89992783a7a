# Export: each checkpoint to a Hugging Face model directory (safetensors, config, tokenizer).


rule export:
    input:
        checkpoint=f"{RESULTS}/runs/{{run}}/checkpoints/step{{step}}",
        tokenizer=TOKENIZER,
    output:
        directory(f"{RESULTS}/runs/{{run}}/exports/step{{step}}"),
    log:
        f"{RESULTS}/logs/export/{{run}}/step{{step}}.log",
    shell:
        "{CLI} export {input.checkpoint:q} --tokenizer {input.tokenizer:q} --output {output:q}"
        " 2> {log:q}"
