# Evaluation: lm-eval at the configured steps and shots. One job evaluates a batch of
# checkpoints (evaluation.steps_per_job) to share the process and lm-eval start-up.


rule evaluate:
    input:
        exports=eval_batch_exports,
        tasks=eval_tasks_input,
    output:
        directory(f"{RESULTS}/runs/{{run}}/evals/{{shots}}-shot/batch{{batch}}"),
    log:
        f"{RESULTS}/logs/evaluate/{{run}}/{{shots}}-shot/batch{{batch}}.log",
    shell:
        "{CLI} evaluate {wildcards.run:q} --shots {wildcards.shots} --batch {wildcards.batch}"
        " --exports {input.exports:q} --output {output:q} 2> {log:q}"


rule collect_evals:
    input:
        lambda wc: eval_batch_outputs(wc.run),
    output:
        directory(f"{RESULTS}/evals/{{run}}"),
    log:
        f"{RESULTS}/logs/evaluate/{{run}}/collect.log",
    shell:
        "{CLI} collect-evals {wildcards.run:q} {input:q} --output {output:q} 2> {log:q}"
