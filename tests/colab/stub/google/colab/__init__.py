"""A stand-in for Colab's `google.colab` package in the Colab-shaped test lane: only what
persona-lab calls (drive.mount, userdata.get), behaving as Colab does for a learner with no
secrets. The lane puts this folder on the notebook kernel's PYTHONPATH."""
