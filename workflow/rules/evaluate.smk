# Evaluation: lm-eval at the configured steps and shots. One job evaluates a batch of
# checkpoints (evaluation.steps_per_job) so they share the process and lm-eval start-up.


rule prefetch_eval_datasets:
    output:
        paths.eval_datasets_marker(RESULTS),
    log:
        log("evaluate", "prefetch"),
    localrule: True
    conda:
        "../../envs/evaluate.yaml"
    params:
        cli=CLI,
    shell:
        "{params.cli} prefetch-eval-datasets --output {output:q} 2> {log:q}"


rule evaluate:
    input:
        exports=eval_batch_exports,
        tasks=eval_tasks_input,
    output:
        directory(paths.eval_batch_dir(RESULTS, "{run}", "{shots}", "{batch}")),
    log:
        log("evaluate", "{run}", "{shots}-shot", "batch{batch}"),
    params:
        cli=CLI,
    conda:
        "../../envs/evaluate.yaml"
    shell:
        "{params.cli} evaluate {wildcards.run:q} --shots {wildcards.shots} --batch {wildcards.batch}"
        " --exports {input.exports:q} --output {output:q} 2> {log:q}"


rule collect_evals:
    input:
        eval_batch_dirs,
    output:
        directory(paths.evals_dir(RESULTS, "{run}")),
    log:
        log("evaluate", "{run}", "collect"),
    params:
        cli=CLI,
    conda:
        "../../envs/evaluate.yaml"
    shell:
        "{params.cli} collect-evals {wildcards.run:q} {input:q} --output {output:q} 2> {log:q}"
