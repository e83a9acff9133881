"""The offline diarizer's measured defaults, kept free of model libraries: the speaker encoders
(``pipeline.speaker_embedding``) and clusterings (``pipeline.speaker_clustering``) take theirs from
here, where the comments say how each was measured, and the ingest's driver writes them into the
runs table (``IngestConfig.resolved``) without loading torch or pyannote."""

# centroid-linkage cut (euclidean distance between centroids of unit-normalised embeddings), per
# speaker encoder
CLUSTER_THRESHOLD = {"campplus": 0.75, "resemblyzer": 0.6}

# seconds a (window, local speaker) must talk alone in its window to join the clustering, per
# clustering method
MIN_CLEAN_SPEECH = {"threshold": 1.5, "silhouette": 2.0}

# the second pass's split (pipeline.speaker_split): cosine distance between the centroids of a
# diarized speaker's two groups of <= 2 s pieces at or above which it is split, per speaker
# encoder (bench/diarization.py: chosen on the tune split and the simulated conversations of
# seeds 1-3; README "Diarization"); resemblyzer's is not measured: no split
SPLIT_DISTANCE = {"campplus": 0.25, "resemblyzer": None}
