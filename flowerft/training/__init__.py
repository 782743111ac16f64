"""Training: a run as a unit of state, the two-phase recipe, and what they stand on.

    session           run(config): the run dir, its lock, new / resumed / finished, chief or worker,
                      Ctrl-C and lost workers as errors, the final writes (metrics.json, final.keras)
    start             how a run begins: checks before any data is read, the start line, its run dir
    recipe            the two phases: train_head, fine_tune, and fit_phase (compile, callbacks, fit)
    optimizer         the SGD each phase compiles with: schedule, clipping after the replicas' sum
    lr_find           the learning-rate range test (--lr-finetune auto); find_rate: `flowerft lr-find` on a run
    monitor           the validation score (--monitor), balanced accuracy as a metric, early stopping
    class_weights     imbalanced classes: the start-of-run warning, --class-weight balanced, EMA
    cached            the frozen part run once: the head's features, a partial fine-tune's activations
    partial_finetune  where the base is cut, and which part of it learns
    checkpoints       the state saved after every epoch, for --resume; atomic saves
    callbacks         divergence guard, best checkpoint, the epoch the pipelines shuffle for, EMA swap
    micro_batches     gradient accumulation (--micro-batch)
    distribute        tf.distribute strategies, multi-worker runs
    summary           each phase's figures and metrics.json
    tracking          MLflow (--track mlflow)
"""
