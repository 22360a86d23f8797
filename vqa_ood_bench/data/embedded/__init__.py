"""The embedded suite: easy-VQA (shipped in the ``easy-vqa`` package) plus derived OOD splits."""
