//! Per-protocol codecs.
