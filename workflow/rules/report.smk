# Report: metric-vs-step plots per task, loss curves, the final-results table, and the
# data-order fingerprint check across runs that must have seen the same tokens.


rule report:
    input:
        evals=expand(f"{RESULTS}/evals/{{run}}", run=RUNS),
        checkpoints=[checkpoint_dir(run, step) for run in RUNS for step in STEPS],
    output:
        report(
            directory(f"{RESULTS}/report"),
            patterns=["{name}.png", "{name}.md", "{name}.csv"],
            category="Results",
        ),
    log:
        f"{RESULTS}/logs/report.log",
    shell:
        "{CLI} report --output {output:q} 2> {log:q}"
