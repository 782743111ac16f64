"""Where images come from and how they become batches.

image_io      one image: decode and resize (every path that reads pixels uses it)
image_inputs  the files and folders a user names for predict and explain
splitting     Splits, the seeded 10/15/75 split, and the checks every source shares
sources       picks the source's loader; reloads a run's own splits
image_folders, labels_file, tfds_datasets, hf_datasets   one module per kind of source
network       the quick connect that makes an offline download fail in seconds
pipelines     tf.data: decode, cache, shuffle per epoch, augment, batch, prefetch
dataset_options  the tf.data option every pipeline runs with (autotuning off: its stall)
"""
