# Publish: each export to its branch (step{N}; main = the final step), verified before the
# receipt is written. Local hub and/or the Hub, as config.publish says.


rule publish:
    input:
        f"{RESULTS}/runs/{{run}}/exports/step{{step}}",
    output:
        f"{RESULTS}/runs/{{run}}/published/step{{step}}.json",
    log:
        f"{RESULTS}/logs/publish/{{run}}/step{{step}}.log",
    shell:
        "{CLI} publish {wildcards.run:q} --step {wildcards.step} --export {input:q}"
        " --receipt {output:q} 2> {log:q}"


rule model_card:
    input:
        evals=f"{RESULTS}/evals/{{run}}",
        final=lambda wc: receipt(wc.run, FINAL_STEP),
    output:
        f"{RESULTS}/runs/{{run}}/model_card/README.md",
    log:
        f"{RESULTS}/logs/publish/{{run}}/model_card.log",
    shell:
        "{CLI} model-card {wildcards.run:q} --evals {input.evals:q} --output {output:q} 2> {log:q}"


rule run_done:
    input:
        lambda wc: run_targets(wc.run),
    output:
        f"{RESULTS}/runs/{{run}}/run.done",
    log:
        f"{RESULTS}/logs/{{run}}.done.log",
    shell:
        "{CLI} verify-run {wildcards.run:q} --output {output:q} 2> {log:q}"
