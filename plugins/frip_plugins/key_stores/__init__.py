"""Key stores that keep the HE secret key wrapped; the sealed file format in ``_sealed_file``."""
