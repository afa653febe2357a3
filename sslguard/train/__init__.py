"""Training loops: SSL pretraining (:mod:`.ssl`, batched augmentation in :mod:`.augment`) and classifiers."""
