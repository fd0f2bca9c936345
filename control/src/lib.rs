//! continuity-control: the control plane.
