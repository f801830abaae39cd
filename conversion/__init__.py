"""The converter's library: image sources, decoding, supervised workers, the
records and .beton writers, and atomic outputs. Commands that use it live in
tools/ (convert_dataset, make_synthetic, verify_dataset); this package imports
only pipelines/."""
