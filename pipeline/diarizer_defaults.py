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
