//! Accept loop.
