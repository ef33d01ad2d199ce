"""Trained models on new images: box prompts to masks (``segmenter``), images to instances
(``detector``), the image frame both work in (``image_frame``), box files (``prompts``) and
checkpoints to models (``checkpoints``)."""
