"""Making a batch: generation, the run folder and its manifest (outputs), resume and shards, notebooks run headless
(runner, workspace), and the same batch on several GPUs or hosts (dataparallel, contextparallel, raybatch)."""
