//! identity (being written).
