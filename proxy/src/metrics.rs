//! Data-plane metric names and handles. The registry is passed in (never a
//! global), and per-upstream handles are resolved once at start so the hot
//! path only touches atomics.
