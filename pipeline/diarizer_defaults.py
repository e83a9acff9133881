"""The offline diarizer's measured defaults, kept free of model libraries: the speaker encoders
(``pipeline.speaker_embedding``) and clusterings (``pipeline.speaker_clustering``) take theirs from
here, where the comments say how each was measured, and the ingest's driver writes them into the
runs table (``IngestConfig.resolved``) without loading torch or pyannote."""

# centroid-linkage cut (euclidean distance between centroids of unit-normalised embeddings), per
# speaker encoder. CAM++'s was 0.75 until the second pass (pipeline.speaker_split) came: that pass
# parts voices the clustering left merged, so a cut that merges more now costs less, and over-split
# voices are what is left to avoid. Re-chosen with the split on, by the lowest stage DER summed
# over the tuning sets (bench/diarization.py: the tune split, tune-long and the simulated
# conversations of seeds 1-3): 0.806 at 0.85 against 0.856 at 0.75 (the whole sweep: README
# "Diarization", "The cut at 0.85").
CLUSTER_THRESHOLD = {"campplus": 0.85, "resemblyzer": 0.6}

# seconds a (window, local speaker) must talk alone in its window to join the clustering, per
# clustering method
MIN_CLEAN_SPEECH = {"threshold": 1.5, "silhouette": 2.0}

# the second pass's split (pipeline.speaker_split): cosine distance between the centroids of a
# diarized speaker's two groups of <= 2 s pieces at or above which it is split, per speaker
# encoder (bench/diarization.py: chosen on the tune split and the simulated conversations of
# seeds 1-3; README "Diarization"); resemblyzer's is not measured: no split
SPLIT_DISTANCE = {"campplus": 0.25, "resemblyzer": None}
