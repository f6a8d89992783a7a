# Report: metric-vs-step plots per task, loss curves, the final-results table, and the
# data-order fingerprint check across runs that must have seen the same tokens.


rule report:
    input:
        evals=[paths.evals_dir(RESULTS, run) for run in RUNS],
        checkpoints=[paths.checkpoint_dir(RESULTS, run, step) for run in RUNS for step in STEPS],
        lens=lens_targets(),  # the data-composition figure
    output:
        report(
            directory(paths.report_dir(RESULTS)),
            patterns=["{name}.png", "{name}.md", "{name}.csv", "{name}.json"],
            category="Results",
            caption="../report/results.rst",
        ),
    log:
        log("report"),
    params:
        cli=CLI,
    conda:
        "../../envs/publish.yaml"
    shell:
        "{params.cli} report --output {output:q} 2> {log:q}"
