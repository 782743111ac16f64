"""The run directory, the unit of state: what training leaves and everything else reads.

layout         every file name in a run, atomic writes, runs/latest
lock           one training process per run dir
loader         the one way to open a finished run: config, class names, checkpoint, model
source_record  where the run's images came from, so they are found again
listing        the runs under a runs root, for `flowerft runs`
"""
