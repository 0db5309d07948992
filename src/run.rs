//! A whole run (being written).
