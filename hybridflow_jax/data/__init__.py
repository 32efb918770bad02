"""Input data: the bundled demo photographs, image folders and TFDS sources."""
