# Training: step0 is the initial weights; each later checkpoint is one segment job that resumes
# from the previous checkpoint. In-progress resume state lives under paths.state, outside the
# declared outputs (Snakemake deletes a failed job's outputs). Under training.backend: neox the
# same rules run GPT-NeoX (pythia_suite.neox): no launch prefix, one deepy.py per job.


rule neox_index_maps:
    # GPT-NeoX only: the data prefix and every index map its segments ask for, built once per
    # dataset and data seed (segment jobs write none; pythia_suite.neox.index_maps).
    input:
        neox_index_maps_data,
    output:
        directory(suite_neox.neox_index_maps_dir(config, "{variant}", "{seed}")),
    log:
        log("train", "neox-index-maps", "{variant}", "seed{seed}"),
    params:
        cli=CLI,
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.cli} neox-index-maps --variant {wildcards.variant:q} --seed {wildcards.seed}"
        " --output {output:q} 2> {log:q}"


rule init_checkpoint:
    input:
        training_data,
        neox_index_maps if neox_backend() else [],
    output:
        directory(paths.checkpoint_dir(RESULTS, "{run}", "0")),
    log:
        log("train", "{run}", "step0"),
    params:
        cli=CLI,
        config_hash=run_config_hash,
    resources:
        **init_checkpoint_resources(),
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.cli} train-segment {wildcards.run:q} --step 0 --output {output:q} 2> {log:q}"


rule train_segment:
    input:
        previous=previous_checkpoint,
        data=training_data,
        neox_maps=neox_index_maps if neox_backend() else [],
    output:
        directory(paths.checkpoint_dir(RESULTS, "{run}", "{step}")),
    log:
        log("train", "{run}", "step{step}"),
    wildcard_constraints:
        step=r"[1-9][0-9]*",
    group:
        segment_group
    params:
        cli=CLI,
        config_hash=run_config_hash,
    resources:
        # How ranks start is no rerun trigger (params are): it differs between a dry run, the
        # submitting Snakemake and the one nested in a SLURM job, and between executors.
        launch=train_launch,
        nodes=train_nodes,
        tasks=train_tasks,
        gpu=train_gpus,
        tasks_per_gpu=train_tasks_per_gpu,
        mpi=train_mpi,
        mem_mb=train_mem_mb,
        cpus_per_task=config["cluster"]["cpus_per_task"],
        runtime=config["cluster"]["minutes_per_segment"],
    conda:
        "../../envs/train.yaml"
    shell:
        # await-segment: a restarted Snakemake must not start a second writer while the job
        # its predecessor submitted still trains this segment (issue 7, pythia_suite.slurm);
        # train-segment then exits 0 if that job left the checkpoint. The log is appended to:
        # the other job's lines come first.
        "{params.cli} await-segment {wildcards.run:q} --step {wildcards.step} 2>> {log:q} && "
        "{resources.launch} {params.cli} train-segment {wildcards.run:q} --step {wildcards.step}"
        " --resume-from {input.previous:q} --output {output:q} 2>> {log:q}"
