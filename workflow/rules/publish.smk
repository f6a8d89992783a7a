# Publish: each export to its branch (step{N}; main = the final step), verified before the
# receipt is written; to a local hub and/or the Hub, as config.publish says.


rule publish:
    input:
        paths.export_dir(RESULTS, "{run}", "{step}"),
    output:
        paths.receipt(RESULTS, "{run}", "{step}"),
    log:
        log("publish", "{run}", "step{step}"),
    params:
        cli=CLI,
    conda:
        "../../envs/publish.yaml"
    shell:
        "{params.cli} publish {wildcards.run:q} --step {wildcards.step} --export {input:q}"
        " --receipt {output:q} 2> {log:q}"


rule model_card:
    input:
        evals=paths.evals_dir(RESULTS, "{run}"),
        # the card reads every step's receipt (branches, verification), not just the final one
        receipts=run_receipts,
        # and the data records it states: tokens in one pass, documents removed by dedup
        data=training_data,
        dedup=card_dedup_report,
        lens=run_lens,  # the data facts the card states
    output:
        paths.model_card(RESULTS, "{run}"),
    log:
        log("publish", "{run}", "model_card"),
    params:
        cli=CLI,
    conda:
        "../../envs/publish.yaml"
    shell:
        "{params.cli} model-card {wildcards.run:q} --evals {input.evals:q} --output {output:q}"
        " 2> {log:q}"


rule run_done:
    input:
        run_targets,
    output:
        paths.run_done(RESULTS, "{run}"),
    log:
        log("verify", "{run}"),
    params:
        cli=CLI,
    conda:
        "../../envs/publish.yaml"
    shell:
        "{params.cli} verify-run {wildcards.run:q} --output {output:q} 2> {log:q}"
