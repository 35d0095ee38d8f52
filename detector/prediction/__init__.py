"""Batch prediction, the machinery of ``python -m detector.predict``: a job over many images that streams
its results, survives bad files, resumes after a kill and spreads over torchrun's processes.

- ``inputs``: files, folders, patterns and file lists -> one deterministic list of paths.
- ``loader``: decoding in a pool of threads ahead of the model; batches of similar padded size.
- ``run``: the loop: decoded images -> the predictor -> one record line per image.
- ``jsonl``: the record, a JSON Lines file appended line by line; reading and repairing it after a kill.
- ``shards``: which record each process writes, merging them into ``--out``, what a rerun skips.
- ``coco``: record lines as COCO results (``--format coco``).
"""
