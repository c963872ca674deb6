"""Executors: who renders the shards of a planned build.

`build.run_build` plans a build once (`plan.plan_build`), claims the output folder
(`staging.OutputFolder`), asks an executor to render the shards that have no receipt yet, and
commits (`commit.commit`). An executor only renders the shards it is handed and writes them, each
with its receipt, into the staging folder:

- `local.LocalExecutor`: this process, with ``--workers`` threads or spawned processes;
- `ranks.RankExecutor`: one process per rank under ``torchrun`` / ``accelerate launch``
  (``WORLD_SIZE`` > 1); rank ``r`` renders shards ``r, r+W, ...`` of those not yet done;
- `ray_actors.RayExecutor`: ``--workers`` Ray Data actors render, this process writes.

`base.Executor` also says how the processes of a multi-process executor agree: steps that write
(ingest, model training, the folder claim, the commit) run on the main process first.
"""
